"""Stage 1: the tutorial's CIFAR-10 convnet in numpy alone, every forward and backward by hand.

Changes from stage 0 (nothing):
- The model is a dict of arrays and each op has a backward function, so that every later stage
  reads as "this hand-written piece is now done by PyTorch".
- The convolution is im2col (each 5x5 window a column of one matrix product): numpy has none.
- The update is `torch.optim.SGD`'s (`buf = momentum * buf + grad`, `p -= lr * buf`), so that
  the later stages can match it number for number.

Run: python -m stages.stage01_numpy --epochs 1
"""
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from tqdm import tqdm

from common.cli import parse_args
from common.data import load_data
from common.run import StageRun
from common.seed import seed_everything
from common.weights import reference_params

DTYPES = {"float32": np.float32, "float64": np.float64}
EVAL_BATCH_SIZE = 1000


# ---------------------------------------------------------------- model
def conv2d(x, weight, bias):
    """(N, C, H, W) conv (O, C, k, k) -> (N, O, H-k+1, W-k+1); stride 1, no padding."""
    n, c = x.shape[:2]
    out_channels, _, k, _ = weight.shape
    # every k x k window becomes a column of one matrix; one matrix product then does the layer
    windows = sliding_window_view(x, (k, k), axis=(2, 3))  # (N, C, OH, OW, k, k), a view
    oh, ow = windows.shape[2:4]
    # rows in (C, k, k) order, as the weight flattens; the copy runs along image rows, so it is fast
    cols = windows.transpose(1, 4, 5, 0, 2, 3).reshape(c * k * k, n * oh * ow)
    out = weight.reshape(out_channels, -1) @ cols  # (O, N*OH*OW)
    out += bias[:, None]
    return out.reshape(out_channels, n, oh, ow).transpose(1, 0, 2, 3), cols


def conv2d_backward(dout, cols, weight):
    """Gradients of the weight and bias, from the windows (cols) the forward kept."""
    out_channels = weight.shape[0]
    dout_rows = dout.transpose(1, 0, 2, 3).reshape(out_channels, -1)  # (O, N*OH*OW)
    dweight = (dout_rows @ cols.T).reshape(weight.shape)
    dbias = dout_rows.sum(axis=1)
    return dweight, dbias


def conv2d_input_backward(dout, weight):
    """Gradient of the input: each window's gradient, added back where the window was taken."""
    n, out_channels, oh, ow = dout.shape
    _, c, k, _ = weight.shape
    dout_rows = dout.transpose(1, 0, 2, 3).reshape(out_channels, -1)  # (O, N*OH*OW)
    dcols = (weight.reshape(out_channels, -1).T @ dout_rows).reshape(c, k, k, n, oh, ow)
    dx = np.zeros((c, n, oh + k - 1, ow + k - 1), dtype=dout.dtype)
    for i in range(k):  # a loop over the k*k window offsets, never over pixels
        for j in range(k):
            dx[:, :, i:i + oh, j:j + ow] += dcols[:, i, j]
    return dx.transpose(1, 0, 2, 3)


def relu(x):
    return np.maximum(x, 0)


def relu_backward(dout, out):
    return dout * (out > 0)


def max_pool2x2(x):
    """2x2 max-pool with stride 2; also returns which of the 4 inputs won, for the backward.
    Unlike F.max_pool2d, which gives NaN for a window holding a NaN, this skips a NaN that is
    not the window's first input (NaN > x is False)."""
    corners = [x[:, :, i::2, j::2] for i in (0, 1) for j in (0, 1)]  # a window's 4 inputs, 4 views
    out, winner = corners[0], np.zeros(corners[0].shape, dtype=np.int8)
    for k in (1, 2, 3):  # strictly greater: on ties the first maximum wins, as in F.max_pool2d
        better = corners[k] > out
        out, winner = np.where(better, corners[k], out), np.where(better, k, winner)
    return out, winner


def max_pool2x2_backward(dout, winner):
    """Only the winning input of each window gets the gradient."""
    n, c, oh, ow = dout.shape
    dx = np.zeros((n, c, 2 * oh, 2 * ow), dtype=dout.dtype)
    for k, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        dx[:, :, i::2, j::2] = np.where(winner == k, dout, 0)
    return dx


def linear(x, weight, bias):
    return x @ weight.T + bias


def linear_backward(dout, x, weight):
    """Gradients of the weight, the bias and the input x."""
    return dout.T @ x, dout.sum(axis=0), dout @ weight


def forward_with_cache(params, x):
    """The network; `cache` keeps what each backward function needs."""
    p = params
    c1, cols1 = conv2d(x, p["conv1.weight"], p["conv1.bias"])  # (N, 6, 28, 28)
    r1 = relu(c1)
    m1, winner1 = max_pool2x2(r1)  # (N, 6, 14, 14)
    c2, cols2 = conv2d(m1, p["conv2.weight"], p["conv2.bias"])  # (N, 16, 10, 10)
    r2 = relu(c2)
    m2, winner2 = max_pool2x2(r2)  # (N, 16, 5, 5)
    flat = m2.reshape(len(x), -1)  # (N, 400)
    h1 = relu(linear(flat, p["fc1.weight"], p["fc1.bias"]))  # (N, 120)
    h2 = relu(linear(h1, p["fc2.weight"], p["fc2.bias"]))  # (N, 84)
    logits = linear(h2, p["fc3.weight"], p["fc3.bias"])  # (N, 10)
    cache = dict(cols1=cols1, r1=r1, winner1=winner1, cols2=cols2, r2=r2, winner2=winner2,
                 flat=flat, h1=h1, h2=h2, pooled_shape=m2.shape)
    return logits, cache


def forward(params, x):
    """The logits alone, for predictions."""
    logits, _ = forward_with_cache(params, x)
    return logits


# ---------------------------------------------------------------- loss and step
def cross_entropy(logits, y):
    """Mean softmax cross-entropy and its gradient with respect to the logits."""
    n = len(y)
    shifted = logits - logits.max(axis=1, keepdims=True)  # exp() of this cannot overflow
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(n), y].mean()
    dlogits = np.exp(log_probs)  # softmax
    dlogits[np.arange(n), y] -= 1
    return loss, dlogits / n


def backward(params, cache, dlogits):
    """The chain rule, op by op, from the loss back to every parameter."""
    p, c, grads = params, cache, {}
    grads["fc3.weight"], grads["fc3.bias"], dh2 = linear_backward(dlogits, c["h2"], p["fc3.weight"])
    dh2 = relu_backward(dh2, c["h2"])
    grads["fc2.weight"], grads["fc2.bias"], dh1 = linear_backward(dh2, c["h1"], p["fc2.weight"])
    dh1 = relu_backward(dh1, c["h1"])
    grads["fc1.weight"], grads["fc1.bias"], dflat = linear_backward(dh1, c["flat"], p["fc1.weight"])
    dm2 = dflat.reshape(c["pooled_shape"])
    dr2 = max_pool2x2_backward(dm2, c["winner2"])
    dc2 = relu_backward(dr2, c["r2"])
    grads["conv2.weight"], grads["conv2.bias"] = conv2d_backward(dc2, c["cols2"], p["conv2.weight"])
    dm1 = conv2d_input_backward(dc2, p["conv2.weight"])
    dr1 = max_pool2x2_backward(dm1, c["winner1"])
    dc1 = relu_backward(dr1, c["r1"])
    # the input images need no gradient, so conv1 stops at its weight and bias
    grads["conv1.weight"], grads["conv1.bias"] = conv2d_backward(dc1, c["cols1"], p["conv1.weight"])
    return grads


def sgd_momentum_update(params, momentum_buffers, grads, lr, momentum):
    """torch.optim.SGD's rule: buf = momentum * buf + grad (first buf = grad); p -= lr * buf."""
    for name, grad in grads.items():
        buf = momentum_buffers.get(name)
        momentum_buffers[name] = grad.copy() if buf is None else momentum * buf + grad
        params[name] -= lr * momentum_buffers[name]


# ---------------------------------------------------------------- data
def normalise(images, dtype):
    """uint8 (N, 32, 32, 3) -> (N, 3, 32, 32) in [-1, 1]: ToTensor() then Normalize(0.5, 0.5)."""
    x = images.transpose(0, 3, 1, 2).astype(dtype) / 255
    return (x - 0.5) / 0.5


def batches(images, labels, batch_size, dtype, rng):
    """One epoch of shuffled mini-batches, normalised one batch at a time."""
    order = rng.permutation(len(images))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield normalise(images[idx], dtype), labels[idx]


# ---------------------------------------------------------------- training and evaluation
def show_first_step(loss, conv1_bias_grad):
    """Step 1's loss and conv1's bias gradient: the same numbers in every stage, to round-off."""
    tqdm.write(f"step 1: loss {loss:.4f}, near ln 10 = 2.3026 (small random weights make the ten "
               "logits nearly equal); conv1.bias gradient: "
               + " ".join(f"{g:+.4e}" for g in conv1_bias_grad.tolist()))


def train_one_epoch(params, momentum_buffers, train_batches, args, run):
    for x, y in train_batches:
        logits, cache = forward_with_cache(params, x)
        loss, dlogits = cross_entropy(logits, y)
        grads = backward(params, cache, dlogits)
        sgd_momentum_update(params, momentum_buffers, grads, args.lr, args.momentum)
        run.log_step(loss)
        if run.steps == 1:
            show_first_step(loss, grads["conv1.bias"])
        if run.steps == args.max_steps:
            return


def evaluate(params, images, labels, dtype):
    """How many test images are classified correctly."""
    correct = 0
    for start in range(0, len(images), EVAL_BATCH_SIZE):
        x = normalise(images[start:start + EVAL_BATCH_SIZE], dtype)
        y = labels[start:start + EVAL_BATCH_SIZE]
        predicted = forward(params, x).argmax(axis=1)  # the class with the highest logit
        correct += (predicted == y).sum().item()
    return correct


def main(argv=None):
    args = parse_args(__file__, __doc__, argv)
    with StageRun(__file__, args) as run:
        seed_everything(args.seed)
        data = load_data(args.data, args.data_dir, args.seed, verbose=args.verbose)
        dtype = DTYPES[args.dtype]
        params = {name: value.astype(dtype)
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
