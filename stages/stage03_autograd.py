"""Stage 3: autograd computes the gradients; the update is still written by hand.

Changes from stage 2:
- Every hand-written backward function is gone. The parameters are made with
  `requires_grad=True`, so torch records each op of the forward in a graph, and
  `loss.backward()` walks that graph to fill each parameter's `.grad` by the chain rule:
  the same computation stage 2 wrote out, now derived from the forward alone.
- The update runs inside `with torch.no_grad():`. The update is not part of the model: if
  autograd recorded `p -= lr * buf`, the parameter would become the output of an op on its
  old self, the graph would grow across steps, and torch refuses an in-place change of a
  leaf that requires grad anyway. `no_grad()` switches recording off for those lines.
  (The older route, `p.data -= lr * buf`, edits the numbers behind autograd's back: it
  works here, but it also skips autograd's checks, so a wrong in-place change goes unseen.
  `no_grad()` is the supported way.)
- `.grad` accumulates: each `backward()` adds to it. So it is zeroed explicitly after the
  update, or the next step would use the sum of two steps' gradients.
- Evaluation runs under `torch.no_grad()` too: no graph is needed when no backward follows.

Run: python -m stages.stage03_autograd --epochs 1
"""
import numpy as np
import torch

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
    """2x2 max-pool with stride 2."""
    corners = [x[:, :, i::2, j::2] for i in (0, 1) for j in (0, 1)]  # each window's 4 inputs, as 4 views
    out = corners[0]
    for k in (1, 2, 3):  # strictly greater: on ties the first maximum wins, and gets the gradient
        better = corners[k] > out
        out = torch.where(better, corners[k], out)
    return out


def linear(x, weight, bias):
    return x @ weight.T + bias


def forward(model, x):
    """The network; autograd records every op on the way, for loss.backward()."""
    p, x = model["params"], torch.as_tensor(x, dtype=model["dtype"])
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
    loss = cross_entropy(forward(model, x), y)
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
