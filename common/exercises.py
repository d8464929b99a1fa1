"""Exercises: a stage with its lesson taken out, and a checker that says what is right.

    make exercise STAGE=3   # writes work/stage03_autograd.py: stage 3, its lesson's function bodies blanked
    make check STAGE=3      # checks your file, function by function, then as a whole
    make solution STAGE=3   # the diff from your file to the course's stage 3

`EXERCISES` is the one place that says, per stage, which functions an exercise blanks and why
those: the functions whose bodies carry the lesson of the diff from the stage before. A blanked
body becomes `raise NotImplementedError` under a hint, the sentence of the stage's docstring
that holds the words EXERCISES names; the signature and the function's own docstring stay.

The checker loads your file by its path and checks, in float64 and then in float32:
- each blanked function alone, against PyTorch (a backward helper against autograd of its
  forward, `cross_entropy` against `F.cross_entropy`, an update against `torch.optim.SGD`, a
  loop against the steps of `optim.SGD`, ...). While one function is checked, the other blanked
  functions are the course's own, so that an unfinished one does not hide a finished one;
- then, once every one of them passes, all of your file together, through
  `common.harness.driver`: one step (logits, loss, every gradient) against the tests'
  independent PyTorch reference, five momentum steps against `optim.SGD`, the same against the
  course's stage N-1, and your stage's own `train_one_epoch`.

Each function is "passed", "not done yet" (it raises NotImplementedError) or "wrong", with the
first output that differs, by how much, at what tolerance and on what input, or the exception
your code raised and the line of your file it came from. What your code prints is not shown;
`python -m work.stage03_autograd --max-steps 5` runs your file as a program.

Exit codes: 0 every check passed, 1 something is not done yet or wrong, 2 bad input (no such
stage, no such file, an exercise file that exists and FORCE=1 was not given). make passes
STAGE and FORCE to this module in the environment.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import inspect
import io
import itertools
import os
import re
import sys
import textwrap
import traceback
import types
from contextlib import contextmanager, nullcontext, redirect_stdout
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Callable
from unittest import mock

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, DistributedSampler

from common.cli import OneLineParser
from common.data import make_synthetic
from common.errors import BAD_INPUT, CourseError, one_line
from common.harness import (TOLERANCES, Driver, load_stage, one_step, relative_error,
                            sample_batches, stage_file, to_numpy, trajectory)
from common.weights import PARAM_NAMES, PARAM_SHAPES, reference_params

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = ROOT / "work"
NOT_DONE = 1  # the exit code when a check finds something not done yet or wrong


# ---------------------------------------------------------------- which functions each exercise blanks
@dataclass(frozen=True)
class Exercise:
    # function (or Class.method) -> a few words of the stage's docstring: the sentence holding them is its hint
    blanks: dict[str, str]
    why: str  # why these functions: where the lesson of the diff from the stage before lives


EXERCISES = {
    1: Exercise({"conv2d_backward": "each op has a backward function",
                 "conv2d_input_backward": "each op has a backward function",
                 "relu_backward": "each op has a backward function",
                 "max_pool2x2_backward": "each op has a backward function",
                 "linear_backward": "each op has a backward function",
                 "cross_entropy": "softmax cross-entropy",
                 "backward": "each op has a backward function",
                 "sgd_momentum_update": "buf = momentum * buf + grad"},
                "Stage 1 has no stage before it: its lesson is the gradient written by hand, so every "
                "backward function, the chain rule that links them (backward), the loss with its "
                "gradient and the momentum update are blanked. The forward ops stay: they are what "
                "the backward functions differentiate."),
    2: Exercise(dict.fromkeys(("conv2d", "max_pool2x2", "cross_entropy", "sgd_momentum_update"),
                              "`sliding_window_view` -> `Tensor.unfold`"),
                "Every function changes from numpy to torch. These four together use each twin that is "
                "spelled differently (unfold for sliding_window_view, permute for transpose, "
                "torch.where, max(...).values, clone for copy); the functions left whole show the same "
                "renamings, as examples."),
    3: Exercise({"zero_grad": "`.grad` accumulates",
                 "sgd_momentum_update": "The update runs inside `with torch.no_grad():`",
                 "train_one_epoch": "`loss.backward()` walks that graph"},
                "The lesson is autograd: the step in train_one_epoch now calls loss.backward(), the "
                ".grad it fills must be cleared first (zero_grad), and the update must run under "
                "no_grad. forward, cross_entropy, conv2d and max_pool2x2 only lose what the "
                "hand-written backward needed (the cache, the gradient, the windows, the winners), so "
                "they stay."),
    4: Exercise({"forward": "`F.conv2d`, `F.relu`, `F.max_pool2d` and `F.linear` replace",
                 "train_one_epoch": "`F.cross_entropy` replaces"},
                "forward is where torch.nn.functional replaces the hand-written ops; train_one_epoch "
                "is where F.cross_entropy replaces the hand-written loss."),
    5: Exercise({"Net.__init__": "the layers are made in `__init__`",
                 "Net.forward": "the layers are made in `__init__`",
                 "sgd_momentum_update": "The update loops over `model.named_parameters()`",
                 "train_one_epoch": "`model.zero_grad()`"},
                "The dict of parameters becomes a module: its layers (__init__), its forward, and the "
                "update and loop that now reach the parameters through it. main()'s new lines "
                "(load_state_dict) are what the harness's build() does for every stage, so they stay."),
    6: Exercise({"train_one_epoch": "The step is now the one every PyTorch program writes"},
                "The step every PyTorch program writes (zero_grad, criterion, backward, step) lives in "
                "train_one_epoch. main() builds the criterion and the optimizer as the harness "
                "builds them, so it stays."),
    7: Exercise({"make_transform": "Both apply the tutorial's transform",
                 "ArrayDataset.__len__": "how many samples (`__len__`)",
                 "ArrayDataset.__getitem__": "how many samples (`__len__`)",
                 "make_loaders": "Its shuffle is driven by a `torch.Generator`"},
                "The data pipeline is the lesson: the transform, the two methods every Dataset has, "
                "and the DataLoaders with their seeded shuffle. train_one_epoch and evaluate change "
                "only in what they loop over (a DataLoader), so they stay."),
    8: Exercise({"Net.forward": "`Net` gains `nn.Dropout(p)`",
                 "train_one_epoch": "`train_one_epoch` starts with `model.train()`",
                 "evaluate": "`train_one_epoch` starts with `model.train()`"},
                "Where dropout goes (forward) and when it is on (model.train() in the loop, "
                "model.eval() in evaluate). __init__ keeps its one new line, the nn.Dropout layer, "
                "as a given: rewriting the five layers of stage 5 again teaches nothing new."),
    9: Exercise({"choose_device": "turns it into a `torch.device` once",
                 "train_one_epoch": "hence `x = x.to(device)`",
                 "evaluate": "hence `x = x.to(device)`"},
                "The device is decided once (choose_device) and every batch is moved to it where it "
                "is used (train_one_epoch, evaluate). main() only passes the device on, and "
                "make_loaders only adds pin_memory, so they stay."),
    10: Exercise({"gpus_starting_at": "device_ids[0]"},
                 "The wrap itself is two lines of main(), which no check can call alone; the device "
                 "list it is given is the part that needs thought, since DataParallel gathers on "
                 "device_ids[0]."),
    11: Exercise({"process_group": "the stage makes a group of one process",
                  "choose_device": "The device is `cuda:LOCAL_RANK`",
                  "make_loaders": "A `DistributedSampler` gives each process its own share"},
                 "Joining and leaving the process group, one device per process, and the "
                 "DistributedSampler that gives each process its share. The DDP wrap and the rank-0 "
                 "printing are lines of main(), which no check can call alone, so they stay."),
}


def exercise_for(stage: int) -> Exercise:
    if stage not in EXERCISES:
        raise CourseError(f"no stage {stage}: stages are 1 to {len(EXERCISES)}")
    return EXERCISES[stage]


def work_file(stage: int, work_dir: Path = WORK_DIR) -> Path:
    """The learner's copy: work/stage03_autograd.py for stage 3."""
    return work_dir / stage_file(stage).name


# ---------------------------------------------------------------- hints from the stage's docstring
def docstring_sentences(doc: str) -> list[str]:
    """The docstring's sentences, each on one line; a sentence never runs past its bullet or paragraph."""
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n|\n(?=- )", doc):
        text = " ".join(line.strip() for line in paragraph.splitlines()).removeprefix("- ")
        # a sentence ends at . ! or ? and a space, perhaps with a quote or bracket between them
        for piece in re.split(r"(?<=[.!?])\s+|(?<=[.!?][\")])\s+", text):
            if sentences and sentences[-1].endswith(("e.g.", "i.e.", "vs.", "etc.")):  # an abbreviation
                sentences[-1] += " " + piece
            else:
                sentences.append(piece)
    return sentences


def hint_sentence(doc: str, words: str) -> str | None:
    """The first sentence of the docstring that holds `words` (case and line breaks aside)."""
    wanted = " ".join(words.split()).lower()
    return next((s for s in docstring_sentences(doc) if wanted in s.lower()), None)


# ---------------------------------------------------------------- the generator
def function_nodes(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    """Top-level functions by name, and methods as "Class.method"."""
    nodes = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            nodes[node.name] = node
        elif isinstance(node, ast.ClassDef):
            methods = (item for item in node.body if isinstance(item, ast.FunctionDef))
            nodes.update({f"{node.name}.{method.name}": method for method in methods})
    return nodes


def body_lines(node: ast.FunctionDef, lines: list[str]) -> tuple[int, int]:
    """First and last line (1-based) of the body after the docstring, comments above it included."""
    body = node.body
    has_docstring = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
        and isinstance(body[0].value.value, str)
    if has_docstring:
        return body[0].end_lineno + 1, body[-1].end_lineno
    first = body[0].lineno
    while lines[first - 2].strip().startswith("#"):  # a comment above the first line is part of the body
        first -= 1
    return first, body[-1].end_lineno


def blanked_body(name: str, hint: str | None, quoted_by: str | None, indent: str, stage: int) -> list[str]:
    """The lines that replace a body: the hint, then the raise."""
    if quoted_by is not None:
        comment = [f"# Yours to write (the hint above {quoted_by} is about this one too)."]
    elif hint is not None:
        comment = textwrap.wrap(f'Yours to write. From the docstring at the top: "{hint}"', 96 - len(indent),
                                initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)
    else:  # the docstring no longer holds the hint's words: point at it
        comment = ["# Yours to write: the docstring at the top says what changed since the stage before."]
    message = f"{name} is yours to write; make check STAGE={stage} checks it"
    return [indent + line + "\n" for line in comment] + [f'{indent}raise NotImplementedError("{message}")\n']


def blank_functions(source: str, stage: int) -> str:
    """The stage's source with the bodies of its exercise's functions replaced by a hint and a raise."""
    exercise = exercise_for(stage)
    tree = ast.parse(source)
    doc = ast.get_docstring(tree) or ""
    lines = source.splitlines(keepends=True)
    nodes = function_nodes(tree)
    quoted: dict[str, str] = {}  # a hint -> the function above which it is quoted
    edits = []
    for name, words in exercise.blanks.items():
        node = nodes[name]
        first, last = body_lines(node, lines)
        hint = hint_sentence(doc, words)
        indent = " " * node.body[-1].col_offset
        edits.append((first, last, blanked_body(name, hint, quoted.get(hint), indent, stage)))
        if hint is not None:
            quoted.setdefault(hint, name)
    for first, last, new in sorted(edits, reverse=True):  # from the bottom, so line numbers stay right
        lines[first - 1:last] = new
    return "".join(lines)


def write_exercise(stage: int, work_dir: Path = WORK_DIR, force: bool = False) -> Path:
    """Write the learner's file; an existing one is left alone unless `force`."""
    path = work_file(stage, work_dir)
    if path.exists() and not force:
        raise CourseError(f"{shown(path)} exists and may hold your work: left as it is "
                          f"(FORCE=1 overwrites it with a fresh exercise)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(blank_functions(stage_file(stage).read_text(), stage))
    return path


def shown(path: Path) -> str:
    """A path as the learner typed it: relative to the course's root where it is inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


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


@lru_cache(maxsize=None)
def torch_reference() -> ModuleType:
    """The tests' independent PyTorch reference (tests/torch_reference.py): logits, loss and
    gradients by autograd, and a trajectory of torch.optim.SGD."""
    return load_file(ROOT / "tests" / "torch_reference.py")


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


# ---------------------------------------------------------------- each function alone: hand-written ops
CONV_INPUTS = "x (2, 6, 14, 14), weight (16, 6, 5, 5), bias (16,) and dout (2, 16, 10, 10), random, seed 0"
POOL_INPUT = "a (2, 3, 8, 8) input of 0s, 1s and 2s, so that most windows hold ties, seed 0"
LINEAR_INPUTS = "x (4, 84), weight (10, 84) and dout (4, 10), random, seed 0"


def conv_case():
    return dict(x=random(0, (2, 6, 14, 14)), weight=random(1, (16, 6, 5, 5)) / 10, bias=random(2, (16,))), \
        random(3, (2, 16, 10, 10))


def check_conv2d(s: Subject, dtype: str) -> None:
    inputs, dout = conv_case()
    out, _ = by_autograd(F.conv2d, {"input": inputs["x"], "weight": inputs["weight"], "bias": inputs["bias"]},
                         dout, dtype)
    got = s.module.conv2d(*s.native(dtype, inputs["x"], inputs["weight"], inputs["bias"]))
    got_out, cols = returned(got, 2, "the output and the windows (cols)")
    expect_close("output", got_out, out, dtype, CONV_INPUTS)
    # cols, in the layout stage 1 uses: rows (C, k, k), as the weight flattens; columns (N, OH, OW)
    windows = F.unfold(torch_of(inputs["x"], dtype), 5)  # (N, C*k*k, OH*OW)
    expect_close("cols", cols, windows.permute(1, 0, 2).reshape(6 * 25, -1), dtype, CONV_INPUTS)


def torch_of(array: np.ndarray, dtype: str):
    return torch.tensor(array, dtype=torch_dtype(dtype))


def check_conv2d_backward(s: Subject, dtype: str) -> None:
    inputs, dout = conv_case()
    _, grads = by_autograd(F.conv2d, {"input": inputs["x"], "weight": inputs["weight"], "bias": inputs["bias"]},
                           dout, dtype)
    x, weight, bias, native_dout = s.native(dtype, inputs["x"], inputs["weight"], inputs["bias"], dout)
    _, cols = s.module.conv2d(x, weight, bias)  # the windows this stage's forward keeps
    dweight, dbias = returned(s.module.conv2d_backward(native_dout, cols, weight), 2,
                              "the weight gradient and the bias gradient")
    expect_close("weight gradient", dweight, grads["weight"], dtype, CONV_INPUTS)
    expect_close("bias gradient", dbias, grads["bias"], dtype, CONV_INPUTS)


def check_conv2d_input_backward(s: Subject, dtype: str) -> None:
    inputs, dout = conv_case()
    _, grads = by_autograd(F.conv2d, {"input": inputs["x"], "weight": inputs["weight"], "bias": inputs["bias"]},
                           dout, dtype)
    native_dout, weight = s.native(dtype, dout, inputs["weight"])
    expect_close("input gradient", s.module.conv2d_input_backward(native_dout, weight), grads["input"], dtype,
                 CONV_INPUTS)


def check_relu_backward(s: Subject, dtype: str) -> None:
    z, dout = random(0, (4, 120)), random(1, (4, 120))
    _, grads = by_autograd(F.relu, {"input": z}, dout, dtype)
    native_z, native_dout = s.native(dtype, z, dout)
    expect_close("input gradient", s.module.relu_backward(native_dout, s.module.relu(native_z)), grads["input"],
                 dtype, "z (4, 120) and dout (4, 120), random, seed 0")


def pool_case():
    rng = np.random.default_rng(0)
    return rng.integers(0, 3, size=(2, 3, 8, 8)).astype(np.float64), rng.random((2, 3, 4, 4))


def check_max_pool2x2(s: Subject, dtype: str) -> None:
    x, dout = pool_case()
    out, grads = by_autograd(lambda input: F.max_pool2d(input, 2), {"input": x}, dout, dtype)
    got_out, winner = returned(s.module.max_pool2x2(*s.native(dtype, x)), 2, "the output and the winners")
    expect_close("output", got_out, out, dtype, POOL_INPUT)
    # the winners say where the gradient goes: the course's backward routes dout by them
    routed = s.course.max_pool2x2_backward(*s.native(dtype, dout), winner)
    expect_close("the gradient routed by its winners", routed, grads["input"], dtype, POOL_INPUT)


def check_max_pool2x2_backward(s: Subject, dtype: str) -> None:
    x, dout = pool_case()
    _, grads = by_autograd(lambda input: F.max_pool2d(input, 2), {"input": x}, dout, dtype)
    native_x, native_dout = s.native(dtype, x, dout)
    _, winner = s.module.max_pool2x2(native_x)
    expect_close("input gradient", s.module.max_pool2x2_backward(native_dout, winner), grads["input"], dtype,
                 POOL_INPUT)


def check_linear_backward(s: Subject, dtype: str) -> None:
    x, weight, bias, dout = random(0, (4, 84)), random(1, (10, 84)), random(2, (10,)), random(3, (4, 10))
    _, grads = by_autograd(F.linear, {"input": x, "weight": weight, "bias": bias}, dout, dtype)
    native_dout, native_x, native_weight = s.native(dtype, dout, x, weight)
    dweight, dbias, dx = returned(s.module.linear_backward(native_dout, native_x, native_weight), 3,
                                  "the weight gradient, the bias gradient and the input gradient")
    expect_close("weight gradient", dweight, grads["weight"], dtype, LINEAR_INPUTS)
    expect_close("bias gradient", dbias, grads["bias"], dtype, LINEAR_INPUTS)
    expect_close("input gradient", dx, grads["input"], dtype, LINEAR_INPUTS)


def check_cross_entropy(s: Subject, dtype: str) -> None:
    """Ordinary logits, then logits in the thousands, where exp() overflows unless the largest
    logit is subtracted first."""
    y = np.array([3, 0, 9, 3])
    for scale, on in ((3, "logits (4, 10), random, seed 0"), (3000, "logits (4, 10) in the thousands, seed 0")):
        logits = scale * random(0, (4, 10))
        loss, grads = by_autograd(lambda logits: F.cross_entropy(logits, torch.as_tensor(y)), {"logits": logits},
                                  np.array(1.0), dtype)
        [native_logits] = s.native(dtype, logits)
        on = f"{on}, labels {y.tolist()}"
        if s.driver.family == "hand-written gradients":
            got_loss, dlogits = returned(s.module.cross_entropy(native_logits, s.labels(y)), 2,
                                         "the loss and its gradient with respect to the logits")
        else:  # autograd differentiates the learner's loss
            native_logits.requires_grad_()
            got_loss = s.module.cross_entropy(native_logits, s.labels(y))
            got_loss.backward()
            dlogits = native_logits.grad
        expect_close("loss", got_loss, loss, dtype, on)
        expect_close("gradient of the loss with respect to the logits", dlogits, grads["logits"], dtype, on)


def check_backward(s: Subject, dtype: str) -> None:
    """The chain rule: every parameter's gradient from one batch, against autograd."""
    params = reference_params(0)
    [(x, y)] = sample_batches(1, 4, seed=0)
    _, _, expected = torch_reference().reference_step(params, x, y, dtype)
    model = s.driver.build(params, dtype)
    logits, cache = s.module.forward_with_cache(model.net, *s.native(dtype, x))
    _, dlogits = s.module.cross_entropy(logits, s.labels(y))
    expect_dicts_close("{name} gradient", s.module.backward(model.net, cache, dlogits), expected, dtype, ONE_BATCH)


# ---------------------------------------------------------------- each function alone: the step's pieces
UPDATE_STEPS, UPDATE_LR = 3, 0.1
UPDATE_INPUTS = f"the reference weights and random gradients, seed 10, lr {UPDATE_LR}, momentum {MOMENTUM}"


def check_sgd_momentum_update(s: Subject, dtype: str) -> None:
    """Three updates with given gradients, against torch.optim.SGD fed the same gradients."""
    params = reference_params(0)
    grads = [{n: random(10 + step, PARAM_SHAPES[n]) for n in PARAM_NAMES} for step in range(UPDATE_STEPS)]
    expected = sgd_reference(params, grads, UPDATE_LR, MOMENTUM, dtype)
    model = s.driver.build(params, dtype)
    tensors = parameters_of(s, model)
    for step, step_grads in enumerate(grads):
        update(s, model, step_grads, dtype)
        if s.driver.family == "autograd":
            replaced = next((n for n, p in tensors.items() if model.net[n] is not p), None)
            if replaced is not None:
                raise Mismatch(f"params[{replaced!r}] is a new tensor after the update: change each "
                               "parameter in place (p -= ...), so that backward() goes on filling its .grad")
        expect_dicts_close(f"after step {step + 1} of {UPDATE_STEPS}: {{name}}", s.driver.get_params(model),
                           expected[step], dtype, UPDATE_INPUTS, order=PARAM_NAMES)


def parameters_of(s: Subject, model) -> dict:
    if isinstance(model.net, dict):
        return dict(model.net)
    return dict(model.net.named_parameters())


def update(s: Subject, model, grads: dict, dtype: str) -> None:
    """One call of the learner's update, with the gradients where this stage's update reads them."""
    if s.driver.family == "hand-written gradients":
        native = dict(zip(grads, s.native(dtype, *grads.values())))
        s.module.sgd_momentum_update(model.net, model.momentum_buffers, native, UPDATE_LR, MOMENTUM)
        return
    for name, p in parameters_of(s, model).items():
        p.grad = torch_of(grads[name], dtype)
    s.module.sgd_momentum_update(model.net, model.momentum_buffers, UPDATE_LR, MOMENTUM)


def check_zero_grad(s: Subject, dtype: str) -> None:
    model = s.driver.build(reference_params(0), dtype)
    for name, p in model.net.items():
        p.grad = torch_of(np.ones(PARAM_SHAPES[name]), dtype)  # as a previous backward() leaves it
    s.module.zero_grad(model.net)
    for name in PARAM_NAMES:
        grad = model.net[name].grad
        if grad is not None and bool(grad.any()):
            raise Mismatch(f"after zero_grad(params), {name}.grad still holds the previous step's gradient, "
                           "and the next backward() adds to it")


def check_forward(s: Subject, dtype: str) -> None:
    """forward(params, x) of the autograd stages: the logits, and the gradients autograd derives from them."""
    params = reference_params(0)
    [(x, y)] = sample_batches(1, 4, seed=0)
    logits, _, grads = torch_reference().reference_step(params, x, y, dtype)
    model = s.driver.build(params, dtype)
    got = s.module.forward(model.net, *s.native(dtype, x))
    expect_close("logits", got, logits, dtype, ONE_BATCH)
    F.cross_entropy(got, s.labels(y)).backward()
    expect_dicts_close("{name} gradient (by autograd through your forward)",
                       {n: p.grad for n, p in model.net.items()}, grads, dtype, ONE_BATCH)


# ---------------------------------------------------------------- each function alone: the module
def check_net_init(s: Subject, dtype: str) -> None:
    net = s.module.Net()
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
    if shapes != PARAM_SHAPES:
        raise Mismatch(f"Net() has the parameters {shapes}, expected {PARAM_SHAPES} (the tutorial's layers, "
                       "named conv1, conv2, fc1, fc2, fc3)")
    check_net_forward(s, dtype)


def check_net_forward(s: Subject, dtype: str) -> None:
    """The logits and autograd's gradients through them; with dropout, train and eval mode."""
    params = reference_params(0)
    [(x, y)] = sample_batches(1, 4, seed=0)
    logits, _, grads = torch_reference().reference_step(params, x, y, dtype)
    model = s.driver.build(params, dtype)
    got = s.driver.forward(model, x)
    expect_close("logits", got, logits, dtype, ONE_BATCH)
    F.cross_entropy(got, s.labels(y)).backward()
    expect_dicts_close("{name} gradient (by autograd through your forward)",
                       {n: p.grad for n, p in model.module.named_parameters()}, grads, dtype, ONE_BATCH)
    if "dropout" in inspect.signature(s.module.Net).parameters:
        check_dropout(s, params, x, logits, dtype)


def check_dropout(s: Subject, params: dict, x: np.ndarray, logits, dtype: str) -> None:
    """Net(0.5): in train mode, the tutorial's network with dropout before fc2 and fc3, drawing
    the same masks from the same seed; in eval mode, the network without dropout."""
    model = s.driver.build(params, dtype, dropout=0.5)
    torch.manual_seed(0)
    first, second = s.driver.forward(model, x), s.driver.forward(model, x)
    if torch.equal(first, second):
        raise Mismatch("with Net(0.5) in train mode, two forwards of one batch gave the same logits: "
                       "the dropout layer is not used")
    torch.manual_seed(0)
    expected = dropout_reference(params, x, 0.5, dtype)
    torch.manual_seed(0)
    expect_close("Net(0.5) in train mode, seed 0: logits", s.driver.forward(model, x), expected, dtype,
                 f"{ONE_BATCH}, against dropout before fc2 and fc3")
    model.net.eval()
    expect_close("Net(0.5) in eval mode (dropout off): logits", s.driver.forward(model, x), logits, dtype,
                 ONE_BATCH)


def dropout_reference(params: dict, x: np.ndarray, p: float, dtype: str):
    """The tests' reference network with F.dropout(p) before fc2 and fc3, as stage 8 places it."""
    w = {name: torch_of(value, dtype) for name, value in params.items()}
    h = F.max_pool2d(F.relu(F.conv2d(torch_of(x, dtype), w["conv1.weight"], w["conv1.bias"])), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, w["conv2.weight"], w["conv2.bias"])), 2).flatten(1)
    h = F.dropout(F.relu(F.linear(h, w["fc1.weight"], w["fc1.bias"])), p)
    h = F.dropout(F.relu(F.linear(h, w["fc2.weight"], w["fc2.bias"])), p)
    return F.linear(h, w["fc3.weight"], w["fc3.bias"])


@contextmanager
def modes_seen(net):
    """The model's training flag at every forward while this lasts."""
    modes: list[bool] = []
    handle = net.register_forward_pre_hook(lambda module, inputs: modes.append(module.training))
    try:
        yield modes
    finally:
        handle.remove()


def moves_watched(device):
    """A TorchFunctionMode that records which tensors had .to(device) (or .cuda()) called on them."""
    class MovesToDevice(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.moved: set[int] = set()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.Tensor.cuda or (func is torch.Tensor.to and goes_to(device, args[1:], kwargs)):
                self.moved.add(id(args[0]))
            return func(*args, **kwargs)

    return MovesToDevice()


def goes_to(device, args, kwargs) -> bool:
    for value in (*args, kwargs.get("device")):
        if isinstance(value, (str, torch.device)):
            try:
                return torch.device(value) == device
            except RuntimeError:
                return False
    return False


def as_tensors(s: Subject, batches, dtype: str) -> list:
    """The batches as CPU tensors, the way a DataLoader hands them over."""
    return [(torch_of(x, dtype), s.labels(y)) for x, y in batches]


def best_device():
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


@contextmanager
def no_tf32():
    """Full float32 matrix products and convolutions on a GPU while this lasts: TF32, on by
    default for cuDNN's convolutions, keeps 10 bits of mantissa and would miss the tolerance."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def check_train_one_epoch(s: Subject, dtype: str) -> None:
    """The learner's own loop over five batches, against torch.optim.SGD over the same batches;
    from stage 8 on in the mode it sets, from stage 9 on with the batches it moves."""
    params = reference_params(0)
    batches = sample_batches(5, 4, seed=1)
    losses, final = torch_reference().reference_trajectory(params, batches, LR, MOMENTUM, dtype)
    device = best_device() if "device" in inspect.signature(s.module.train_one_epoch).parameters else None
    model = s.driver.build(params, dtype, **({"device": device} if device is not None else {}))
    tensors = as_tensors(s, batches, dtype) if device is not None else batches
    takes_dropout = hasattr(s.module, "Net") and "dropout" in inspect.signature(s.module.Net).parameters
    if takes_dropout:
        model.net.eval()  # train_one_epoch itself must switch to train mode
    with (modes_seen(model.net) if takes_dropout else nullcontext([])) as modes, no_tf32(), \
            (moves_watched(device) if device is not None else nullcontext()) as watch, \
            first_batch_moved(watch, tensors, "train_one_epoch", "training"):
        got = (s.driver.train_one_epoch(model, tensors, LR, MOMENTUM, as_given=True) if device is not None
               else s.driver.train_one_epoch(model, batches, LR, MOMENTUM))
    expect_losses("", got, losses, dtype, FIVE_BATCHES)
    expect_dicts_close("after 5 steps, {name}", s.driver.get_params(model), final, dtype, FIVE_BATCHES)
    if not all(modes):
        raise Mismatch("train_one_epoch ran its forward in eval mode (it was handed a model in eval mode, as "
                       "evaluate() leaves it): call model.train() first, or dropout stays off while training")
    if watch is not None:
        expect_moved(watch, tensors, "train_one_epoch", "training")


@contextmanager
def first_batch_moved(watch, batches, function: str, kind: str, labels: bool = True):
    """On a GPU, a batch left on the CPU makes the forward raise (the weights are on the GPU);
    then say that, as on the CPU, rather than torch's message about devices."""
    try:
        yield
    except NotImplementedError:  # a RuntimeError too, but one that means "not done yet"
        raise
    except RuntimeError:  # what torch raises for tensors on different devices
        if watch is not None:
            expect_moved(watch, batches[:1], function, kind, labels)
        raise


def expect_moved(watch, batches, function: str, kind: str, labels: bool = True) -> None:
    for i, (x, y) in enumerate(batches, 1):
        for name, tensor in (("x", x), ("y", y)) if labels else (("x", x),):
            if id(tensor) not in watch.moved:
                raise Mismatch(f"{function} did not call {name}.to(device) on {kind} batch {i}: on the CPU that "
                               f"changes nothing, but on a GPU the batch stays on the CPU while the model is on "
                               f"the GPU, and the step fails")


def check_evaluate(s: Subject, dtype: str) -> None:
    """Predictions for 6 test images, given a model in train mode with dropout 0.5: evaluate must
    switch to eval mode (and, from stage 9 on, move each batch to the device)."""
    params = reference_params(0)
    batches = sample_batches(2, 3, seed=4)
    x = np.concatenate([b[0] for b in batches])
    expected = torch_reference().reference_step(params, x, np.zeros(len(x), dtype=np.int64), dtype)[0].argmax(1)
    wants_device = "device" in inspect.signature(s.module.evaluate).parameters
    device = best_device() if wants_device else None
    model = s.driver.build(params, dtype, dropout=0.5, **({"device": device} if wants_device else {}))
    model.net.train()
    tensors = as_tensors(s, batches, dtype)
    with modes_seen(model.net) as modes, no_tf32(), \
            (moves_watched(device) if wants_device else nullcontext()) as watch, \
            first_batch_moved(watch, tensors, "evaluate", "test", labels=False):
        predicted = s.module.evaluate(model.net, *([device] if wants_device else []), tensors)
    if not modes or any(modes):
        raise Mismatch("evaluate ran its forward in train mode (it was handed a model in train mode, with "
                       "dropout 0.5): call model.eval() first, or dropout changes the predictions")
    predicted = to_numpy(predicted).astype(np.int64)
    if not np.array_equal(predicted, expected):
        raise Mismatch(f"evaluate predicted the classes {predicted.tolist()}, the network predicts "
                       f"{expected.tolist()} (6 synthetic test images, seed 4, {dtype})")
    if watch is not None:
        expect_moved(watch, tensors, "evaluate", "test", labels=False)


# ---------------------------------------------------------------- each function alone: data and devices
def reference_images(images: np.ndarray, dtype: str):
    """The tutorial's transform by hand: ToTensor() (float32 in [0, 1]), Normalize(0.5, 0.5), then the dtype."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32) / 255
    return ((x - 0.5) / 0.5).to(torch_dtype(dtype))


def check_make_transform(s: Subject, dtype: str) -> None:
    images = make_synthetic(5, n_train=3, n_test=1).train_x
    transform = s.module.make_transform(s.module.DTYPES[dtype])
    got = [transform(image) for image in images]
    # ToTensor makes float32 whatever comes after, so float32 precision is what both orders share
    for i, (x, expected) in enumerate(zip(got, reference_images(images, dtype))):
        if str(getattr(x, "dtype", "")) != f"torch.{dtype}":
            raise Mismatch(f"make_transform(torch.{dtype}) made {getattr(x, 'dtype', type(x).__name__)} images: "
                           "end with a conversion to the run's dtype")
        expect_close(f"image {i} after the transform", x, expected, dtype, "3 synthetic images, seed 5",
                     tolerance_of="float32")


def dataset_case():
    data = make_synthetic(6, n_train=10, n_test=5)
    return data, f"the synthetic set of seed 6 ({len(data.train_y)} training, {len(data.test_y)} test images)"


def check_array_dataset_len(s: Subject, dtype: str) -> None:
    data, on = dataset_case()
    dataset = s.module.ArrayDataset(data.train_x, data.train_y, s.module.make_transform(s.module.DTYPES[dtype]))
    if len(dataset) != len(data.train_y):
        raise Mismatch(f"len(ArrayDataset(...)) is {len(dataset)}, expected {len(data.train_y)} on {on}")


def check_array_dataset_getitem(s: Subject, dtype: str) -> None:
    data, on = dataset_case()
    dataset = s.module.ArrayDataset(data.train_x, data.train_y, s.module.make_transform(s.module.DTYPES[dtype]))
    expected = reference_images(data.train_x, dtype)
    for i in (0, 7):
        item = dataset[i]
        x, y = returned(tuple(item) if isinstance(item, list) else item, 2, "the transformed image and its label")
        expect_close(f"dataset[{i}]'s image", x, expected[i], dtype, on)
        if int(y) != int(data.train_y[i]):
            raise Mismatch(f"dataset[{i}]'s label is {y}, expected {int(data.train_y[i])} on {on}")


def loader_args(dtype: str) -> argparse.Namespace:
    return argparse.Namespace(batch_size=4, seed=3, workers=0, dtype=dtype)


def expected_order(s: Subject, n: int, args: argparse.Namespace, epoch: int) -> list[list[int]]:
    """The index batches PyTorch draws for this stage: a DataLoader shuffled by a generator seeded
    with --seed, or (stage 11) a DistributedSampler with that seed, for one process of one."""
    indices = list(range(n))
    if hasattr(s.course, "process_group"):
        sampler = DistributedSampler(indices, num_replicas=1, rank=0, shuffle=True, seed=args.seed)
        sampler.set_epoch(epoch)
        loader = DataLoader(indices, batch_size=args.batch_size, sampler=sampler)
    else:
        loader = DataLoader(indices, batch_size=args.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(args.seed))
    return [batch.tolist() for batch in loader]


def check_make_loaders(s: Subject, dtype: str) -> None:
    data, on = dataset_case()
    args = loader_args(dtype)
    parameters = inspect.signature(s.module.make_loaders).parameters
    with group_of_one():  # a DistributedSampler asks the process group for its size and rank
        made = s.module.make_loaders(data, args, *([torch.device("cpu")] if "device" in parameters else []))
        distributed = hasattr(s.course, "process_group")
        loaders = returned(tuple(made) if isinstance(made, list) else made, 3 if distributed else 2,
                           "the train loader, the test loader" + (" and the sampler" if distributed else ""))
        n = len(data.train_y)
        expect_batches("training", loaders[0], data.train_x, data.train_y, expected_order(s, n, args, 0), dtype,
                       f"{on}, batch size 4, seed 3")
        if distributed:  # the sampler: set_epoch(1) must give the order of epoch 1
            loaders[2].set_epoch(1)
            expect_batches("epoch 1's training", loaders[0], data.train_x, data.train_y,
                           expected_order(s, n, args, 1), dtype, f"{on}, batch size 4, seed 3, after set_epoch(1)")
    expect_batches("test", loaders[1], data.test_x, data.test_y, None, dtype, on)


def expect_batches(kind: str, loader, images, labels, order, dtype: str, on: str) -> None:
    """The loader's batches hold these images, in this order of index batches (None: all of them
    in order, in batches of any size)."""
    batches = [(x, y) for x, y in loader]
    if order is None:
        order = [list(range(len(labels)))]
        batches = [(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))]
    if [len(y) for _, y in batches] != [len(o) for o in order]:
        raise Mismatch(f"the {kind} batches have the sizes {[len(y) for _, y in batches]}, expected "
                       f"{[len(o) for o in order]} on {on}")
    expected_x = reference_images(images, dtype)
    for i, ((x, y), indices) in enumerate(zip(batches, order), 1):
        if y.tolist() != labels[indices].tolist() or not torch.allclose(x.double(), expected_x[indices].double()):
            raise Mismatch(f"{kind} batch {i} holds other images than the images {indices} that PyTorch's "
                           f"shuffle draws (labels {y.tolist()}, expected {labels[indices].tolist()}) on {on}")
        expect_close(f"{kind} batch {i}", x, expected_x[indices], dtype, on)


@contextmanager
def group_of_one():
    """A process group of this process alone (its rendezvous store in memory), if none is joined."""
    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def check_choose_device(s: Subject, dtype: str) -> None:
    """With and without a GPU (torch.cuda.is_available() answered both ways); in stage 11 as the
    process of LOCAL_RANK 1, since there each process takes the GPU of its local rank."""
    local_rank = 1 if hasattr(s.course, "process_group") else 0
    with mock.patch.dict(os.environ, {"LOCAL_RANK": str(local_rank)}):
        for cuda in (True, False):
            gpu = f"cuda:{local_rank}"
            cases = {"cpu": "cpu", "cuda": gpu, "cuda:1": "cuda:1", "auto": gpu if cuda else "cpu"}
            with mock.patch.object(torch.cuda, "is_available", lambda: cuda):
                for name, expected in cases.items():
                    got = s.module.choose_device(name)
                    if not isinstance(got, torch.device) or got != torch.device(expected):
                        raise Mismatch(f"choose_device({name!r}) returned {got!r}, expected "
                                       f"torch.device({expected!r}) ({'a' if cuda else 'no'} GPU, "
                                       f"LOCAL_RANK={local_rank})")


def check_gpus_starting_at(s: Subject, dtype: str) -> None:
    with mock.patch.object(torch.cuda, "device_count", lambda: 4):
        for index, expected in ((0, [0, 1, 2, 3]), (2, [2, 0, 1, 3])):
            got = s.module.gpus_starting_at(torch.device("cuda", index))
            if list(got) != expected:
                raise Mismatch(f"gpus_starting_at(cuda:{index}) with 4 GPUs returned {list(got)}, expected "
                               f"{expected}: the model's own GPU first, then the others")


def check_process_group(s: Subject, dtype: str) -> None:
    """Plain python (no RANK in the environment): a group of one process, left at the end."""
    outside_torchrun = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    with mock.patch.dict(os.environ, outside_torchrun, clear=True):
        try:
            with s.module.process_group(torch.device("cpu")):
                if not dist.is_initialized():
                    raise Mismatch("inside process_group(cpu), no process group is initialised")
                seen = dist.get_world_size(), dist.get_rank(), dist.get_backend()
        finally:
            left = dist.is_initialized()
            if left:
                dist.destroy_process_group()
    if seen != (1, 0, "gloo"):
        raise Mismatch(f"inside process_group(cpu) started by plain python, world size, rank and backend are "
                       f"{seen}, expected (1, 0, 'gloo')")
    if left:
        raise Mismatch("after the with block, the process group is still initialised: destroy it on the way out")


CHECKS: dict[str, Callable[[Subject, str], None]] = {
    "conv2d": check_conv2d, "conv2d_backward": check_conv2d_backward,
    "conv2d_input_backward": check_conv2d_input_backward, "relu_backward": check_relu_backward,
    "max_pool2x2": check_max_pool2x2, "max_pool2x2_backward": check_max_pool2x2_backward,
    "linear_backward": check_linear_backward, "cross_entropy": check_cross_entropy, "backward": check_backward,
    "sgd_momentum_update": check_sgd_momentum_update, "zero_grad": check_zero_grad, "forward": check_forward,
    "Net.__init__": check_net_init, "Net.forward": check_net_forward, "train_one_epoch": check_train_one_epoch,
    "evaluate": check_evaluate, "make_transform": check_make_transform,
    "ArrayDataset.__len__": check_array_dataset_len, "ArrayDataset.__getitem__": check_array_dataset_getitem,
    "make_loaders": check_make_loaders, "choose_device": check_choose_device,
    "gpus_starting_at": check_gpus_starting_at, "process_group": check_process_group,
}


# ---------------------------------------------------------------- all of the learner's file together
def check_together(s: Subject, dtype: str) -> None:
    """Through the harness's driver: one step and five momentum steps against PyTorch and against
    the stage before, and the stage's own train_one_epoch."""
    reference = torch_reference()
    params = reference_params(0)
    [(x, y)] = sample_batches(1, 4, seed=0)
    logits, loss, grads = reference.reference_step(params, x, y, dtype)
    raw = s.driver.forward(s.driver.build(params, dtype), x)
    expect_close("logits", raw, logits, dtype, ONE_BATCH)  # in the stage's own dtype, before any conversion
    mine = one_step(s.module, params, x, y, dtype, LR, MOMENTUM)
    expect_step("one step", mine, logits, loss, grads, dtype)
    batches = sample_batches(5, 4, seed=1)
    losses, final = reference.reference_trajectory(params, batches, LR, MOMENTUM, dtype)
    my_steps = trajectory(s.module, params, batches, dtype, LR, MOMENTUM)
    expect_trajectory("5 momentum steps", my_steps, losses, final, dtype)
    if s.stage > 1:
        previous = load_stage(s.stage - 1)
        before = one_step(previous, params, x, y, dtype, LR, MOMENTUM)
        expect_step(f"against stage {s.stage - 1}, one step", mine, before["logits"], before["loss"],
                    before["grads"], dtype)
        before = trajectory(previous, params, batches, dtype, LR, MOMENTUM)
        expect_trajectory(f"against stage {s.stage - 1}, 5 momentum steps", my_steps, list(before["losses"]),
                          before["params"], dtype)
    model = s.driver.build(params, dtype)
    expect_trajectory("its own train_one_epoch", {"losses": s.driver.train_one_epoch(model, batches, LR, MOMENTUM),
                                                  "params": s.driver.get_params(model)}, losses, final, dtype)


def expect_step(what: str, got: dict, logits, loss, grads, dtype: str) -> None:
    """`got` from harness.one_step: float64 copies, compared within the tolerance of `dtype`."""
    expect_close(f"{what}: logits", got["logits"], logits, "float64", ONE_BATCH, tolerance_of=dtype)
    expect_close(f"{what}: loss", got["loss"], loss, "float64", ONE_BATCH, tolerance_of=dtype)
    for name in GRADIENT_ORDER:
        expect_close(f"{what}: {name} gradient", got["grads"][name], grads[name], "float64", ONE_BATCH,
                     tolerance_of=dtype)


def expect_trajectory(what: str, got: dict, losses, final: dict, dtype: str) -> None:
    """`got` as harness.trajectory returns it: losses, and float64 copies of the parameters."""
    expect_losses(f"{what}: ", list(got["losses"]), list(losses), dtype, FIVE_BATCHES)
    for name in GRADIENT_ORDER:
        expect_close(f"{what}: {name} afterwards", to_numpy(got["params"][name]), final[name], "float64",
                     FIVE_BATCHES, tolerance_of=dtype)


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


def check(stage: int, path: Path | None = None) -> dict[str, Outcome]:
    """Every blanked function alone, then the whole file: {name: Outcome}, "all together" last."""
    exercise_for(stage)
    path = Path(path or work_file(stage)).resolve()
    if not path.exists():
        raise CourseError(f"{shown(path)} does not exist: make exercise STAGE={stage} writes it")
    try:
        s = Subject(load_file(path), load_stage(stage), stage, path)
    except NotImplementedError as err:
        return {"your file": Outcome("not done yet", exception_report(err, path))}
    except SyntaxError as err:
        return {"your file": Outcome("wrong", f"it does not load: SyntaxError: {err.msg}\n"
                                              f"at {shown(path)}, line {err.lineno}: {(err.text or '').strip()}")}
    except Exception as err:
        return {"your file": Outcome("wrong", "it does not load: " + exception_report(err, path))}
    outcomes = {}
    with one_thread():
        for name in s.blanks:
            with others_from_course(s, keep=name):
                outcomes[name] = run_check(s, CHECKS[name], name)
        if all(o.status == "passed" for o in outcomes.values()):
            outcomes["all together"] = run_check(s, check_together, None)
        else:  # it would only repeat what is said above
            outcomes["all together"] = Outcome("not checked", "waits until every function above passes")
    return outcomes


@contextmanager
def one_thread():
    """torch on one thread while the checks run: on batches of a few images a second thread has
    little to share, and on a busy machine it mostly waits for a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def report(stage: int, path: Path, outcomes: dict[str, Outcome]) -> str:
    """One line per function (a second for where an exception was raised), then the verdict."""
    against = "PyTorch" + (f" and stage {stage - 1}" if stage > 1 else "")
    width = max(map(len, outcomes)) + 2
    lines = [f"checking {shown(path)} against {against}, in float64 then float32:"]
    for name, outcome in outcomes.items():
        text = outcome.status + (f": {outcome.detail}" if outcome.detail else "")
        first, *rest = text.split("\n")
        lines.append(f"  {name:<{width}}{first}")
        lines += [f"  {'':<{width}}{line}" for line in rest]
    lines.append(verdict(stage, outcomes))
    return "\n".join(lines)


def verdict(stage: int, outcomes: dict[str, Outcome]) -> str:
    if all(o.status == "passed" for o in outcomes.values()):
        against = "PyTorch computes" if stage == 1 else f"PyTorch and stage {stage - 1} compute"
        return f"verdict: passed. Your stage {stage} computes what {against}, in float64 and float32."
    counts = {status: sum(o.status == status for o in outcomes.values()) for status in ("wrong", "not done yet")}
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    first = "start with the first that is wrong" if counts["wrong"] else "write what is not done yet"
    return (f"verdict: not yet ({summary}): {first}, then make check STAGE={stage} again. "
            f"(make solution STAGE={stage} shows the course's own answer.)")


# ---------------------------------------------------------------- the solution
def solution_diff(stage: int, path: Path | None = None) -> str:
    """The unified diff from the learner's file to the course's stage."""
    exercise_for(stage)
    path = Path(path or work_file(stage)).resolve()
    if not path.exists():
        raise CourseError(f"{shown(path)} does not exist: make exercise STAGE={stage} writes it")
    course = stage_file(stage)
    yours, theirs = (p.read_text().splitlines(keepends=True) for p in (path, course))
    diff = difflib.unified_diff(yours, theirs, fromfile=f"{shown(path)} (yours)",
                                tofile=f"{shown(course)} (the course's)")
    text = "".join(line if line.endswith("\n") else line + "\n" for line in diff)
    return text or f"{shown(path)} is the same as {shown(course)}\n"


# ---------------------------------------------------------------- command line
def parse(argv) -> argparse.Namespace:
    """The command line; `make check STAGE=3` gives STAGE (and FORCE) through the environment,
    so that no text of the learner's is ever part of a shell command."""
    parser = OneLineParser(prog="python -m common.exercises",
                           description="Exercises from the stages: write one, check it, see the solution.")
    parser.add_argument("command", choices=("exercise", "check", "solution"))
    parser.add_argument("stage", nargs="?", default=os.environ.get("STAGE", "").strip() or None,
                        help="the stage number, 1 to 11 (default: $STAGE)")
    parser.add_argument("--force", action="store_true",
                        default=os.environ.get("FORCE", "").strip() in ("1", "yes", "true"),
                        help="exercise: overwrite an existing file (default: $FORCE is 1, yes or true)")
    parser.add_argument("--file", type=Path, default=None, help="check or solution: this file instead of work/")
    args = parser.parse_args(argv)
    if args.stage is None:
        parser.error(f"which stage? make {args.command} STAGE=N, N from 1 to {len(EXERCISES)}")
    if not args.stage.isdigit() or int(args.stage) not in EXERCISES:
        parser.error(f"STAGE must be a number from 1 to {len(EXERCISES)}, got {args.stage!r}")
    args.stage = int(args.stage)
    return args


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "exercise":
            path = write_exercise(args.stage, force=args.force)
            names = ", ".join(exercise_for(args.stage).blanks)
            print(f"wrote {shown(path)}: fill in {names}; then make check STAGE={args.stage}")
            return 0
        if args.command == "solution":
            sys.stdout.write(solution_diff(args.stage, args.file))
            return 0
        path = Path(args.file or work_file(args.stage)).resolve()
        outcomes = check(args.stage, path)
        print(report(args.stage, path, outcomes))
        return 0 if all(o.status == "passed" for o in outcomes.values()) else NOT_DONE
    except CourseError as err:
        print(f"error: {err}", file=sys.stderr)
        return BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
