"""The command-line options every stage shares, with the tutorial's defaults.

Each value is checked here, before anything runs; a bad one stops the stage with one line that
names the nearest option where one was misspelt, and exit code 2 (common/errors.py).
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from pathlib import Path

import numpy as np

from common.data import SOURCES
from common.errors import BAD_INPUT, printable

DTYPES = ("float32", "float64")
MAX_SEED = 2**32 - 1  # numpy's legacy np.random.seed() takes seeds in [0, 2**32)
MAX_THREADS = 256
# One thread: this network is small, so a second thread gains little on an idle machine, and
# beside a busy program two threads wait for each other (docs/running.md, Threads).
DEFAULT_THREADS = 1


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (the usage is one `--help` away) and name the nearest
    option or choice to a misspelt one (argparse's own suggest_on_error is Python 3.14's)."""

    def error(self, message: str) -> None:
        nearest = self._nearest(message)
        self.exit(BAD_INPUT, f"{self.prog}: error: {printable(message)}{nearest} (see --help)\n")

    def _nearest(self, message: str) -> str:
        if message.startswith("unrecognized arguments: "):
            words = message.split(": ", 1)[1].split()
            typed = [word.split("=")[0] for word in words if word.startswith("-")]
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


def number(kind, low=None, high=None, *, above=None, below=None):
    """An option's type: a number of `kind` (int or float) from `low` to `high`, or strictly
    `above` or `below` a bound (None: no bound)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        inside = (low is None or value >= low) and (high is None or value <= high) \
            and (above is None or value > above) and (below is None or value < below)
        if not inside or value != value or abs(value) == float("inf"):
            bounds = [f"{words} {bound}" for words, bound in (("at least", low), ("at most", high),
                      ("above", above), ("below", below)) if bound is not None]
            raise argparse.ArgumentTypeError(f"must be {' and '.join(bounds)}, got {text}")
        return value
    return parse


positive_int, non_negative_int = number(int, 1), number(int, 0)
positive_float = number(float, above=0)
batch_size = number(int, 1, sys.maxsize)  # DataLoader's BatchSampler takes no more
seed = number(int, 0, MAX_SEED)
probability = number(float, 0, below=1)


def device_name(text: str) -> str:
    """auto, cpu, or this machine's accelerator (cuda, mps, xpu, ...), perhaps with :N."""
    import torch

    try:
        device = torch.device(text) if text != "auto" else None
    except RuntimeError:
        raise argparse.ArgumentTypeError("must be auto, cpu or an accelerator such as cuda, "
                                         f"cuda:1 or mps, got {text!r}") from None
    if device is None or device.type == "cpu":
        return text
    here = torch.accelerator.current_accelerator(check_available=True)
    if here is None or here.type != device.type:
        has = f"its accelerator is {here.type}" if here is not None else "it has no accelerator"
        raise argparse.ArgumentTypeError(f"{text}: no such device on this machine ({has}); use "
                                         "--device auto or cpu")
    if (device.index or 0) >= torch.accelerator.device_count():
        visible = torch.accelerator.device_count()
        raise argparse.ArgumentTypeError(f"{text}: no such {device.type} device here ({visible} "
                                         "visible); use --device auto or cpu")
    return text


GROUP_DEVICES = "cuda (nccl), xpu (xccl) or cpu (gloo)"  # where a process group can all-reduce


def process_device_name(text: str) -> str:
    """device_name(), for a process group (checked again once auto is known: check_together)."""
    kind = device_name(text).partition(":")[0]
    if kind not in ("auto", "cpu", "cuda", "xpu"):
        raise argparse.ArgumentTypeError(f"{text}: a process group all-reduces on "
                                         f"{GROUP_DEVICES}, not on {kind}; use --device cpu")
    return text


def build_parser(stage_file: str, description: str | None) -> OneLineParser:
    """The shared options; a stage adds its own (--device, ...) in its add_options(parser)."""
    stem = Path(stage_file).stem
    first_line = (description or "").strip().splitlines()[0] if description else None
    where = f"\nWhat changed, and why: the top of stages/{stem}.py and docs/stages/{stem}.md."
    parser = OneLineParser(prog=f"python -m stages.{stem}", usage="%(prog)s [options]",
                           description=first_line and first_line + where,
                           epilog="Exit codes: 0 done, 2 bad input, 3 diverged, 4 a write failed "
                                  "(disk full), 5 out of memory, 6 another process failed, 130 "
                                  "interrupted, 141 stdout's reader went away.",
                           formatter_class=HelpFormatter)
    add = parser.add_argument
    add("--epochs", type=positive_int, default=2, help="passes over the training set")
    add("--batch-size", type=batch_size, default=4, help="images per training step")
    add("--lr", type=positive_float, default=0.001, help="learning rate")
    add("--momentum", type=probability, default=0.9, help="SGD momentum (below 1, so it decays)")
    add("--seed", type=seed, default=0, help="seed of weights, data order, synthetic set, dropout")
    add("--dtype", choices=DTYPES, default="float32", help="floating-point precision")
    add("--data", choices=SOURCES, default="auto", help="auto: --data-dir, ./data, else synthetic")
    add("--data-dir", default=None, metavar="DIR", help="a torchvision CIFAR-10 root or .npy files")
    add("--max-steps", type=positive_int, default=None, metavar="N", help="stop after N steps")
    add("--out", default="runs", metavar="DIR", help="folder of the run records")
    add("--threads", type=number(int, 1, MAX_THREADS), default=DEFAULT_THREADS,
        help="CPU threads for torch's and numpy's maths")
    add("--verbose", action="store_true", help="the technical detail behind the data line, too")
    return parser


def parse_args(stage_file: str, description: str | None, argv=None,
               add_options=None) -> argparse.Namespace:
    """A stage's first line: `args = parse_args(__file__, __doc__, argv)`."""
    parser = build_parser(stage_file, description)
    if add_options is not None:
        add_options(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    check_together(parser, args)
    return args


def check_together(parser: OneLineParser, args: argparse.Namespace) -> None:
    """What no single option can check alone."""
    for name in ("lr", "momentum"):
        if getattr(args, name) > float(np.finfo(args.dtype).max):  # torch could not pass it on
            parser.error(f"argument --{name}: {getattr(args, name)} does not fit in {args.dtype}")
    if getattr(args, "device", None) is None:
        return
    import torch

    kind = args.device.partition(":")[0]
    here = torch.accelerator.current_accelerator(check_available=True)
    if kind == "auto":
        kind = here.type if here is not None else "cpu"
    joins_a_group = any(action.type is process_device_name for action in parser._actions)
    if joins_a_group and kind not in ("cpu", "cuda", "xpu"):
        parser.error(f"argument --device: {args.device} is {kind} here, and a process group "
                     f"all-reduces on {GROUP_DEVICES}; use --device cpu")
    if kind == "mps" and args.dtype == "float64":
        parser.error("argument --dtype: mps has no float64; use --dtype float32, or --device cpu")
    not_cuda = kind not in ("cuda", "cpu") or kind == "cpu" and here is not None
    if getattr(args, "data_parallel", False) and not_cuda:
        parser.error(f"argument --data-parallel: DataParallel splits batches over CUDA GPUs, and "
                     f"--device {args.device} is {kind} (drop --data-parallel)")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))  # under torchrun: one device per process
    no_device_of_its_own = local_rank >= torch.accelerator.device_count()
    if kind != "cpu" and ":" not in args.device and no_device_of_its_own:
        parser.error(f"argument --device: this is process LOCAL_RANK={local_rank}, but only "
                     f"{torch.accelerator.device_count()} {kind} device(s) are visible: start at "
                     "most that many processes per machine, or use --device cpu")
