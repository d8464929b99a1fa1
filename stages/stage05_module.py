"""Stage 5: the network becomes an nn.Module, the tutorial's `Net`.

Changes from stage 4:
- `class Net(nn.Module)` makes its layers in `__init__` and uses them in `forward`: the
  parameters live in the model, under the tutorial's names (`conv1.weight`, ...).
- `model.load_state_dict(...)` puts the reference weights in; `model.zero_grad()` and
  `model.named_parameters()` replace the loops over the dict of parameters.

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
    """Step 1's loss and conv1's bias gradient: the same numbers in every stage, to round-off."""
    tqdm.write(f"step 1: loss {loss:.4f}, near ln 10 = 2.3026 (small random weights make the ten "
               "logits nearly equal); conv1.bias gradient: "
               + " ".join(f"{g:+.4e}" for g in conv1_bias_grad.tolist()))


def train_one_epoch(model, momentum_buffers, train_batches, args, run):
    for x, y in train_batches:
        model.zero_grad()  # every parameter's .grad to None, at once
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        sgd_momentum_update(model, momentum_buffers, args.lr, args.momentum)
        run.log_step(loss)
        if run.steps == 1:
            show_first_step(loss, model.conv1.bias.grad)
        if run.steps == args.max_steps:
            return


@torch.no_grad()  # no backward follows, so no graph is needed
def evaluate(model, images, labels, dtype):
    """How many test images are classified correctly."""
    correct = 0
    for start in range(0, len(images), EVAL_BATCH_SIZE):
        x = normalise(images[start:start + EVAL_BATCH_SIZE], dtype)
        y = torch.from_numpy(labels[start:start + EVAL_BATCH_SIZE])
        predicted = model(x).argmax(dim=1)  # the class with the highest logit
        correct += (predicted == y).sum().item()
    return correct


def main(argv=None):
    args = parse_args(__file__, __doc__, argv)
    with StageRun(__file__, args) as run:
        seed_everything(args.seed)
        data = load_data(args.data, args.data_dir, args.seed, verbose=args.verbose)
        dtype = DTYPES[args.dtype]
        model = Net().to(dtype)
        model.load_state_dict({name: torch.from_numpy(value)
                               for name, value in reference_params(args.seed).items()})
        momentum_buffers = {}  # one per parameter, made by the first update
        rng = np.random.default_rng(args.seed)  # the data order: a new shuffle every epoch
        for epoch in range(1, args.epochs + 1):
            run.start_epoch(epoch, steps=math.ceil(len(data.train_y) / args.batch_size))
            train_batches = batches(data.train_x, data.train_y, args.batch_size, dtype, rng)
            train_one_epoch(model, momentum_buffers, train_batches, args, run)
            correct = evaluate(model, data.test_x, data.test_y, dtype)
            run.end_epoch(correct, data)
            if run.steps == args.max_steps:
                break
        run.save_params(model.state_dict())
    return run.summary


if __name__ == "__main__":
    main()
