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
from __future__ import annotations

import argparse
import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from common.data import make_synthetic

STAGES_DIR = Path(__file__).resolve().parent.parent / "stages"


@dataclass(frozen=True)
class Tolerance:
    rtol: float  # on relative_error(): max |actual - expected| / max |expected|
    reason: str


# The one place where tolerances are set.
TOLERANCES = {
    "float64": Tolerance(1e-10, "float64 keeps ~16 significant digits; summing the same products "
                                "in another order (im2col vs. a library kernel) loses at most a few"),
    "float32": Tolerance(1e-4, "float32 keeps ~7 significant digits; another summation order over "
                               "up to 400 terms, compounded over a few momentum steps, costs ~3"),
}


def stage_files() -> list[Path]:
    """The stages' files, in course order: [stages/stage01_numpy.py, ...]."""
    return sorted(STAGES_DIR.glob("stage[0-9][0-9]_*.py"))


def stage_file(number: int) -> Path | None:
    """stages/stageNN_*.py for stage `number`, or None when there is no such stage."""
    return next((p for p in stage_files() if p.name.startswith(f"stage{number:02d}_")), None)


def stage_names() -> list[str]:
    """Module names of the stages, in course order: ["stages.stage01_numpy", ...]."""
    return [f"stages.{p.stem}" for p in stage_files()]


def load_stage(which: int | str) -> ModuleType:
    """A stage by number (3) or module name ("stages.stage03_autograd")."""
    if isinstance(which, int) or str(which).isdigit():
        matches = [n for n in stage_names() if n.startswith(f"stages.stage{int(which):02d}_")]
        if not matches:
            raise ValueError(f"no stage {which}; stages are {', '.join(stage_names())}")
        which = matches[0]
    return importlib.import_module(str(which))


# ---------------------------------------------------------------- the driver
# The families of stages, told apart by what each stage has:
# - hand-written gradients (1-2): a dict of arrays or tensors; forward_with_cache, cross_entropy,
#   backward and sgd_momentum_update written by hand;
# - autograd (3-4): a dict of tensors with requires_grad; forward(params, x), loss.backward(), a
#   hand-written update;
# - module (5): Net (an nn.Module); loss.backward(), a hand-written update;
# - module with optimizer (6-11): Net; nn.CrossEntropyLoss and optim.SGD, built in main().


@dataclass
class Model:
    """What build() returns: the stage's own model and what its loop keeps beside it."""
    net: Any  # the dict of parameters (stages 1-4) or the stage's Net, perhaps wrapped
    dtype: Any  # the stage's own dtype object (np.float32, torch.float64, ...)
    device: Any = None
    momentum_buffers: dict = field(default_factory=dict)  # hand-written updates keep them here
    optimizer: Any = None  # stages with an optimizer: made by the driver at the first step, the way main() makes it

    @property
    def module(self):
        """The Net itself, out of a DataParallel or DistributedDataParallel wrapper."""
        return getattr(self.net, "module", self.net)


class Driver:
    def __init__(self, stage: ModuleType):
        self.stage = stage
        if hasattr(stage, "backward"):
            self.family = "hand-written gradients"
        elif hasattr(stage, "Net"):
            self.family = "module" if hasattr(stage, "sgd_momentum_update") else "module with optimizer"
        else:
            self.family = "autograd"
        self.uses_numpy = stage.DTYPES["float32"] is np.float32
        if not self.uses_numpy:
            import torch

            self.torch = torch

    # ---------------------------------------------------------------- build
    def build(self, params: dict, dtype: str = "float32", *, dropout: float = 0.0, device="cpu",
              wrap: str | None = None) -> Model:
        """The stage's model from the canonical weights. `wrap` is None, "data_parallel" or
        "distributed" (the latter inside an initialised process group)."""
        stage_dtype = self.stage.DTYPES[dtype]
        if self.uses_numpy:
            return Model({name: np.array(value, dtype=stage_dtype) for name, value in params.items()}, stage_dtype)
        torch = self.torch
        device = torch.device(device)
        if self.family in ("hand-written gradients", "autograd"):
            grad = self.family == "autograd"
            net = {name: torch.tensor(value, dtype=stage_dtype, device=device, requires_grad=grad)
                   for name, value in params.items()}
            return Model(net, stage_dtype, device)
        takes_dropout = "dropout" in inspect.signature(self.stage.Net).parameters
        if dropout and not takes_dropout:
            raise ValueError(f"{self.stage.__name__} has no dropout")
        net = (self.stage.Net(dropout) if takes_dropout else self.stage.Net()).to(device=device, dtype=stage_dtype)
        net.load_state_dict({name: torch.from_numpy(value) for name, value in params.items()})
        if wrap == "data_parallel":
            net = torch.nn.DataParallel(net)
        elif wrap == "distributed":
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
        elif wrap is not None:
            raise ValueError(f"unknown wrap {wrap!r}")
        return Model(net, stage_dtype, device)

    # ---------------------------------------------------------------- inputs
    def inputs(self, model: Model, x, y=None):
        """x (and y) as the stage's own arrays: numpy, or tensors of its dtype on its device."""
        if self.uses_numpy:
            return np.asarray(x, dtype=model.dtype), (None if y is None else np.asarray(y, dtype=np.int64))
        torch = self.torch
        x = torch.as_tensor(x, dtype=model.dtype, device=model.device)
        return x, (None if y is None else torch.as_tensor(y, dtype=torch.int64, device=model.device))

    # ---------------------------------------------------------------- the contract
    def forward(self, model: Model, x):
        x, _ = self.inputs(model, x)
        if isinstance(model.net, dict):
            return self.stage.forward(model.net, x)
        return model.net(x)

    def train_step(self, model: Model, x, y, lr: float, momentum: float):
        """One step, composed from the stage's own pieces as its loop composes them."""
        x, y = self.inputs(model, x, y)
        stage = self.stage
        if self.family == "hand-written gradients":
            logits, cache = stage.forward_with_cache(model.net, x)
            loss, dlogits = stage.cross_entropy(logits, y)
            grads = stage.backward(model.net, cache, dlogits)
            stage.sgd_momentum_update(model.net, model.momentum_buffers, grads, lr, momentum)
            return float(loss), grads
        if self.family == "autograd":
            stage.zero_grad(model.net)
            loss = self._loss(stage.forward(model.net, x), y)
            loss.backward()
            grads = {name: p.grad.clone() for name, p in model.net.items()}
            stage.sgd_momentum_update(model.net, model.momentum_buffers, lr, momentum)
            return loss.item(), grads
        if self.family == "module":
            model.net.zero_grad()
            loss = self._loss(model.net(x), y)
            loss.backward()
            grads = self._module_grads(model)
            stage.sgd_momentum_update(model.net, model.momentum_buffers, lr, momentum)
            return loss.item(), grads
        optimizer = self.optimizer(model, lr, momentum)
        optimizer.zero_grad()
        loss = self.torch.nn.CrossEntropyLoss()(model.net(x), y)
        loss.backward()
        grads = self._module_grads(model)
        optimizer.step()
        return loss.item(), grads

    def get_params(self, model: Model) -> dict:
        if isinstance(model.net, dict):
            return {name: (value.detach().clone() if hasattr(value, "detach") else value.copy())
                    for name, value in model.net.items()}
        return {name: p.detach().clone() for name, p in model.module.named_parameters()}

    def optimizer(self, model: Model, lr: float, momentum: float):
        """The stage's optimizer, as its main() builds it: SGD over the model's parameters."""
        if model.optimizer is None:
            model.optimizer = self.torch.optim.SGD(model.net.parameters(), lr=lr, momentum=momentum)
        for group in model.optimizer.param_groups:  # a later call may ask for other values
            group.update(lr=lr, momentum=momentum)
        return model.optimizer

    def _loss(self, logits, y):
        if hasattr(self.stage, "cross_entropy"):  # stage 3 still writes its own
            return self.stage.cross_entropy(logits, y)
        return self.stage.F.cross_entropy(logits, y)

    def _module_grads(self, model: Model) -> dict:
        return {name: p.grad.clone() for name, p in model.module.named_parameters()}

    # ---------------------------------------------------------------- the stage's own loop
    def train_one_epoch(self, model: Model, batches, lr: float, momentum: float, max_steps: int | None = None,
                        run=None, as_given: bool = False) -> list[float]:
        """Run the stage's own `train_one_epoch` over `batches` (pairs of x, y); returns the losses,
        or None when `run` is a real run recorder, which writes them to its record. as_given: the
        batches reach the loop unconverted (to see whether the loop moves them to the device)."""
        run = run or StepLog()
        if not as_given:
            batches = (self.inputs(model, x, y) for x, y in batches)  # a DataLoader stays lazy
        available = {
            "params": model.net, "model": model.net, "momentum_buffers": model.momentum_buffers,
            "train_batches": batches, "train_loader": batches, "device": model.device, "run": run,
            "args": argparse.Namespace(lr=lr, momentum=momentum, max_steps=max_steps),
        }
        wanted = inspect.signature(self.stage.train_one_epoch).parameters
        if "criterion" in wanted:
            available["criterion"] = self.torch.nn.CrossEntropyLoss()
        if "optimizer" in wanted:
            available["optimizer"] = self.optimizer(model, lr, momentum)
        self.stage.train_one_epoch(**{name: available[name] for name in wanted})
        return run.losses if isinstance(run, StepLog) else None  # a real recorder keeps its own record


class StepLog:
    """Stands in for the run recorder when the harness runs a stage's own loop: keeps the losses."""

    def __init__(self):
        self.losses: list[float] = []
        self.steps = 0

    def log_step(self, loss, gradients=None) -> None:
        self.losses.append(float(loss))
        self.steps += 1


def driver(stage: ModuleType | int | str) -> Driver:
    """The contract for one stage (a module, a number or a module name)."""
    return Driver(stage if isinstance(stage, ModuleType) else load_stage(stage))


def stage_options(stage: ModuleType | int | str, argv=()) -> argparse.Namespace:
    """A stage's options as its main() would parse them, for tools that call its helpers."""
    from common.cli import parse_only

    stage = stage if isinstance(stage, ModuleType) else load_stage(stage)
    return parse_only(stage.__file__, stage.__doc__, list(argv), getattr(stage, "add_options", None))


# ---------------------------------------------------------------- comparing
def to_numpy(value) -> np.ndarray:
    """A float64 numpy copy of an array, tensor (on any device, with or without grad) or float."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    return np.array(value, dtype=np.float64)


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|: one number per array, scale-free."""
    actual, expected = to_numpy(actual), to_numpy(expected)
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {actual.shape} vs {expected.shape}")
    scale = np.abs(expected).max()
    return float(np.abs(actual - expected).max() / scale) if scale > 0 else float(np.abs(actual).max())


def worst_relative_error(actual: dict, expected: dict) -> tuple[str, float]:
    """The name and error of the entry that differs most; the keys must match exactly."""
    if set(actual) != set(expected):
        raise ValueError(f"names differ: {sorted(set(actual) ^ set(expected))}")
    errors = {name: relative_error(actual[name], expected[name]) for name in expected}
    name = max(errors, key=errors.get)
    return name, errors[name]


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 32, 32, 3) -> float64 (N, 3, 32, 32) in [-1, 1], as stages 1-6 normalise (stages
    7-11 normalise in float32, then widen)."""
    return (images.transpose(0, 3, 1, 2) / 255.0 - 0.5) / 0.5


def sample_batches(n_batches: int, batch_size: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Distinct normalised batches of synthetic images with their labels, as float64 numpy."""
    data = make_synthetic(seed, n_train=n_batches * batch_size, n_test=1)
    return [(normalise(data.train_x[i:i + batch_size]), data.train_y[i:i + batch_size])
            for i in range(0, n_batches * batch_size, batch_size)]


def one_step(stage, params: dict, x, y, dtype: str, lr: float = 0.01, momentum: float = 0.9, **options) -> dict:
    """Logits, then loss and gradients of one step, from fresh weights, as numpy."""
    d = driver(stage)
    model = d.build(params, dtype=dtype, **options)
    logits = to_numpy(d.forward(model, x))
    loss, grads = d.train_step(model, x, y, lr, momentum)
    return {"logits": logits, "loss": float(loss), "grads": {k: to_numpy(v) for k, v in grads.items()}}


def trajectory(stage, params: dict, batches, dtype: str, lr: float = 0.01, momentum: float = 0.9,
               **options) -> dict:
    """Losses of one step per batch, and the parameters after the last."""
    d = driver(stage)
    model = d.build(params, dtype=dtype, **options)
    losses = [float(d.train_step(model, x, y, lr, momentum)[0]) for x, y in batches]
    return {"losses": np.array(losses), "params": {k: to_numpy(v) for k, v in d.get_params(model).items()}}
