"""The learner's whole program, main(), run for a few dozen steps beside the course's own from the
same seed, their records compared (per-step losses, the data order, the accuracy of each epoch,
the final parameters); and the lines of main() that stages 10-13 blank, each watched in those runs:
the wrap, the sampler's epoch, autocast and the scaler, the compile."""
from __future__ import annotations

import tempfile
import traceback
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch
from torch.utils.data import DistributedSampler

from common.harness import TOLERANCES, relative_error, stage_options
from common.harness.programs import Program, run_program, small_data
from common.tools.exercises.checks.data_and_devices import pretended_machine
from common.tools.exercises.framework import Mismatch, Subject, main_with_course_lines, once
from common.weights import PARAM_NAMES

TRAIN_IMAGES, TEST_IMAGES, BATCH, EPOCHS = 40, 20, 4, 3  # 10 steps an epoch, 30 in all
ON = f"your main() beside the course's, {EPOCHS} epochs of {TRAIN_IMAGES // BATCH} steps (batches of {BATCH}, " \
     f"seed 3, lr 0.01)"


# ---------------------------------------------------------------- running both programs
def workspace(s: Subject) -> Path:
    """A folder for this check's data and records, made once per file checked."""
    if "workspace" not in s.cache:
        s.cache["workspace"] = tempfile.TemporaryDirectory(prefix="check-")
        small_data(Path(s.cache["workspace"].name) / "data", TRAIN_IMAGES, TEST_IMAGES, seed=3)
    return Path(s.cache["workspace"].name)


def program_dtype(s: Subject) -> str:
    """float64, where round-off cannot hide a difference; float32 where autocast needs it (12-13)."""
    return "float32" if hasattr(s.course, "autocast_dtype") else "float64"


def argv_for(s: Subject, *extra: str) -> list[str]:
    folder = workspace(s)
    s.cache["runs"] = s.cache.get("runs", 0) + 1
    options = vars(stage_options(s.course))
    argv = ["--data-dir", str(folder / "data"), "--epochs", str(EPOCHS), "--batch-size", str(BATCH),
            "--lr", "0.01", "--seed", "3", "--threads", "1", "--dtype", program_dtype(s),
            "--out", str(folder / f"records-{s.cache['runs']}")]
    argv += ["--device", "cpu"] * ("device" in options) + ["--dropout", "0.3"] * ("dropout" in options)
    return argv + list(extra)


def compile_watched(program: Program):
    """torch.compile and Module.compile noted, not run: what is compiled, and when, is what the
    lesson is about (the course's tests show that a compiled step computes what the eager one does)."""
    noted = program.extra.setdefault("compiled", [])

    def module_compile(self, *args, **kwargs):
        noted.append(("Module.compile", self))

    def torch_compile(model=None, *args, **kwargs):
        noted.append(("torch.compile", model))
        return model

    @contextmanager
    def watching():
        with mock.patch.object(torch.nn.Module, "compile", module_compile), \
                mock.patch.object(torch, "compile", torch_compile):
            yield
    return watching()


def data_parallel_watched(program: Program):
    noted = program.extra.setdefault("data_parallel", [])
    original = torch.nn.DataParallel.__init__

    def init(self, module, device_ids=None, *args, **kwargs):
        noted.append((module, device_ids))
        original(self, module, device_ids, *args, **kwargs)

    return mock.patch.object(torch.nn.DataParallel, "__init__", init)


def set_epoch_watched(program: Program):
    noted = program.extra.setdefault("set_epoch", [])
    original = DistributedSampler.set_epoch

    def set_epoch(self, epoch):
        noted.append((epoch, len(program.batches)))
        original(self, epoch)

    return mock.patch.object(DistributedSampler, "set_epoch", set_epoch)


def autocast_watched(program: Program):
    """The dtype of every convolution's and linear layer's output, and whether autocast was on,
    at each forward of the Net, in training and in evaluation."""
    noted = program.extra.setdefault("layers", {"training": set(), "evaluating": set()})

    def hook(module, inputs, output):
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and isinstance(output, torch.Tensor):
            noted["evaluating" if program.evaluating else "training"].add(str(output.dtype).removeprefix("torch."))

    @contextmanager
    def watching():
        handle = torch.nn.modules.module.register_module_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()
    return watching()


def no_accelerator(program: Program):
    """Every program here runs on the CPU, as on a machine without an accelerator, so that
    --data-parallel with --device cpu is allowed wherever make check runs."""
    return pretended_machine(None)


WATCHERS = (no_accelerator, compile_watched, data_parallel_watched, set_epoch_watched, autocast_watched)


def course_program(s: Subject, *extra: str, patch=None) -> Program:
    """The course's own main() with these options, run once per check session."""
    key = ("course", extra, patch and patch[0])
    if key not in s.cache:
        with patches(s.course, patch):
            s.cache[key] = run_program(s.course.main, argv_for(s, *extra), WATCHERS)
        expect_ended(s.cache[key], s, "the course's")
    return s.cache[key]


def learner_program(s: Subject, main, *extra: str, patch=None) -> Program:
    with patches(s.module, patch):
        program = run_program(main, argv_for(s, *extra), WATCHERS)
    expect_ended(program, s, "your")
    return program


@contextmanager
def patches(module, patch):
    """A function of the stage replaced while the program runs: (name, replacement) or None."""
    if patch is None:
        yield
        return
    name, replacement = patch
    with mock.patch.object(module, name, replacement):
        yield


def expect_ended(program: Program, s: Subject, whose: str) -> None:
    """The program ran to its end, or what ended it, in the learner's words."""
    if program.error is not None:
        raise program.error  # run_check names it, and the line of the learner's file
    if program.exit is not None:
        frames = traceback.extract_tb(program.exit.__traceback__)
        if frames and Path(frames[-1].filename) == s.path:
            raise program.exit  # the learner's own sys.exit(): run_check says so
        raise Mismatch(f"{whose} main() ended with exit code {program.exit_code}: {program.last_line}")


# ---------------------------------------------------------------- comparing the records
def compare_programs(mine: Program, course: Program, s: Subject, on: str = ON) -> None:
    """Step by step: the same number of steps, the same batches, the same losses, the same test
    accuracy after each epoch and the same final parameters, within the tolerance of the dtype."""
    dtype = program_dtype(s)
    tolerance = TOLERANCES[dtype].rtol
    if len(mine.losses) != len(course.losses):
        raise Mismatch(f"your main() took {len(mine.losses)} steps, the course's {len(course.losses)} (on {on})")
    for i, (a, b) in enumerate(zip(mine.batches, course.batches), 1):
        if a != b:
            epoch = course.epochs[i - 1]
            raise Mismatch(f"from step {i} (epoch {epoch}) on, your main() trains on other batches than the "
                           "course's: the data order is not the course's",
                           f"step {i}'s batch sums to {a[1]:.6g}, the course's to {b[1]:.6g} (on {on})")
    for i, (a, b) in enumerate(zip(mine.losses, course.losses), 1):
        if not relative_error(a, b) <= tolerance:
            raise Mismatch(f"your main() computes another loss from step {i} on, on the same batches as the "
                           "course's: what main() builds or passes to the loop is not the course's",
                           f"the loss of step {i} is {a:.10g}, the course's {b:.10g} (relative difference "
                           f"{relative_error(a, b):.1e}, tolerance {tolerance:.0e}, {dtype}; on {on})")
    for epoch, (a, b) in enumerate(zip(mine.accuracies, course.accuracies), 1):
        if abs(a - b) > 1e-9:
            raise Mismatch(f"after epoch {epoch} your main() reports a test accuracy of {100 * a:.1f}%, the "
                           f"course's {100 * b:.1f}%, after the same training: what main() evaluates, or how, "
                           f"is not the course's (on {on})")
    if len(mine.accuracies) != len(course.accuracies):
        raise Mismatch(f"your main() evaluated {len(mine.accuracies)} times in {EPOCHS} epochs, the course's "
                       f"{len(course.accuracies)} times (on {on})")
    compare_saved(mine, course, dtype, on)


def compare_saved(mine: Program, course: Program, dtype: str, on: str, values: bool = True) -> None:
    if mine.params is None:
        raise Mismatch(f"your main() saved no parameters (run.save_params) (on {on})")
    if set(mine.params) != set(course.params):
        prefixed = sorted(n for n in mine.params if n not in course.params)
        raise Mismatch(f"your main() saved the parameters under the names {prefixed[:2]}..., the course's under "
                       f"{list(PARAM_NAMES[:2])}...: save the Net itself (raw_model), not the wrapper around it, "
                       "so that the weights load into a plain Net")
    for name in PARAM_NAMES if values else ():
        error = relative_error(mine.params[name], course.params[name])
        if not error <= TOLERANCES[dtype].rtol:
            raise Mismatch("your main() saved other final parameters than the course's after the same losses",
                           f"{name} differs by {error:.1e} relative (tolerance {TOLERANCES[dtype].rtol:.0e}, "
                           f"{dtype}; on {on})")


# ---------------------------------------------------------------- the checks
@once
def check_program(s: Subject, dtype: str) -> None:
    """Your whole file: main() as you wrote it, beside the course's."""
    compare_programs(learner_program(s, s.module.main), course_program(s), s)


def loop_models(program: Program) -> list:
    return [call.get("model") for call in program.calls["train_one_epoch"]]


@once
def check_main_wrap(s: Subject, dtype: str) -> None:
    """Stage 10: with --data-parallel the loop gets nn.DataParallel(the Net, device_ids=...), the
    Net is what is saved; without it, the plain Net."""
    main = main_with_course_lines(s)
    course, mine = course_program(s, "--data-parallel"), learner_program(s, main, "--data-parallel")
    models = loop_models(mine)
    if not models or not all(isinstance(m, torch.nn.DataParallel) for m in models):
        made = mine.extra.get("data_parallel")
        raise Mismatch(("nn.DataParallel(...) was made but the loop got the plain model: assign it, "
                        "model = nn.DataParallel(model, device_ids=...)") if made else
                       f"with --data-parallel the loop got a {type(models[0]).__name__ if models else 'nothing'}, "
                       "not nn.DataParallel(model, device_ids=gpus_starting_at(device))")
    expected_ids = course.extra["data_parallel"][0][1]
    given = mine.extra["data_parallel"][0][1]
    if given is None or list(given) != list(expected_ids):
        raise Mismatch(f"nn.DataParallel was given device_ids={given!r}, expected gpus_starting_at(device) = "
                       f"{list(expected_ids)}: DataParallel gathers on device_ids[0], which must be the model's "
                       "own GPU")
    compare_saved(mine, course, program_dtype(s), ON + ", --data-parallel", values=False)
    plain = learner_program(s, main)
    if any(isinstance(m, torch.nn.DataParallel) for m in loop_models(plain)):
        raise Mismatch("without --data-parallel, on a machine with one GPU or none, your main() still wrapped "
                       "the model: wrap only when data_parallel")
    compare_saved(plain, course_program(s), program_dtype(s), ON, values=False)


@once
def check_main_ddp_wrap(s: Subject, dtype: str) -> None:
    """Stage 11: the loop gets DistributedDataParallel(the Net); the Net is what is saved."""
    from torch.nn.parallel import DistributedDataParallel

    mine = learner_program(s, main_with_course_lines(s))
    models = loop_models(mine)
    if not models or not all(isinstance(m, DistributedDataParallel) for m in models):
        got = type(models[0]).__name__ if models else "nothing"
        raise Mismatch(f"the loop got a {got}, not DistributedDataParallel(model, ...): wrap the model (and "
                       "assign it) after .to(device), so that backward() averages the gradients of the processes")
    compare_saved(mine, course_program(s), program_dtype(s), ON, values=False)


@once
def check_main_sampler_epoch(s: Subject, dtype: str) -> None:
    """Stage 11: sampler.set_epoch(epoch) before each epoch's batches, three epochs compared."""
    mine = learner_program(s, main_with_course_lines(s))
    course = course_program(s)
    calls = mine.extra.get("set_epoch", [])
    per_epoch = TRAIN_IMAGES // BATCH
    first, second = mine.batches[:per_epoch], mine.batches[per_epoch:2 * per_epoch]
    if not calls or first == second:
        said = "never called" if not calls else f"called with {[epoch for epoch, _ in calls]}"
        raise Mismatch(f"sampler.set_epoch was {said}: every epoch drew epoch 1's order again (epoch 2's "
                       f"{per_epoch} batches are epoch 1's); call sampler.set_epoch(epoch) at the start of each "
                       "epoch", gallery="sampler-epoch-never-set")
    expected = [(epoch, drawn) for epoch, drawn in course.extra["set_epoch"]]
    if calls != expected:
        raise Mismatch(f"sampler.set_epoch was called as (epoch, batches drawn before it) {calls}, the course's "
                       f"{expected}: call it with the epoch's number, before the epoch's first batch")
    if mine.batches != course.batches:
        step = next(i for i, (a, b) in enumerate(zip(mine.batches, course.batches), 1) if a != b)
        raise Mismatch(f"from step {step} on your main() trains on other batches than the course's, though "
                       "sampler.set_epoch is called as the course calls it")


@once
def check_main_autocast(s: Subject, dtype: str) -> None:
    """Stage 12: --amp on (bfloat16 on the CPU), --amp off, float64, and float16 as on a GPU
    without bfloat16 (autocast_dtype pretended): the layers' dtypes, the scaler, the records."""
    main = main_with_course_lines(s)
    float16 = ("autocast_dtype", lambda device: torch.float16)
    cases = (((), None, "bfloat16", False, "--amp on"), (("--amp", "off"), None, "float32", False, "--amp off"),
             ((), float16, "float16", True, "--amp on, as on a GPU without bfloat16"))
    for extra, patch, layers, scaled, said in cases:
        mine, course = learner_program(s, main, *extra, patch=patch), course_program(s, *extra, patch=patch)
        for phase in ("training", "evaluating"):
            seen = mine.extra["layers"][phase]
            if seen != {layers}:
                raise Mismatch(f"with {said}, the layers computed in {sorted(seen)} while {phase}, expected "
                               f"{layers}: autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp)"
                               ", with use_amp = args.amp == 'on' and args.dtype == 'float32'")
        scalers = [call.get("scaler") for call in mine.calls["train_one_epoch"]]
        if not scalers or any(not isinstance(sc, torch.amp.GradScaler) or sc.is_enabled() != scaled
                              for sc in scalers):
            state = "a GradScaler that acts" if scaled else "a GradScaler that does nothing"
            raise Mismatch(f"with {said} the loop needs {state}: scaler = torch.amp.GradScaler(device.type, "
                           "enabled=use_amp and amp_dtype == torch.float16), since only float16 needs the loss "
                           "scaled")
        compare_programs(mine, course, s, f"{ON}, {said}")
    mine = learner_program(s, main, "--dtype", "float64")
    if any(dtype != "float64" for dtype in mine.extra["layers"]["training"] | mine.extra["layers"]["evaluating"]):
        raise Mismatch("with --dtype float64 the layers did not all compute in float64: a float64 run never "
                       "autocasts (use_amp is False)")


@once
def check_main_compile(s: Subject, dtype: str) -> None:
    """Stage 13: --compile on compiles the Net, in place, before the wrap; --compile off, and a
    machine where can_compile says no, compile nothing. (Compiles are watched, not run.)"""
    main = main_with_course_lines(s)
    mine, course = learner_program(s, main), course_program(s)
    wrapped = [call.get("model") for call in mine.calls["train_one_epoch"]]
    compiled = mine.extra.get("compiled", [])
    if any(kind == "torch.compile" for kind, _ in compiled):
        raise Mismatch("torch.compile(model) returns a new module wrapped around the Net (its saved names would "
                       "begin with _orig_mod.): the lesson's line is model.compile(), which compiles the Net in "
                       "place")
    expected = len(course.extra.get("compiled", []))
    if len(compiled) != expected:
        raise Mismatch(f"with --compile on, your main() compiled {len(compiled)} time(s), the course's {expected} "
                       "(once, when can_compile(device) says a compile can run here)")
    if compiled:
        target = compiled[0][1]
        inner = getattr(wrapped[0], "module", None) if wrapped else None
        if isinstance(target, torch.nn.parallel.DistributedDataParallel) or target is not inner:
            raise Mismatch("model.compile() was called on the DistributedDataParallel wrapper, or on something "
                           "the loop does not use: compile the Net itself, before the wrap, as PyTorch's "
                           "documentation advises")
    for extra, patch, said in ((("--compile", "off"), None, "--compile off"),
                               ((), ("can_compile", lambda device: False), "no C++ compiler (can_compile False)")):
        mine = learner_program(s, main, *extra, patch=patch)
        if mine.extra.get("compiled"):
            raise Mismatch(f"with {said} your main() still compiled the model: compile only when args.compile is "
                           "'on' and can_compile(device)")
