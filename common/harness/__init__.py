"""The equivalence harness: drive any stage through one contract, and compare stages.

The stages are written as a learner should read them, not for a test to drive: the
hand-written stages (1-2) have a dict of arrays or tensors and hand-written
`forward_with_cache`, `cross_entropy`, `backward` and `sgd_momentum_update`; an autograd stage has a dict of tensors, `forward(params, x)` and its
update; a module stage has `Net`, and from stage 6 on builds `nn.CrossEntropyLoss()` and
`optim.SGD` locally in `main()`. `driver(stage)` knows these families by what each stage
exposes and gives every one the same contract:

    d = driver(stage)
    model = d.build(params, dtype="float32", **options)   # options: dropout, device, wrap
    logits = d.forward(model, x)
    loss, grads = d.train_step(model, x, y, lr, momentum)  # loss before the update, the grads it used
    params = d.get_params(model)                         # canonical names: conv1.weight ... fc3.bias

`params` maps the canonical names to numpy arrays; inputs may be numpy arrays or tensors;
outputs are numpy arrays, floats or tensors, which `to_numpy` turns into float64 numpy.
One step is SGD with momentum as `torch.optim.SGD` defines it (buf = momentum * buf + grad,
the first buf being the grad; p -= lr * buf). The driver composes that step from the stage's
own pieces; `d.train_one_epoch(...)` runs the stage's own `train_one_epoch` instead, so the
loop a learner reads is under test too, and the tests also run each stage's `main()`.
"""
from common.harness.batches import normalise, one_step, sample_batches, trajectory
from common.harness.driver import Driver, Model, driver, group_left_behind_ended, group_of_one
from common.run import Run, StepLog
from common.harness.stages import (ROOT, STAGES_DIR, load_stage, stage_file, stage_files, stage_names, stage_number,
                                   stage_options)
from common.harness.tolerances import (BFLOAT16_GRADIENTS, TOLERANCES, Tolerance, relative_error,
                                       relative_norm_error, to_numpy, worst_relative_error)

__all__ = ["BFLOAT16_GRADIENTS", "Driver", "Model", "ROOT", "Run", "STAGES_DIR", "StepLog", "TOLERANCES", "Tolerance", "driver",
           "group_left_behind_ended", "group_of_one", "load_stage", "normalise", "one_step", "relative_error", "relative_norm_error",
           "sample_batches", "stage_file", "stage_files", "stage_names", "stage_number", "stage_options", "to_numpy",
           "trajectory", "worst_relative_error"]
