"""Stage 6: a loss module and torch.optim replace the hand-written loss call and update.

Changes from stage 5:
- `criterion = nn.CrossEntropyLoss()` is the loss, as in the tutorial: a module wrapping
  `F.cross_entropy`, so a loss can be chosen, configured and passed around like a layer.
- `opt = optim.SGD(model.parameters(), lr=..., momentum=0.9)` replaces the hand-written
  update and momentum buffers: `opt.zero_grad()`, `loss.backward()`, `opt.step()` is the
  whole step. The optimizer keeps the momentum buffers in `opt.state`, keyed by parameter.
- The optimizer is built *after* the model, from `model.parameters()`: it holds references to
  those very tensors. Built before (say, before loading weights into a fresh model, or before
  `.to(device)` copies the parameters in stage 9), it would update tensors the model no longer
  uses, and training would silently do nothing. So `build()` makes it last and keeps it as
  `model.opt`, and `opt.state_dict()` saves its state beside `model.state_dict()`.
- The stage contract passes lr and momentum to every step; the step writes them into
  `opt.param_groups`, the same place a learning-rate scheduler changes them.
- `opt.zero_grad()` now clears the gradients *before* the backward, the usual idiom: whatever
  ran before the step (an evaluation, a stray backward) cannot leak into it.
- With an optimizer holding state, a run can be saved and continued: `--checkpoint PATH`
  saves `model.state_dict()` and `opt.state_dict()` (with the epoch, step, RNG and data order)
  after every epoch and on Ctrl-C, and `--resume PATH` restores them
  (`run.checkpoint_with(...)` in main). The loop takes its batches through `run.skip_done()`,
  which skips the batches a resumed epoch had already trained on.

Run: python -m stages.stage06_optim --epochs 1
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn, optim

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


def build(params, dtype="float32"):
    """A Net in `dtype` holding the given weights, and its optimizer, made after it."""
    model = Net().to(DTYPES[dtype])
    model.load_state_dict({name: torch.from_numpy(value) for name, value in params.items()})
    model.opt = optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    return model


def forward(model, x):
    return model(torch.as_tensor(x, dtype=next(model.parameters()).dtype))


# ---------------------------------------------------------------- loss and step
criterion = nn.CrossEntropyLoss()


def train_step(model, x, y, lr, momentum):
    """One step of SGD with momentum; returns the loss before the update and the gradients."""
    x, y = torch.as_tensor(x, dtype=next(model.parameters()).dtype), torch.as_tensor(y)
    opt = model.opt
    for group in opt.param_groups:  # where a scheduler would change them, too
        group.update(lr=lr, momentum=momentum)
    opt.zero_grad()  # backward() adds to .grad: clear it before this step's backward
    # forward
    loss = criterion(model(x), y)
    # backward
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}  # no copy: zero_grad() sets .grad to None
    # update
    opt.step()
    return loss.item(), grads


def get_params(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


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
def train_one_epoch(model, data, args, rng, run):
    for x, y in run.skip_done(batches(data.train_x, data.train_y, args.batch_size, DTYPES[args.dtype], rng)):
        loss, _ = train_step(model, x, y, args.lr, args.momentum)
        if not run.step(loss):
            return


@torch.no_grad()  # no backward follows, so no graph is needed
def evaluate(model, images, labels, args):
    """Fraction of test images whose highest logit is the true class."""
    correct = 0
    for start in range(0, len(images), EVAL_BATCH_SIZE):
        x = normalise(images[start:start + EVAL_BATCH_SIZE], DTYPES[args.dtype])
        predicted = forward(model, x).argmax(dim=1)
        correct += int((predicted == torch.from_numpy(labels[start:start + EVAL_BATCH_SIZE])).sum())
    return correct / len(images)


def main(argv=None):
    args = parse_args(__file__, __doc__, argv, checkpoints=True)
    with StageRun(__file__, args) as run:
        seed_everything(args.seed)
        data = load_data(args.data, args.data_dir, args.seed)
        model = build(reference_params(args.seed), dtype=args.dtype)
        print(f"model: {len(list(model.parameters()))} parameter tensors, "
              f"{sum(p.numel() for p in model.parameters()):,} numbers")  # weight and bias of 5 layers
        rng = np.random.default_rng(args.seed)
        run.checkpoint_with(model, model.opt, rng)  # what --checkpoint saves and --resume restores
        steps_per_epoch = -(-len(data.train_y) // args.batch_size)
        for _ in run.epochs(steps_per_epoch):
            train_one_epoch(model, data, args, rng, run)
            run.log_accuracy(evaluate(model, data.test_x, data.test_y, args))
        run.save_params(get_params(model))
    return run.summary


if __name__ == "__main__":
    main()
