"""The checking framework: the learner's file loaded, compared with what PyTorch computes, and
each check's outcome in words."""
from __future__ import annotations

import io
import itertools
import sys
import traceback
import types
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from common.errors import one_line
from common.harness import TOLERANCES, Driver, reference, relative_error, to_numpy
from common.tools.exercises.catalog import exercise_for
from common.tools.exercises.generator import shown
from common.weights import PARAM_NAMES

# ---------------------------------------------------------------- loading the learner's file
_loads = itertools.count()


def load_file(path: Path) -> ModuleType:
    """The file as a module under a name of its own, compiled from its text as it is now (no
    cached bytecode: a file edited twice within a second is still read afresh)."""
    name = f"exercise_{path.stem}_{next(_loads)}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # some code looks itself up there (dataclasses, pickling)
    try:
        exec(compile(path.read_text(), str(path), "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def torch_reference() -> ModuleType:
    """The independent PyTorch reference (common/harness/reference.py): logits, loss and
    gradients by autograd, and a trajectory of torch.optim.SGD."""
    return reference


# ---------------------------------------------------------------- comparing
class Mismatch(Exception):
    """What a learner's function computed or did that it should not have, in one line."""


# the order backward computes them: fc3's weight and bias first, conv1's last
GRADIENT_ORDER = tuple(n for layer in reversed(PARAM_NAMES[::2]) for n in (layer, layer.replace("weight", "bias")))
LR, MOMENTUM = 0.01, 0.9  # a larger lr than the tutorial's, so that a few steps move the weights visibly
ONE_BATCH = "a batch of 4 synthetic images, seed 0"
FIVE_BATCHES = f"5 batches of 4 synthetic images, seed 1, lr {LR}, momentum {MOMENTUM}"


def expect_close(what: str, actual, expected, dtype: str, on: str, tolerance_of: str | None = None) -> None:
    """Raise Mismatch, naming `what`, unless `actual` is `expected` within the tolerance of
    `tolerance_of` (by default the dtype's own). An array or tensor must also be of `dtype`."""
    if actual is None:
        raise Mismatch(f"{what} is None")
    plural = what.endswith("logits")  # every other name here is of one thing
    kind = str(getattr(actual, "dtype", ""))
    if "float" in kind and not kind.endswith(dtype):
        kind = kind.removeprefix("torch.")
        raise Mismatch(f"{what} {'are' if plural else 'is'} {kind}, expected {dtype} (on {on})")
    dtype = tolerance_of or dtype
    actual, expected = to_numpy(actual), to_numpy(expected)
    if actual.shape != expected.shape:
        raise Mismatch(f"{what} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)} (on {on})")
    if not np.isfinite(actual).all():
        raise Mismatch(f"{what} holds NaN or infinite values (on {on})")
    error, tolerance = relative_error(actual, expected), TOLERANCES[dtype].rtol
    if not error <= tolerance:
        differs = "differ" if plural else "differs"
        raise Mismatch(f"{what} {differs} by {error:.1e} relative (tolerance {tolerance:.0e}, {dtype}) on {on}")


def expect_dicts_close(what: str, actual: dict, expected: dict, dtype: str, on: str, order=GRADIENT_ORDER) -> None:
    """`what` is a format with {name}: the first entry in `order` that differs is named."""
    if not isinstance(actual, dict) or set(actual) != set(expected):
        names = sorted(actual) if isinstance(actual, dict) else type(actual).__name__
        raise Mismatch(f"{what.format(name='the')} names are {names}, expected {list(PARAM_NAMES)}")
    for name in order:
        expect_close(what.format(name=name), actual[name], expected[name], dtype, on)


def expect_losses(prefix: str, actual: list, expected: list, dtype: str, on: str) -> None:
    if len(actual) != len(expected):
        raise Mismatch(f"{prefix}{len(actual)} steps were taken on {len(expected)} batches (on {on})")
    for step, (a, e) in enumerate(zip(actual, expected), 1):
        expect_close(f"{prefix}the loss of step {step}", float(a), e, dtype, on)


def returned(value, count: int, names: str):
    """The values a function returned, when it returned `count` of them."""
    if not isinstance(value, tuple) or len(value) != count:
        got = f"{len(value)} values" if isinstance(value, tuple) else type(value).__name__
        raise Mismatch(f"returned {got}; expected {count} values: {names}")
    return value


# ---------------------------------------------------------------- the learner's stage, under test
@dataclass
class Subject:
    module: ModuleType  # the learner's file
    course: ModuleType  # the course's own stage N
    stage: int
    path: Path

    @property
    def driver(self) -> Driver:
        return Driver(self.module)

    @property
    def blanks(self) -> dict[str, str]:
        return exercise_for(self.stage).blanks

    def native(self, dtype: str, *arrays):
        """float64 numpy arrays as the stage's own arrays: numpy, or torch tensors, of `dtype`."""
        kind = self.module.DTYPES[dtype]
        if self.driver.uses_numpy:
            return [np.array(a, dtype=kind) for a in arrays]
        return [torch.tensor(a, dtype=kind) for a in arrays]

    def labels(self, y):
        if self.driver.uses_numpy:
            return np.asarray(y, dtype=np.int64)
        return torch.as_tensor(y, dtype=torch.int64)


def owner(module: ModuleType, name: str):
    """Where `name` lives: (module, "zero_grad") or (module.Net, "forward")."""
    if "." in name:
        cls, attr = name.split(".")
        return getattr(module, cls, None), attr
    return module, name


def with_super_of(function: Callable, cls: type) -> Callable:
    """The course's method, its zero-argument super() resolved against the learner's class:
    super() finds its class in a hidden __class__ cell, which would name the course's class."""
    if "__class__" not in function.__code__.co_freevars:
        return function
    cells = tuple(types.CellType(cls) if var == "__class__" else cell
                  for var, cell in zip(function.__code__.co_freevars, function.__closure__))
    return types.FunctionType(function.__code__, function.__globals__, function.__name__, function.__defaults__,
                              cells)


ABSENT = object()  # a function the learner's file does not have


@contextmanager
def others_from_course(s: Subject, keep: str | None):
    """Every blanked function but `keep` is the course's own while this lasts, so that one
    unfinished function does not hide whether another one is right."""
    saved = []
    for name in s.blanks:
        where, attr = owner(s.module, name)
        course_where, _ = owner(s.course, name)
        if name == keep or where is None:
            continue
        course_function = vars(course_where)[attr]
        if isinstance(where, type):
            course_function = with_super_of(course_function, where)
        saved.append((where, attr, vars(where).get(attr, ABSENT)))
        setattr(where, attr, course_function)
    try:
        yield
    finally:
        for where, attr, value in reversed(saved):
            if value is ABSENT:
                delattr(where, attr)
            else:
                setattr(where, attr, value)


# ---------------------------------------------------------------- references for the checks
def torch_dtype(dtype: str):
    return {"float32": torch.float32, "float64": torch.float64}[dtype]


def random(seed: int, shape: tuple) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def by_autograd(function: Callable, inputs: dict[str, np.ndarray], dout: np.ndarray, dtype: str):
    """function(**inputs) in torch, and the gradient of sum(output * dout) for every input."""
    leaves = {k: torch.tensor(v, dtype=torch_dtype(dtype), requires_grad=True) for k, v in inputs.items()}
    out = function(**leaves)
    out.backward(torch.tensor(dout, dtype=torch_dtype(dtype)))
    return out.detach(), {k: v.grad for k, v in leaves.items()}


def sgd_reference(params: dict, grads_per_step: list[dict], lr: float, momentum: float, dtype: str) -> list[dict]:
    """The parameters after each torch.optim.SGD step, fed the given gradients."""
    leaves = {k: torch.tensor(v, dtype=torch_dtype(dtype)) for k, v in params.items()}
    optimizer = torch.optim.SGD(leaves.values(), lr=lr, momentum=momentum)
    after = []
    for grads in grads_per_step:
        for name, p in leaves.items():
            p.grad = torch.tensor(grads[name], dtype=torch_dtype(dtype))
        optimizer.step()
        after.append({k: v.clone() for k, v in leaves.items()})
    return after


# ---------------------------------------------------------------- running the checks
@dataclass
class Outcome:
    status: str  # "passed", "not done yet" or "wrong"
    detail: str = ""


def run_check(s: Subject, check: Callable[[Subject, str], None], name: str | None) -> Outcome:
    """One check in float64, then float32; the first failure is the outcome. What the stage's
    code prints meanwhile (a stage may print a gradient after its first step) is not shown: the
    report is the checker's lines alone."""
    for dtype in ("float64", "float32"):
        try:
            with redirect_stdout(io.StringIO()):
                check(s, dtype)
        except NotImplementedError as err:
            raiser = raised_in(err, s.path)
            itself = raiser is None or name is not None and raiser == name.split(".")[-1]
            return Outcome("not done yet", "" if itself else f"{raiser} raises NotImplementedError")
        except Mismatch as err:
            return Outcome("wrong", str(err))
        except Exception as err:  # the learner's code raised: its message and the line of their file
            return Outcome("wrong", exception_report(err, s.path))
        finally:
            tidy_up()
    return Outcome("passed")


def innermost_frame_in(err: BaseException, path: Path):
    """The innermost frame of `err`'s traceback that lies in the learner's file, or None."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename) == path]
    return frames[-1] if frames else None


def raised_in(err: BaseException, path: Path) -> str | None:
    """The function of the learner's file that raised `err`."""
    frame = innermost_frame_in(err, path)
    return frame.name if frame else None  # a method's bare name: "__init__", not "Net.__init__"


def exception_report(err: BaseException, path: Path) -> str:
    """The exception as the learner needs it: type and message, then where in their file."""
    message = one_line(str(err), 300)
    message = f"{type(err).__name__}: {message}" if message else type(err).__name__
    frame = innermost_frame_in(err, path)
    if frame is None:
        return message
    return f"{message}\nraised at {shown(path)}, line {frame.lineno}, in {frame.name}: {frame.line}"


def tidy_up() -> None:
    """Undo what a learner's mistake may leave behind for the next check."""
    torch.set_grad_enabled(True)
    if dist.is_initialized():
        dist.destroy_process_group()
