"""Stage 5: the network becomes an nn.Module, exactly as the tutorial writes it.

Changes from stage 4:
- `class Net(nn.Module)`: the layers are made in `__init__` (`nn.Conv2d`, `nn.MaxPool2d`,
  `nn.Linear`) and used in `forward`. A layer object owns its weight and bias, so the dict of
  parameters disappears: `model.parameters()` yields the 10 tensors (weight, then bias, of
  conv1, conv2, fc1, fc2, fc3), `model.named_parameters()` gives them with the canonical names
  (`"conv1.weight"`, ...), which are also the keys of `model.state_dict()`. A gradient can be
  looked at where it lives: `model.conv1.bias.grad`. `model.zero_grad()` clears every `.grad`
  at once, and `model(x)` calls `forward` (through `__call__`, which also runs any hooks).
- The weights arrive through `model.load_state_dict(...)` from the canonical names, so this
  stage starts from exactly the numbers the earlier stages use. A new `nn.Conv2d` or
  `nn.Linear` is already initialised, by `reset_parameters()`, with
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the reference weights in common/weights.py are drawn
  from that same distribution. To initialise differently, use `torch.nn.init` in place under
  `torch.no_grad()` (e.g. `nn.init.kaiming_normal_(model.conv1.weight)`); the older
  `model.conv1.weight.data.normal_()` also works but bypasses autograd's checks.
- The update loops over `model.parameters()` under `torch.no_grad()`. The momentum buffers
  are still kept by hand, in a dict keyed by the parameter itself, which is how
  `torch.optim` keeps its state too.
- The dtype is given to the whole module at once: `Net().to(torch.float64)`.

Run: python -m stages.stage05_module --epochs 1
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
    """A Net in `dtype` holding the given weights, with momentum buffers kept beside it."""
    model = Net().to(DTYPES[dtype])
    model.load_state_dict({name: torch.from_numpy(value) for name, value in params.items()})
    model.momentum_buffers = {}
    return model


def forward(model, x):
    return model(torch.as_tensor(x, dtype=next(model.parameters()).dtype))


# ---------------------------------------------------------------- loss and step
def sgd_momentum_update(model, lr, momentum):
    """torch.optim.SGD's rule: buf = momentum * buf + grad (first buf = grad); p -= lr * buf."""
    buffers = model.momentum_buffers  # keyed by the parameter itself, as torch.optim keys its state
    with torch.no_grad():  # the update is not part of the model: autograd must not record it
        for p in model.parameters():
            buffers[p] = p.grad.clone() if p not in buffers else momentum * buffers[p] + p.grad
            p -= lr * buffers[p]


def train_step(model, x, y, lr, momentum):
    """One step of SGD with momentum; returns the loss before the update and the gradients."""
    x, y = torch.as_tensor(x, dtype=next(model.parameters()).dtype), torch.as_tensor(y)
    # forward
    loss = F.cross_entropy(model(x), y)
    # backward
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    # update
    sgd_momentum_update(model, lr, momentum)
    model.zero_grad()  # backward() adds to .grad: clear it for the next step
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
    for x, y in batches(data.train_x, data.train_y, args.batch_size, DTYPES[args.dtype], rng):
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
    args = parse_args(__file__, __doc__, argv)
    with StageRun(__file__, args) as run:
        seed_everything(args.seed)
        data = load_data(args.data, args.data_dir, args.seed)
        model = build(reference_params(args.seed), dtype=args.dtype)
        print(f"model: {len(list(model.parameters()))} parameter tensors, "
              f"{sum(p.numel() for p in model.parameters()):,} numbers")  # weight and bias of 5 layers
        rng = np.random.default_rng(args.seed)
        steps_per_epoch = -(-len(data.train_y) // args.batch_size)
        for _ in run.epochs(steps_per_epoch):
            train_one_epoch(model, data, args, rng, run)
            run.log_accuracy(evaluate(model, data.test_x, data.test_y, args))
        run.save_params(get_params(model))
    return run.summary


if __name__ == "__main__":
    main()
