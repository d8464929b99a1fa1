"""The driver: any stage through one contract (see common/harness/__init__.py)."""
from __future__ import annotations

import argparse
import inspect
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from common.harness.stages import load_stage
from common.run import StepLog

# ---------------------------------------------------------------- the driver
# The families of stages, told apart by what each stage has:
# - hand-written gradients (1-2): a dict of arrays or tensors; forward_with_cache, cross_entropy,
#   backward and sgd_momentum_update written by hand;
# - autograd (3-4): a dict of tensors with requires_grad; forward(params, x), loss.backward(), a
#   hand-written update;
# - module (5): Net (an nn.Module); loss.backward(), a hand-written update;
# - module with optimizer (6-13): Net; nn.CrossEntropyLoss and optim.SGD, built in main(); from
#   stage 12 on the step runs under an autocast context with a GradScaler (`amp`), and stage 13
#   may compile the Net (`compile`: a torch.compile backend, "inductor" as main() uses).


@dataclass
class Model:
    """What build() returns: the stage's own model and what its loop keeps beside it."""
    net: Any  # the dict of parameters (stages 1-4) or the stage's Net, perhaps wrapped
    dtype: Any  # the stage's own dtype object (np.float32, torch.float64, ...)
    device: Any = None
    momentum_buffers: dict = field(default_factory=dict)  # hand-written updates keep them here
    optimizer: Any = None  # stages with an optimizer: made by the driver at the first step, the way main() makes it
    autocast: Any = None  # stages 12-13: the autocast context the step runs its forward and loss in
    scaler: Any = None  # stages 12-13: the GradScaler of the step

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
        self.mixed_precision = hasattr(stage, "autocast_dtype")  # stage 12 on
        if not self.uses_numpy:
            import torch

            self.torch = torch

    def main_options(self) -> dict:
        """The build options that make the model as the stage's main() makes it by default:
        autocast on from stage 12 (--amp on), torch.compile's inductor from stage 13 (--compile on)."""
        options = {"amp": True} if self.mixed_precision else {}
        if hasattr(self.stage, "can_compile"):
            options["compile"] = "inductor"
        return options

    # ---------------------------------------------------------------- build
    def build(self, params: dict, dtype: str = "float32", *, dropout: float = 0.0, device="cpu",
              wrap: str | None = None, amp: bool = False, compile: str | None = None) -> Model:
        """The stage's model from the canonical weights. `wrap` is None, "data_parallel" or
        "distributed" (the latter inside an initialised process group); `amp`: autocast the step
        as the stage does with --amp on; `compile`: torch.compile the Net with this backend."""
        if (amp and not self.mixed_precision) or (compile and not hasattr(self.stage, "can_compile")):
            raise ValueError(f"{self.stage.__name__} has no {'amp' if amp else 'compile'}")
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
        if compile:
            net.compile(backend=compile)  # in place, before any wrap, as main() does
        if wrap == "data_parallel":
            net = torch.nn.DataParallel(net)
        elif wrap == "distributed":
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
        elif wrap is not None:
            raise ValueError(f"unknown wrap {wrap!r}")
        model = Model(net, stage_dtype, device)
        if self.mixed_precision:  # as main() builds them: enabled with --amp on, in float32 only
            amp_dtype = self.stage.autocast_dtype(device)
            enabled = amp and dtype == "float32"
            model.autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=enabled)
            model.scaler = torch.amp.GradScaler(device.type, enabled=enabled and amp_dtype == torch.float16)
        return model

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
        with model.autocast or nullcontext():
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
        if model.autocast is None:
            loss = self.torch.nn.CrossEntropyLoss()(model.net(x), y)
            loss.backward()
            grads = self._module_grads(model)
            optimizer.step()
            return loss.item(), grads
        with model.autocast:
            loss = self.torch.nn.CrossEntropyLoss()(model.net(x), y)
        model.scaler.scale(loss).backward()
        grads = self._module_grads(model)  # as scaled: the scaler unscales them only inside step()
        model.scaler.step(optimizer)
        model.scaler.update()
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
        or None when a `run` (a Run: a recorder, or a StepLog of the caller's) is given, which keeps
        them itself. as_given: the
        batches reach the loop unconverted (to see whether the loop moves them to the device)."""
        own_log = run is None
        run = StepLog() if own_log else run
        if not as_given:
            batches = (self.inputs(model, x, y) for x, y in batches)  # a DataLoader stays lazy
        available = {
            "params": model.net, "model": model.net, "momentum_buffers": model.momentum_buffers,
            "train_batches": batches, "train_loader": batches, "device": model.device, "run": run,
            "autocast": model.autocast, "scaler": model.scaler,
            "args": argparse.Namespace(lr=lr, momentum=momentum, max_steps=max_steps, compile="off"),
        }
        wanted = inspect.signature(self.stage.train_one_epoch).parameters
        if "criterion" in wanted:
            available["criterion"] = self.torch.nn.CrossEntropyLoss()
        if "optimizer" in wanted:
            available["optimizer"] = self.optimizer(model, lr, momentum)
        with self._wrapped_as_in_main(model) as available["model"]:
            self.stage.train_one_epoch(**{name: available[name] for name in wanted})
        return run.losses if own_log else None  # a run given keeps its own record

    @contextmanager
    def _wrapped_as_in_main(self, model: Model):
        """The model as the stage's loop receives it from main(): from stage 11 on wrapped in
        DistributedDataParallel, here in a process group of one unless one is running already."""
        if not hasattr(self.stage, "join_process_group") or not isinstance(model.net, self.torch.nn.Module) \
                or isinstance(model.net, self.torch.nn.parallel.DistributedDataParallel):
            yield model.net
            return
        with group_of_one():
            yield self.torch.nn.parallel.DistributedDataParallel(
                model.net, device_ids=[model.device] if model.device.type == "cuda" else None)


@contextmanager
def group_of_one():
    """A gloo process group of this process alone, for as long as the block lasts (nothing is
    done when one is initialised already)."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextmanager
def group_left_behind_ended():
    """Around a stage's main() called in this process: a stage from 11 on joins a process group
    at its start and leaves it at its end, as a program does; a run that ended early leaves it
    joined, which the next run could not join again. A program ends there; here it is left."""
    try:
        yield
    finally:
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def driver(stage: ModuleType | int | str) -> Driver:
    """The contract for one stage (a module, a number or a module name)."""
    return Driver(stage if isinstance(stage, ModuleType) else load_stage(stage))

