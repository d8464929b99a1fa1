"""The command-line options every stage shares, with the tutorial's defaults.

Bad values are rejected by argparse with one line and exit code 2, before anything runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from common.data import SOURCES
from common.errors import BAD_INPUT

DTYPES = ("float32", "float64")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is a single line (the usage is one `--help` away)."""

    def error(self, message: str) -> None:
        self.exit(BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the stage docstring's line breaks and add "(default: X)" to every option."""


def positive_int(text: str) -> int:
    value = _number(int, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def probability(text: str) -> float:
    value = _number(float, text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def device_name(text: str) -> str:
    """auto, cpu, cuda or cuda:N; whether that device exists is for the stage to find out."""
    kind, _, index = text.partition(":")
    if text in ("auto", "cpu", "cuda") or (kind == "cuda" and index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")


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


def _number(kind: Callable, text: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def build_parser(stage_file: str, description: str | None) -> OneLineParser:
    """The shared options; a stage adds its own (e.g. --device) to the parser this returns."""
    parser = OneLineParser(prog=f"python -m stages.{Path(stage_file).stem}", description=description,
                           epilog="Bad values stop the run with one line and exit code 2.",
                           formatter_class=HelpFormatter)
    add = parser.add_argument
    add("--epochs", type=positive_int, default=2, help="passes over the training set")
    add("--batch-size", type=positive_int, default=4, help="images per training step")
    add("--lr", type=positive_float, default=0.001, help="learning rate")
    add("--momentum", type=non_negative_float, default=0.9, help="SGD momentum")
    add("--seed", type=int, default=0, help="seed for weights, data order and synthetic data")
    add("--dtype", choices=DTYPES, default="float32", help="floating-point precision")
    add("--data", choices=SOURCES, default="auto",
        help="data source: auto = --data-dir, else ./data (downloading), else synthetic")
    add("--data-dir", default=None, help="a torchvision CIFAR-10 root or a folder of .npy files")
    add("--max-steps", type=positive_int, default=None,
        help="stop after this many training steps in all (a quick smoke run)")
    add("--out", default="runs", help="folder for run records (options, losses, accuracy, plot)")
    return parser


def parse_args(stage_file: str, description: str | None, argv: Sequence[str] | None = None,
               add_options: Callable[[argparse.ArgumentParser], None] | None = None,
               checkpoints: bool = False) -> argparse.Namespace:
    """Parse a stage's options: `parse_args(__file__, __doc__, argv)`; `checkpoints` adds
    --checkpoint and --resume, for the stages that save their state_dict (6 onward)."""
    parser = build_parser(stage_file, description)
    if checkpoints:
        parser.add_argument("--checkpoint", default=None, metavar="PATH",
                            help="save model, optimizer, RNG and data order here after every epoch and on Ctrl-C")
        parser.add_argument("--resume", default=None, metavar="PATH", help="continue the run saved in this checkpoint")
    if add_options is not None:
        add_options(parser)
    return parser.parse_args(sys.argv[1:] if argv is None else list(argv))
