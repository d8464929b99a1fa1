"""Stage 5: the network becomes an nn.Module, exactly as the tutorial writes it.

Changes from stage 4:
- `class Net(nn.Module)`: the layers are made in `__init__` (`nn.Conv2d`, `nn.MaxPool2d`,
  `nn.Linear`) and used in `forward`. A layer object owns its weight and bias, so the dict of
  parameters disappears: `model.parameters()` yields the 10 tensors (weight, then bias, of
  conv1, conv2, fc1, fc2, fc3), `model.named_parameters()` gives them with the canonical names
  (`"conv1.weight"`, ...), which are also the keys of `model.state_dict()`. A gradient can be
  looked at where it lives: after the first step the stage prints `model.conv1.bias.grad`
  and, going through `model.named_parameters()`, the norm of every parameter's `.grad`,
  weight then bias, layer by layer. `model.zero_grad()` sets every parameter's `.grad` to
  None at once (`set_to_none=True` is its default since PyTorch 2.0), and `model(x)` calls
  `forward` (through `__call__`, which also runs any hooks).
- The weights arrive through `model.load_state_dict(...)` from the canonical names. It copies
  them into the module's existing parameters, converting them to the parameters' dtype, so
  this stage starts from exactly the numbers the earlier stages use. A new `nn.Conv2d` or
  `nn.Linear` is already initialised, by `reset_parameters()`, with
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the reference weights in common/weights.py are drawn
  from that same distribution. To initialise differently, call a `torch.nn.init` function on
  the parameter, e.g. `nn.init.kaiming_normal_(model.conv1.weight)`: it changes the tensor in
  place (the trailing `_`) and switches autograd's recording off by itself. A tensor method
  such as `model.conv1.weight.normal_()` needs `with torch.no_grad():` around it; the older
  `model.conv1.weight.data.normal_()` works without, but bypasses autograd's checks.
- The update loops over `model.named_parameters()` under `torch.no_grad()`. The momentum
  buffers are still kept by hand, in a dict by parameter name.
- The dtype is given to the whole module at once: `Net().to(torch.float64)`.

Run: python -m stages.stage05_module --epochs 1
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from common.cli import parse_args
from common.data import load_data
from common.run import StageRun
from common.seed import seed_everything
from common.weights import reference_params

DTYPES = {"float32": torch.float32, "float64": torch.float64}
EVAL_BATCH_SIZE = 1000


# ---------------------------------------------------------------- model
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))  # (N, 6, 14, 14)
        x = self.pool(F.relu(self.conv2(x)))  # (N, 16, 5, 5)
        x = torch.flatten(x, 1)  # (N, 400)
        x = F.relu(self.fc1(x))  # (N, 120)
        x = F.relu(self.fc2(x))  # (N, 84)
        return self.fc3(x)  # (N, 10)


def show_parameters(model):
    """What the module holds: named_parameters() yields each layer's weight and bias, by name."""
    print("model.named_parameters(): " + ", ".join(f"{name} {tuple(p.shape)}" for name, p in model.named_parameters())
          + f"; {sum(p.numel() for p in model.parameters()):,} numbers in all")


# ---------------------------------------------------------------- loss and step
def sgd_momentum_update(model, momentum_buffers, lr, momentum):
    """torch.optim.SGD's rule: buf = momentum * buf + grad (first buf = grad); p -= lr * buf."""
    with torch.no_grad():  # the update is not part of the model: autograd must not record it
        for name, p in model.named_parameters():
            buf = momentum_buffers.get(name)
            momentum_buffers[name] = p.grad.clone() if buf is None else momentum * buf + p.grad
            p -= lr * momentum_buffers[name]


# ---------------------------------------------------------------- data
def normalise(images, dtype):
    """uint8 (N, 32, 32, 3) -> (N, 3, 32, 32) in [-1, 1]: ToTensor() then Normalize(0.5, 0.5)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(dtype) / 255
    return (x - 0.5) / 0.5


def batches(images, labels, batch_size, dtype, rng):
    """One epoch of shuffled mini-batches, normalised one batch at a time."""
    order = rng.permutation(len(images))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield normalise(images[idx], dtype), torch.from_numpy(labels[idx])


# ---------------------------------------------------------------- training and evaluation
def show_first_step(loss, conv1_bias_grad):
    """Step 1's loss and conv1's bias gradient: every stage prints the same numbers, to round-off."""
    tqdm.write(f"step 1: loss {loss:.4f}, near ln 10 = 2.3026 (small random weights make the ten logits "
               "nearly equal); conv1.bias gradient: " + " ".join(f"{g:+.4e}" for g in conv1_bias_grad.tolist()))


def train_one_epoch(model, momentum_buffers, train_batches, args, run):
    for x, y in train_batches:
        model.zero_grad()  # every parameter's .grad to None, at once
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        sgd_momentum_update(model, momentum_buffers, args.lr, args.momentum)
        run.log_step(loss, model)  # the progress bar; losses.csv, grad_norms.csv (read every 50 steps)
        if run.steps == 1:
            show_first_step(loss, model.conv1.bias.grad)  # tqdm.write prints above the progress bar
        if run.steps == args.max_steps:
            return


@torch.no_grad()  # no backward follows, so no graph is needed
def evaluate(model, images, labels, dtype):
    """How many test images the model classifies correctly, and the class it predicts for each."""
    predicted = []
    for start in range(0, len(images), EVAL_BATCH_SIZE):
        x = normalise(images[start:start + EVAL_BATCH_SIZE], dtype)
        predicted.append(model(x).argmax(dim=1))  # the class with the highest logit
    predicted = torch.cat(predicted)
    return (predicted == torch.from_numpy(labels)).sum().item(), predicted


def main(argv=None):
    args = parse_args(__file__, __doc__, argv)
    with StageRun(__file__, args) as run:
        seed_everything(args.seed)
        data = load_data(args.data, args.data_dir, args.seed, verbose=args.verbose)
        dtype = DTYPES[args.dtype]
        model = Net().to(dtype)
        model.load_state_dict({name: torch.from_numpy(value) for name, value in reference_params(args.seed).items()})
        show_parameters(model)
        momentum_buffers = {}  # one per parameter, made by the first update
        rng = np.random.default_rng(args.seed)  # the data order: a new shuffle every epoch
        first_epoch = run.resume(model, momentum_buffers, rng)  # the run's state: --checkpoint, --resume
        for epoch in range(first_epoch, args.epochs + 1):
            run.start_epoch(epoch, steps=math.ceil(len(data.train_y) / args.batch_size))
            train_batches = batches(data.train_x, data.train_y, args.batch_size, dtype, rng)
            train_one_epoch(model, momentum_buffers, train_batches, args, run)
            correct, predicted = evaluate(model, data.test_x, data.test_y, dtype)
            run.end_epoch(correct, data, predicted)  # prints the test accuracy
            if run.steps == args.max_steps:
                break
        run.save_params(model.state_dict())
    return run.summary


if __name__ == "__main__":
    main()
