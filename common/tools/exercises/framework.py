"""The checking framework: the learner's file loaded, compared with what PyTorch computes, and
each check's outcome in words: the likely cause first, then the numbers that show it."""
from __future__ import annotations

import ast
import io
import itertools
import sys
import traceback
import types
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from common.errors import one_line
from common.harness import TOLERANCES, Driver, reference, relative_error, stage_file, to_numpy
from common.tools.exercises.catalog import exercise_for
from common.tools.exercises.generator import blocks, function_nodes, not_done_message, shown, statements_of
from common.tools.exercises.outcomes import Outcome
from common.tools.mistakes import gallery_note
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
        exec(compile(read_source(path), str(path), "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def read_source(path: Path) -> str:
    """The learner's file as text: UTF-8, as Python reads a source file without a coding line."""
    return Path(path).read_bytes().decode("utf-8")


def torch_reference() -> ModuleType:
    """The independent PyTorch reference (common/harness/reference.py): logits, loss and
    gradients by autograd, and a trajectory of torch.optim.SGD."""
    return reference


# ---------------------------------------------------------------- comparing
class Mismatch(Exception):
    """What a learner's function computed or did that it should not have: the likely cause in
    words, then (`numbers`) the first number that differs, its tolerance and the input, and
    (`gallery`) the entry of `make mistakes` that shows this mistake's symptom."""

    def __init__(self, words: str, numbers: str = "", gallery: str | None = None):
        super().__init__(words)
        self.words, self.numbers, self.gallery = words, numbers, gallery

    def __str__(self) -> str:
        lines = [self.words] + [self.numbers] * bool(self.numbers)
        return "\n".join(lines + ([gallery_note(self.gallery)] if self.gallery else []))

    def because(self, words: str, gallery: str | None = None) -> "Mismatch":
        """This mismatch's numbers under the words of its likely cause."""
        return Mismatch(words, self.numbers or self.words, gallery or self.gallery)


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
        raise Mismatch(f"{prefix}{len(actual)} steps were logged on {len(expected)} batches (on {on})")
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
    module: ModuleType  # the learner's file (or, when the course's own time is taken, the course's)
    course: ModuleType  # the course's own stage N
    stage: int
    path: Path
    cache: dict = field(default_factory=dict)  # what several checks share (a program's records)

    @property
    def driver(self) -> Driver:
        return Driver(self.module)

    @property
    def blanks(self) -> dict[str, str]:
        return exercise_for(self.stage).blanks

    @property
    def lines(self) -> dict:
        return exercise_for(self.stage).lines

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

    def takes(self, function: str, parameter: str) -> bool:
        import inspect

        return parameter in inspect.signature(getattr(self.module, function)).parameters


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
    unfinished function does not hide whether another one is right. (Lines of main() are put
    in by main_with_course_lines, where they are not done yet.)"""
    saved = []
    for name in s.blanks:
        if name == keep or name in s.lines:
            continue
        where, attr = owner(s.module, name)
        course_where, _ = owner(s.course, name)
        if where is None:
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


# ---------------------------------------------------------------- lines of main(), done or not
def raise_of(statement: ast.stmt) -> str | None:
    """The message of `raise NotImplementedError("...")`, or None for any other statement."""
    if isinstance(statement, ast.Raise) and isinstance(statement.exc, ast.Call) and statement.exc.args \
            and isinstance(statement.exc.args[0], ast.Constant):
        return statement.exc.args[0].value
    return None


def lines_not_done(s: Subject) -> list[str]:
    """The blanks of lines of main() whose raise is still in the learner's main()."""
    node = function_nodes(ast.parse(read_source(s.path))).get("main")
    messages = {raise_of(statement) for statement in ast.walk(node)} if node is not None else set()
    return [name for name in s.lines if not_done_message(name, s.stage) in messages]


def main_with_course_lines(s: Subject) -> Callable:
    """The learner's main(), each blanked line of it that is not done yet replaced by the
    course's own statements, compiled against the learner's module (line numbers kept)."""
    missing = {not_done_message(name, s.stage): name for name in lines_not_done(s)}
    if not missing:
        return s.module.main
    tree = ast.parse(read_source(s.path))
    course_source = stage_file(s.stage).read_text()
    course_main = function_nodes(ast.parse(course_source))["main"]
    main = function_nodes(tree)["main"]
    for block in list(blocks(main)):
        for statement in list(block):
            name = missing.get(raise_of(statement))
            if name is not None:
                course = statements_of(s.lines[name], course_main, course_source)
                for new in course:
                    for node in ast.walk(new):  # the course's lines stand where the raise stood
                        if hasattr(node, "lineno"):
                            node.lineno = node.end_lineno = statement.lineno
                index = block.index(statement)
                block[index:index + 1] = course
    module = ast.Module(body=[main], type_ignores=[])
    namespace: dict = {}
    exec(compile(module, str(s.path), "exec"), s.module.__dict__, namespace)
    return namespace["main"]


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
def once(check: Callable) -> Callable:
    """Marks a check that does not depend on the dtype (a device, a data order): run it once."""
    check.once = True
    return check


REFUSED_WRITES: list[str] = []  # what the sandbox refused the learner's code to write, in order


def run_check(s: Subject, check: Callable[[Subject, str], None], name: str | None) -> Outcome:
    """One check in float64, then float32; the first failure is the outcome. What the stage's
    code prints meanwhile (a stage may print a gradient after its first step) is not shown: the
    report is the checker's lines alone."""
    refused = len(REFUSED_WRITES)
    outcome = Outcome("passed")
    for dtype in ("float64",) if getattr(check, "once", False) else ("float64", "float32"):
        try:
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                check(s, dtype)
        except BaseException as err:  # noqa: BLE001 - every way the learner's code can end is an outcome
            outcome = outcome_of(err, s, name)
            break
        finally:
            tidy_up()
    if len(REFUSED_WRITES) > refused:  # whatever the code did next, the write is what to fix
        return Outcome("wrong", f"your code tried to write {REFUSED_WRITES[refused]}: make check keeps the "
                                "course's own files as they are, and refused")
    return outcome


def outcome_of(err: BaseException, s: Subject, name: str | None) -> Outcome:
    """How one exception ends a check, in the learner's words."""
    if isinstance(err, NotImplementedError):
        raiser = raised_in(err, s.path)
        itself = raiser is None or name is not None and raiser == bare_function_of(s, name)
        return Outcome("not done yet", "" if itself else f"{raiser} raises NotImplementedError")
    if isinstance(err, Mismatch):
        return Outcome("wrong", str(err))
    if isinstance(err, SystemExit):
        return Outcome("wrong", f"your code called sys.exit({err.code!r}), which would end make check itself: "
                                f"return instead{where_in(err, s.path)}")
    if isinstance(err, KeyboardInterrupt):
        return Outcome("interrupted", f"your code raised KeyboardInterrupt{where_in(err, s.path)}")
    return Outcome("wrong", exception_report(err, s.path))


def bare_function_of(s: Subject, name: str) -> str:
    """The bare name of the function a blank lies in, as a traceback names it."""
    return exercise_for(s.stage).function_of(name).split(".")[-1]


def innermost_frame_in(err: BaseException, path: Path):
    """The innermost frame of `err`'s traceback that lies in the learner's file, or None."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename) == path]
    return frames[-1] if frames else None


def raised_in(err: BaseException, path: Path) -> str | None:
    """The function of the learner's file that raised `err`."""
    frame = innermost_frame_in(err, path)
    return frame.name if frame else None  # a method's bare name: "__init__", not "Net.__init__"


def where_in(err: BaseException, path: Path) -> str:
    frame = innermost_frame_in(err, path)
    return "" if frame is None else f" (at {shown(path)}, line {frame.lineno}, in {frame.name}: {frame.line})"


# An exception's message (and a word of the line that raised it, or None) -> what it usually means
# in this course, and the gallery entry that shows it.
KNOWN_ERRORS = (
    ("a leaf Variable that requires grad is being used in an in-place operation", None,
     "the update changed a parameter in place while autograd was recording: run it inside "
     "`with torch.no_grad():`", "update-outside-no-grad"),
    ("'NoneType' object has no attribute", "grad",
     "a .grad was None: before the first backward, and after zero_grad sets it to None, a parameter has no "
     "gradient (zero it only where it is not None, or set it to None)", None),
    ("unsupported operand type(s) for", "grad", "a .grad was None where the update read it: no backward filled "
     "it before this update (did the update run before loss.backward(), or zero_grad between them?)", None),
    ("does not require grad and does not have a grad_fn", None,
     "the loss does not depend on anything that requires grad: was it computed under torch.no_grad(), or "
     "from .detach() or .item()?", None),
    ("object has no attribute 'module'", None,
     "the model is still the Net here: nn.DataParallel(...) and DistributedDataParallel(...) return the wrapper, "
     "which holds the Net as .module; assign it (model = ...)", None),
    ("Trying to backward through the graph a second time", None,
     "backward() ran twice through one forward's graph: one loss.backward() per forward", None),
)


def exception_report(err: BaseException, path: Path) -> str:
    """The exception as the learner needs it: what it likely means, its type and message, then
    where in their file."""
    message = one_line(str(err), 300)
    message = f"{type(err).__name__}: {message}" if message else type(err).__name__
    frame = innermost_frame_in(err, path)
    where = "" if frame is None else f"\nraised at {shown(path)}, line {frame.lineno}, in {frame.name}: {frame.line}"
    for pattern, word, words, gallery in KNOWN_ERRORS:
        if pattern in str(err) and (word is None or frame is not None and word in (frame.line or "")):
            return f"{words}\n{message}{where}" + (f"\n{gallery_note(gallery)}" if gallery else "")
    return message + where


def tidy_up() -> None:
    """Undo what a learner's mistake may leave behind for the next check."""
    torch.set_grad_enabled(True)
    if dist.is_initialized():
        dist.destroy_process_group()
