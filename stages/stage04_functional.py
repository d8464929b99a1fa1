"""Stage 4: torch.nn.functional replaces the hand-written ops.

Changes from stage 3:
- `F.conv2d`, `F.relu`, `F.max_pool2d` and `F.linear` replace the hand-written im2col
  convolution, relu, max-pool and linear layer. They compute the same numbers, but in
  optimised C++ kernels, and each comes with its backward already written.
- `F.cross_entropy` replaces the hand-written softmax cross-entropy. It is `log_softmax`
  followed by `nll_loss`, averaged over the batch, and it is numerically stable in the same
  way (it subtracts the largest logit before exponentiating).
- Everything else stays: the parameters are still plain tensors in a dict, and the update is
  still written by hand under `torch.no_grad()`. `F` is the functional half of `torch.nn`:
  pure functions of their inputs and weights, with no state, so they fit a dict of weights.

Run: python -m stages.stage04_functional --epochs 1
"""
import numpy as np
import torch
import torch.nn.functional as F

from common.cli import parse_args
from common.data import load_data
from common.run import StageRun
from common.seed import seed_everything
from common.weights import reference_params

DTYPES = {"float32": torch.float32, "float64": torch.float64}
EVAL_BATCH_SIZE = 1000


# ---------------------------------------------------------------- model
def build(params, dtype="float32"):
    """The model is a dict: the parameters, their momentum buffers and the dtype they use."""
    dtype = DTYPES[dtype]
    params = {name: torch.tensor(value, dtype=dtype, requires_grad=True) for name, value in params.items()}
    return {"params": params, "momentum_buffers": {}, "dtype": dtype}


def forward(model, x):
    """The network, each op one call into torch.nn.functional."""
    p, x = model["params"], torch.as_tensor(x, dtype=model["dtype"])
    h = F.max_pool2d(F.relu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"])), 2)  # (N, 6, 14, 14)
    h = F.max_pool2d(F.relu(F.conv2d(h, p["conv2.weight"], p["conv2.bias"])), 2)  # (N, 16, 5, 5)
    h = h.reshape(len(x), -1)  # (N, 400)
    h = F.relu(F.linear(h, p["fc1.weight"], p["fc1.bias"]))  # (N, 120)
    h = F.relu(F.linear(h, p["fc2.weight"], p["fc2.bias"]))  # (N, 84)
    return F.linear(h, p["fc3.weight"], p["fc3.bias"])  # (N, 10)


# ---------------------------------------------------------------- loss and step
def sgd_momentum_update(model, grads, lr, momentum):
    """torch.optim.SGD's rule: buf = momentum * buf + grad (first buf = grad); p -= lr * buf."""
    buffers = model["momentum_buffers"]
    with torch.no_grad():  # the update is not part of the model: autograd must not record it
        for name, grad in grads.items():
            buffers[name] = grad.clone() if name not in buffers else momentum * buffers[name] + grad
            model["params"][name] -= lr * buffers[name]


def train_step(model, x, y, lr, momentum):
    """One step of SGD with momentum; returns the loss before the update and the gradients."""
    x, y = torch.as_tensor(x, dtype=model["dtype"]), torch.as_tensor(y)
    # forward
    loss = F.cross_entropy(forward(model, x), y)
    # backward
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model["params"].items()}
    # update
    sgd_momentum_update(model, grads, lr, momentum)
    for p in model["params"].values():
        p.grad.zero_()  # backward() adds to .grad: clear it for the next step
    return loss.item(), grads


def get_params(model):
    return {name: value.detach().clone() for name, value in model["params"].items()}


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
        rng = np.random.default_rng(args.seed)
        steps_per_epoch = -(-len(data.train_y) // args.batch_size)
        for _ in run.epochs(steps_per_epoch):
            train_one_epoch(model, data, args, rng, run)
            run.log_accuracy(evaluate(model, data.test_x, data.test_y, args))
        run.save_params(get_params(model))
    return run.summary


if __name__ == "__main__":
    main()
