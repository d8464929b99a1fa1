"""Stage 3: autograd computes the gradients; the hand-written backward functions are gone.

Changes from stage 2:
- The parameters have `requires_grad=True` and `loss.backward()` fills each one's `.grad`:
  autograd records the forward and walks it back.
- `zero_grad(params)` sets every `.grad` to None first, because `backward()` adds to it.
- The update runs under `torch.no_grad()`: autograd refuses an in-place change to a parameter.

Run: python -m stages.stage03_autograd --epochs 1
"""
import math

import numpy as np
import torch
from tqdm import tqdm

from common.cli import parse_args
from common.data import load_data
from common.run import StageRun
from common.seed import seed_everything
from common.weights import reference_params

DTYPES = {"float32": torch.float32, "float64": torch.float64}
EVAL_BATCH_SIZE = 1000


# ---------------------------------------------------------------- model
def conv2d(x, weight, bias):
    """(N, C, H, W) conv (O, C, k, k) -> (N, O, H-k+1, W-k+1); stride 1, no padding."""
    n, c = x.shape[:2]
    out_channels, _, k, _ = weight.shape
    # every k x k window becomes a column of one matrix; one matrix product then does the layer
    windows = x.unfold(2, k, 1).unfold(3, k, 1)  # (N, C, OH, OW, k, k), a view
    oh, ow = windows.shape[2:4]
    # rows in (C, k, k) order, as the weight flattens; the copy runs along image rows, so it is fast
    cols = windows.permute(1, 4, 5, 0, 2, 3).reshape(c * k * k, n * oh * ow)
    out = weight.reshape(out_channels, -1) @ cols  # (O, N*OH*OW)
    out += bias[:, None]
    return out.reshape(out_channels, n, oh, ow).permute(1, 0, 2, 3)


def relu(x):
    return torch.relu(x)


def max_pool2x2(x):
    """2x2 max-pool with stride 2.
    Unlike F.max_pool2d, which gives NaN for a window holding a NaN, this skips a NaN that is
    not the window's first input (NaN > x is False)."""
    corners = [x[:, :, i::2, j::2] for i in (0, 1) for j in (0, 1)]  # a window's 4 inputs, 4 views
    out = corners[0]
    for k in (1, 2, 3):  # strictly greater: on ties the first maximum wins, and gets the gradient
        better = corners[k] > out
        out = torch.where(better, corners[k], out)
    return out


def linear(x, weight, bias):
    return x @ weight.T + bias


def forward(params, x):
    """The network; autograd records every op on the way, for loss.backward()."""
    p = params
    h = max_pool2x2(relu(conv2d(x, p["conv1.weight"], p["conv1.bias"])))  # (N, 6, 14, 14)
    h = max_pool2x2(relu(conv2d(h, p["conv2.weight"], p["conv2.bias"])))  # (N, 16, 5, 5)
    h = h.reshape(len(x), -1)  # (N, 400)
    h = relu(linear(h, p["fc1.weight"], p["fc1.bias"]))  # (N, 120)
    h = relu(linear(h, p["fc2.weight"], p["fc2.bias"]))  # (N, 84)
    return linear(h, p["fc3.weight"], p["fc3.bias"])  # (N, 10)


# ---------------------------------------------------------------- loss and step
def cross_entropy(logits, y):
    """Mean softmax cross-entropy."""
    n = len(y)
    shifted = logits - logits.max(dim=1, keepdim=True).values  # exp() of this cannot overflow
    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    return -log_probs[torch.arange(n), y].mean()


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
        loss = cross_entropy(forward(params, x), y)
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
