"""The command-line options every stage shares, with the tutorial's defaults.

Every value that can be checked alone is checked here, against what the libraries accept,
before anything runs; the data folder, --out, --checkpoint and --resume are checked where
they are first used, still before the first step. A bad one stops the run with one line and
exit code 2.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from common.data import SOURCES
from common.errors import BAD_INPUT, INTERRUPTED, printable
from common.run import rendezvous, signals

DTYPES = ("float32", "float64")
MAX_SEED = 2**32 - 1  # numpy's legacy np.random.seed() takes seeds in [0, 2**32)
MAX_THREADS = 256
MAX_BATCH_SIZE = sys.maxsize  # DataLoader's BatchSampler cuts batches with itertools.islice, which takes no more


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is a single line (the usage is one `--help` away), and a misspelt
    option or choice names the nearest one (what argparse's suggest_on_error does from Python 3.14)."""

    def error(self, message: str) -> None:
        self.exit(BAD_INPUT, f"{self.prog}: error: {printable(message)}{self._nearest(message)} (see --help)\n")

    def _nearest(self, message: str) -> str:
        """"; did you mean --batch-size?" for an option or a choice close to one the parser knows."""
        if message.startswith("unrecognized arguments: "):
            typed = [word.split("=")[0] for word in message.split(": ", 1)[1].split() if word.startswith("-")]
            known = [option for option in self._option_string_actions if option.startswith("--")]
        else:
            choice = re.search(r"invalid choice: '(.*?)' \(choose from (.*)\)$", message)
            if choice is None:
                return ""
            typed, known = [choice[1]], [c.strip().strip("'") for c in choice[2].split(",")]
        for word in typed:
            close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
            if close:
                return f"; did you mean {close[0] if close[0].startswith('-') else repr(close[0])}?"
        return ""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the description's line breaks and add "(default: X)" to every option that has one."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    value = _number(int, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def batch_size(text: str) -> int:
    value = positive_int(text)
    if value > MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"must be a positive integer up to {MAX_BATCH_SIZE}, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def seed(text: str) -> int:
    value = _number(int, text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {MAX_SEED} (numpy's range), got {text}")
    return value


def probability(text: str) -> float:
    value = _number(float, text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(float, text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(float, text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def threads(text: str) -> str | int:
    if text == "auto":
        return text
    value = _number(int, text)
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be auto or a whole number from 1 to {MAX_THREADS}, got {text}")
    return value


def file_path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a file, got an empty path")
    return text


def device_name(text: str) -> str:
    """auto, cpu, or this machine's accelerator (cuda, mps, xpu, ...), perhaps with :N: one that is here."""
    import torch

    try:
        device = torch.device(text) if text != "auto" else None
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"must be auto, cpu or an accelerator such as cuda, cuda:1 or mps, "
                                         f"got {text!r}") from None
    if device is None or device.type == "cpu":
        return text
    here = torch.accelerator.current_accelerator(check_available=True)
    if here is None or here.type != device.type:
        has = f"its accelerator is {here.type}" if here is not None else "it has no accelerator"
        raise argparse.ArgumentTypeError(f"{text}: no such device on this machine ({has}); use --device auto or cpu")
    if (device.index or 0) >= torch.accelerator.device_count():
        raise argparse.ArgumentTypeError(f"{text}: no such {device.type} device here "
                                         f"({torch.accelerator.device_count()} visible); use --device auto or cpu")
    return text


def process_device_name(text: str) -> str:
    """device_name(), for a process group: its backends all-reduce on cuda (nccl) or the cpu (gloo) only."""
    text = device_name(text)
    kind = text.partition(":")[0]
    if kind not in ("auto", "cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text}: a process group all-reduces on cuda (nccl) or cpu (gloo), "
                                         f"not on {kind}; use --device cpu")
    return text


def device_kind(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The kind of device --device names, auto resolved as the stage resolves it: the machine's
    accelerator, or for a process group (stage 11) cuda if there is one; None without --device."""
    if getattr(args, "device", None) is None:
        return None
    kind = args.device.partition(":")[0]
    if kind != "auto":
        return kind
    import torch

    if any(a.type is process_device_name for a in parser._actions):
        return "cuda" if torch.cuda.is_available() else "cpu"
    here = torch.accelerator.current_accelerator(check_available=True)
    return here.type if here is not None else "cpu"


def _number(kind: Callable, text: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def build_parser(stage_file: str, description: str | None) -> OneLineParser:
    """The shared options; a stage adds its own (e.g. --device) to the parser this returns."""
    stem = Path(stage_file).stem
    first_line = (description or "").strip().splitlines()[0] if description else None
    parser = OneLineParser(prog=f"python -m stages.{stem}", usage="%(prog)s [options]",
                           description=first_line and f"{first_line}\nWhat changed, and why: the top of "
                                                      f"stages/{stem}.py and docs/stages/{stem}.md.",
                           epilog="Exit codes: 0 done, 2 bad input, 3 diverged, 4 a write failed "
                                  "(disk full), 5 out of memory, 130 interrupted (common/errors.py).",
                           formatter_class=HelpFormatter)
    add = parser.add_argument
    add("--epochs", type=positive_int, default=2, help="passes over the training set")
    add("--batch-size", type=batch_size, default=4, help="images per training step")
    add("--lr", type=positive_float, default=0.001, help="learning rate")
    add("--momentum", type=non_negative_float, default=0.9, help="SGD momentum")
    add("--seed", type=seed, default=0, help="seed of the weights, data order, synthetic data, dropout")
    add("--dtype", choices=DTYPES, default="float32", help="floating-point precision")
    add("--data", choices=SOURCES, default="auto", help="auto: --data-dir, else ./data, else synthetic")
    add("--data-dir", default=None, metavar="DIR", help="a torchvision CIFAR-10 root or a folder of .npy files")
    add("--max-steps", type=positive_int, default=None, metavar="N", help="stop after N steps (a quick try)")
    add("--out", default="runs", metavar="DIR", help="folder of the run records")
    add("--checkpoint", type=file_path, default=None, metavar="PATH", help="save the run's state after each epoch")
    add("--resume", type=file_path, default=None, metavar="PATH", help="continue the run saved in PATH")
    add("--threads", type=threads, default="auto", help="CPU threads: auto (docs/running.md) or a number")
    add("--verbose", action="store_true", help="the technical detail behind the data line, too")
    return parser


def parse_args(stage_file: str, description: str | None, argv: Sequence[str] | None = None,
               add_options: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """A stage's first line: `args = parse_args(__file__, __doc__, argv)`. From here on, Ctrl-C,
    SIGTERM and SIGHUP stop the run between two steps (common/run/signals.py), not in the middle
    of one; one that came while the stage was still starting (importing torch) ends it here."""
    stage = Path(stage_file).stem
    if getattr(sys.modules.get("__main__"), "__file__", None) == stage_file:  # the program itself, not a test's
        signals.guard_program("stage", stage)  # run as a file: stages/__init__.py did not (python -m does)
    signals.defer()
    if signals.pending() is not None:
        signals.ending(INTERRUPTED)
        signals.say(f"{stage}: {signals.starting_message()}")
        raise SystemExit(INTERRUPTED)
    try:
        return parse_only(stage_file, description, argv, add_options)
    except BaseException:
        signals.restore()
        raise


def parse_only(stage_file: str, description: str | None, argv: Sequence[str] | None = None,
               add_options: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The options as parse_args() reads them, with no change to signal handling (for tools)."""
    parser = build_parser(stage_file, description)
    if add_options is not None:
        add_options(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    _check_together(parser, args)
    return args


def _check_together(parser: OneLineParser, args: argparse.Namespace) -> None:
    """What no single option can check alone, and the distributed environment of a stage that
    joins a process group (common/run/rendezvous.py)."""
    joins_a_group = any(a.type is process_device_name for a in parser._actions)
    rendezvous.expect_group(joins_a_group)
    problem = rendezvous.check_environment() if joins_a_group else None
    if problem is not None:
        parser.exit(BAD_INPUT, f"{parser.prog}: error: the distributed environment: {printable(problem)}\n")
    largest = float(np.finfo(args.dtype).max)
    for name in ("lr", "momentum"):
        if getattr(args, name) > largest:  # torch cannot even pass such a factor to a float32 kernel
            parser.error(f"argument --{name}: {getattr(args, name)} does not fit in {args.dtype}")
    kind = device_kind(parser, args)
    if kind == "mps" and args.dtype == "float64":
        parser.error(f"argument --dtype: mps has no float64 (--device {args.device} is mps here); "
                     "use --dtype float32, or --device cpu")
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is not None and kind == "cuda" and args.device in ("auto", "cuda"):  # under torchrun: stage 11
        import torch

        visible = torch.cuda.device_count()
        if int(local_rank) >= visible:
            parser.error(f"argument --device: {args.device} means cuda:LOCAL_RANK, and this is process "
                         f"LOCAL_RANK={local_rank} but only {visible} GPU(s) are visible: start at most {visible} "
                         "process(es) per machine, or use --device cpu")
    if getattr(args, "data_parallel", False) and kind not in ("cuda", "cpu"):
        parser.error(f"argument --data-parallel: DataParallel splits batches over CUDA GPUs; on {kind} "
                     "it would only call the model (drop --data-parallel)")
    if getattr(args, "data_parallel", False) and kind == "cpu":
        import torch

        if torch.cuda.is_available():
            parser.error("argument --data-parallel: DataParallel splits batches over GPUs; "
                         "with --device cpu there is nothing to split (drop one of the two)")
