"""What the checks watch while the learner's code runs, on the CPU: the batches on a watched host
device (HostTensor), and a training loop's steps (StepWatch): the mode at every forward, what the
loss was given, whether every .grad was cleared before each backward, whether the update found
the gradients, and in which order it all happened."""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from unittest import mock

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------- the check device
class HostTensor(torch.Tensor):
    """A batch where the loader left it, on a watched host. `.to(device)` (or `.cuda()`) returns
    a plain copy: the batch on the device. A computation that meets the host batch with a tensor
    of the device (a weight, the logits) is noted in `met`: on a GPU it would raise, because the
    two are on different devices; on the CPU it would silently work, which is why it is watched."""

    met: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda or func is torch.Tensor.to and moves(args[1:], kwargs):
            out = super().__torch_function__(func, types, args, kwargs)
            return out.as_subclass(torch.Tensor).clone() if isinstance(out, torch.Tensor) else out
        values = [*args, *kwargs.values()]
        device_side = [a for a in values if isinstance(a, torch.Tensor) and not isinstance(a, HostTensor)
                       and a.dim() > 0]
        out = super().__torch_function__(func, types, args, kwargs)
        if device_side and any(isinstance(a, HostTensor) for a in values):
            cls.met.append(getattr(func, "__name__", str(func)))
            # noted; from here on the result is a tensor like any other, so that the code goes on as on the CPU
            return out.as_subclass(torch.Tensor) if isinstance(out, HostTensor) else out
        return out


def moves(args, kwargs) -> bool:
    """Whether Tensor.to(*args, **kwargs) names a device (x.to(torch.float64) stays where it is)."""
    return "device" in kwargs or any(isinstance(a, (str, torch.device, torch.Tensor)) for a in args)


def on_host(tensor: torch.Tensor) -> HostTensor:
    return tensor.as_subclass(HostTensor)


@contextmanager
def host_watched():
    """HostTensor.met, emptied for the while this lasts."""
    HostTensor.met = []
    try:
        yield HostTensor.met
    finally:
        HostTensor.met = []


# ---------------------------------------------------------------- a training loop, step by step
@dataclass
class Event:
    kind: str  # "forward", "loss", "backward", "update", "log"
    training: bool | None = None  # forward: the model's mode (None: a dict of parameters has none)
    on_host: bool = False  # forward: the input was the host batch itself; loss: the labels were
    stale: list[str] = field(default_factory=list)  # backward: the parameters whose .grad still held values
    empty: list[str] = field(default_factory=list)  # update: the parameters whose .grad was None or zero
    probabilities: bool = False  # loss: its input rows were probabilities (softmax already applied)
    reduction: str = "mean"  # loss: the reduction asked for
    autocast: bool = False  # backward: it ran inside an autocast block
    dtype: str = ""  # loss: the dtype of the loss; forward: of the layers' outputs (under autocast)


def holds_values(grad) -> bool:
    return grad is not None and bool(grad.detach().ne(0).any())


class StepWatch:
    """Watches one training loop. `parameters` maps names to the loop's parameters; `module`
    is the learner's stage, whose global functions (forward, cross_entropy, the hand-written
    update, show_first_step) are wrapped while this lasts."""

    def __init__(self, parameters: dict, module: ModuleType, net=None, optimizer=None):
        self.parameters, self.module, self.net, self.optimizer = parameters, module, net, optimizer
        self.events: list[Event] = []
        self.error: Exception | None = None  # what the loop raised, if it did
        self.after_first_update: dict | None = None
        self.first_step_shown: list[int] = []  # the steps after which show_first_step was called
        self.layer_dtypes: list[set[str]] = []  # per forward: the dtypes of the layers' outputs

    # ---------------------------------------------------------------- what is noted
    def forward(self, training, x) -> None:
        self.events.append(Event("forward", training=training, on_host=isinstance(x, HostTensor)))
        self.layer_dtypes.append(set())

    def loss(self, logits, target, reduction: str) -> None:
        probabilities = False
        if isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.numel():
            values = logits.detach().double()
            probabilities = bool((values >= 0).all() and (values.sum(1) - 1).abs().max() < 1e-3)
        self.events.append(Event("loss", on_host=isinstance(target, HostTensor), probabilities=probabilities,
                                 reduction=reduction))

    def backward(self, loss) -> None:
        stale = [name for name, p in self.parameters.items() if holds_values(p.grad)]
        self.events.append(Event("backward", stale=stale, autocast=torch.is_autocast_enabled("cpu"),
                                 dtype=str(getattr(loss, "dtype", "")).removeprefix("torch.")))

    def update(self) -> None:
        empty = [name for name, p in self.parameters.items() if not holds_values(p.grad)]
        self.events.append(Event("update", empty=empty))

    def updated(self) -> None:
        if self.after_first_update is None:
            self.after_first_update = {name: p.detach().clone() for name, p in self.parameters.items()}

    def logged(self) -> None:
        self.events.append(Event("log"))

    # ---------------------------------------------------------------- the steps
    def steps(self) -> list[list[Event]]:
        """The events split into steps, each starting at a forward in training."""
        steps: list[list[Event]] = []
        for event in self.events:
            if event.kind == "forward" or not steps:
                steps.append([])
            steps[-1].append(event)
        return steps

    # ---------------------------------------------------------------- watching
    @contextmanager
    def watching(self):
        with ExitStack() as stack:
            stack.enter_context(self._backward_watched())
            stack.enter_context(self._loss_watched())
            if self.net is not None:
                stack.enter_context(self._net_watched())
            elif hasattr(self.module, "forward"):
                stack.enter_context(self._global_watched("forward", before=lambda params, x, *a, **k:
                                                         self.forward(None, x)))
            if self.optimizer is not None:
                pre = self.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: self.update())
                post = self.optimizer.register_step_post_hook(lambda optimizer, args, kwargs: self.updated())
                stack.callback(pre.remove)
                stack.callback(post.remove)
            elif hasattr(self.module, "sgd_momentum_update"):
                stack.enter_context(self._global_watched("sgd_momentum_update", before=lambda *a, **k: self.update(),
                                                         after=lambda *a, **k: self.updated()))
            if hasattr(self.module, "cross_entropy") and not hasattr(self.module, "backward"):
                stack.enter_context(self._global_watched(
                    "cross_entropy", before=lambda logits, y, *a, **k: self.loss(logits, y, "mean")))
            if hasattr(self.module, "show_first_step"):
                stack.enter_context(self._global_watched(
                    "show_first_step", before=lambda *a, **k: self.first_step_shown.append(self.logs())))
            yield self

    def logs(self) -> int:
        return sum(e.kind == "log" for e in self.events)

    @contextmanager
    def _backward_watched(self):
        original = torch.Tensor.backward
        watch = self

        def backward(self, *args, **kwargs):
            watch.backward(self)
            return original(self, *args, **kwargs)

        with mock.patch.object(torch.Tensor, "backward", backward):
            yield

    @contextmanager
    def _loss_watched(self):
        original = F.cross_entropy

        def cross_entropy(input, target, *args, **kwargs):
            self.loss(input, target, kwargs.get("reduction", "mean"))
            return original(input, target, *args, **kwargs)

        with mock.patch.object(F, "cross_entropy", cross_entropy):
            yield

    @contextmanager
    def _net_watched(self):
        def before(module, inputs):
            self.forward(module.training, inputs[0] if inputs else None)

        def after(layer, inputs, output):
            if self.layer_dtypes and isinstance(output, torch.Tensor):
                self.layer_dtypes[-1].add(str(output.dtype).removeprefix("torch."))

        handles = [self.net.register_forward_pre_hook(before)]
        handles += [layer.register_forward_hook(after) for name, layer in self.net.named_children()
                    if name.startswith(("conv", "fc"))]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def _global_watched(self, name: str, before=None, after=None):
        """The learner's global function `name`, as their loop calls it, wrapped."""
        function = vars(self.module)[name]

        def wrapped(*args, **kwargs):
            if before is not None:
                before(*args, **kwargs)
            result = function(*args, **kwargs)
            if after is not None:
                after(*args, **kwargs)
            return result

        setattr(self.module, name, wrapped)
        try:
            yield
        finally:
            setattr(self.module, name, function)
