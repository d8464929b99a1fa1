"""Stage 4: torch.nn.functional replaces the hand-written ops and the loss.

Changes from stage 3:
- `F.conv2d`, `F.relu`, `F.max_pool2d` and `F.linear` replace the hand-written layers, because
  PyTorch's kernels are faster and tested.
- `F.cross_entropy(logits, y)` replaces the hand-written loss: log-softmax and the mean
  negative log-likelihood in one call.

Run: python -m stages.stage04_functional --epochs 1
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.cli import parse_args
from common.data import load_data
from common.run import StageRun
from common.seed import seed_everything
from common.weights import reference_params

DTYPES = {"float32": torch.float32, "float64": torch.float64}
EVAL_BATCH_SIZE = 1000


# ---------------------------------------------------------------- model
def forward(params, x):
    """The network, each op one call into torch.nn.functional."""
    p = params
    h = F.max_pool2d(F.relu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"])), 2)  # (N, 6, 14, 14)
    h = F.max_pool2d(F.relu(F.conv2d(h, p["conv2.weight"], p["conv2.bias"])), 2)  # (N, 16, 5, 5)
    h = h.reshape(len(x), -1)  # (N, 400)
    h = F.relu(F.linear(h, p["fc1.weight"], p["fc1.bias"]))  # (N, 120)
    h = F.relu(F.linear(h, p["fc2.weight"], p["fc2.bias"]))  # (N, 84)
    return F.linear(h, p["fc3.weight"], p["fc3.bias"])  # (N, 10)


# ---------------------------------------------------------------- loss and step
def zero_grad(params):
    """backward() adds to .grad: set it to None, so this step's gradient starts from nothing."""
    for p in params.values():
        p.grad = None


def sgd_momentum_update(params, momentum_buffers, lr, momentum):
    """torch.optim.SGD's rule: buf = momentum * buf + grad (first buf = grad); p -= lr * buf."""
    with torch.no_grad():  # the update is not part of the model: autograd must not record it
        for name, p in params.items():
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


def train_one_epoch(params, momentum_buffers, train_batches, args, run):
    for x, y in train_batches:
        zero_grad(params)
        loss = F.cross_entropy(forward(params, x), y)
        loss.backward()  # fills p.grad of every parameter
        sgd_momentum_update(params, momentum_buffers, args.lr, args.momentum)
        run.log_step(loss)
        if run.steps == 1:
            show_first_step(loss, params["conv1.bias"].grad)
        if run.steps == args.max_steps:
            return


@torch.no_grad()  # no backward follows, so no graph is needed
def evaluate(params, images, labels, dtype):
    """How many test images are classified correctly."""
    correct = 0
    for start in range(0, len(images), EVAL_BATCH_SIZE):
        x = normalise(images[start:start + EVAL_BATCH_SIZE], dtype)
        y = torch.from_numpy(labels[start:start + EVAL_BATCH_SIZE])
        predicted = forward(params, x).argmax(dim=1)  # the class with the highest logit
        correct += (predicted == y).sum().item()
    return correct


def main(argv=None):
    args = parse_args(__file__, __doc__, argv)
    with StageRun(__file__, args) as run:
        seed_everything(args.seed)
        data = load_data(args.data, args.data_dir, args.seed, verbose=args.verbose)
        dtype = DTYPES[args.dtype]
        params = {name: torch.tensor(value, dtype=dtype, requires_grad=True)
                  for name, value in reference_params(args.seed).items()}
        momentum_buffers = {}  # one per parameter, made by the first update
        rng = np.random.default_rng(args.seed)  # the data order: a new shuffle every epoch
        for epoch in range(1, args.epochs + 1):
            run.start_epoch(epoch, steps=math.ceil(len(data.train_y) / args.batch_size))
            train_batches = batches(data.train_x, data.train_y, args.batch_size, dtype, rng)
            train_one_epoch(params, momentum_buffers, train_batches, args, run)
            correct = evaluate(params, data.test_x, data.test_y, dtype)
            run.end_epoch(correct, data)
            if run.steps == args.max_steps:
                break
        run.save_params(params)
    return run.summary


if __name__ == "__main__":
    main()
