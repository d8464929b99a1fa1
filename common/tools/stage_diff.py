"""`make diff FROM=a TO=b`: the lesson between two stages, in the terminal.

First the later stage's docstring, once: it says what changed since the stage before, and why.
Then the unified diff of the code below the two docstrings, with the files' own line numbers:
the old and the new docstring are not diffed against each other, since every line of them
differs and none of it is code (in 5 -> 6 they were 54 of the diff's 136 lines). `--full`
gives the plain diff of the two files, docstrings included.

Run: python -m common.tools.stage_diff FROM TO [--full]
"""
from __future__ import annotations

import argparse
import ast
import difflib
import os
import re
import sys
from pathlib import Path

from common.cli import OneLineParser
from common.harness import stage_file, stage_files

HUNK = re.compile(r"^@@ -(\d+)(,\d+)? \+(\d+)(,\d+)? @@")
COLOURS = {"+": "\033[32m", "-": "\033[31m", "@": "\033[36m"}  # added green, removed red, hunks cyan
RESET = "\033[0m"


def docstring_and_end(source: str) -> tuple[str, int]:
    """The module docstring and the number of its last line (0 when there is none)."""
    tree = ast.parse(source)
    text = ast.get_docstring(tree) or ""
    return text, (tree.body[0].end_lineno if text else 0)


def shown(path: Path) -> str:
    """The path as the learner typed it, from the course's folder: stages/stage06_optim.py."""
    return Path(os.path.relpath(path)).as_posix()


def unified(old: Path, new: Path, full: bool = False) -> list[str]:
    """The diff's lines: of the code below the docstrings, numbered as in the files; or, `full`,
    of the whole files."""
    old_source, new_source = old.read_text(), new.read_text()
    old_end = 0 if full else docstring_and_end(old_source)[1]
    new_end = 0 if full else docstring_and_end(new_source)[1]
    a, b = old_source.splitlines()[old_end:], new_source.splitlines()[new_end:]
    lines = difflib.unified_diff(a, b, fromfile=f"a/{shown(old)}", tofile=f"b/{shown(new)}", lineterm="")
    return [renumbered(line, old_end, new_end) for line in lines]


def renumbered(line: str, old_offset: int, new_offset: int) -> str:
    """A hunk header counted from the first line below the docstring, counted from the file's top."""
    match = HUNK.match(line)
    if match is None:
        return line
    old_start, old_len, new_start, new_len = match.groups()
    return (f"@@ -{int(old_start) + old_offset}{old_len or ''} +{int(new_start) + new_offset}{new_len or ''} @@"
            + line[match.end():])


def lesson(old: Path, new: Path, full: bool = False) -> str:
    """What `make diff` prints: the later docstring, then the diff of the code (or of the files)."""
    diff = unified(old, new, full)
    if full:
        return "\n".join(diff) if diff else f"{shown(old)} and {shown(new)} are the same"
    docstring, _ = docstring_and_end(new.read_text())
    head = [f"{shown(new)}, its docstring (what changed, and why):", "", *docstring.splitlines(), ""]
    if not diff:
        return "\n".join(head + [f"the code below the docstrings of {shown(old)} and {shown(new)} is the same"])
    return "\n".join(head + [f"its code against {shown(old)}, below the two docstrings (ARGS=--full: the "
                             "whole files):", "", *diff])


def coloured(text: str) -> str:
    """The diff's lines in git's colours, for a terminal; the file names and the docstring stay plain."""
    out = []
    for line in text.split("\n"):
        colour = None if line.startswith(("+++", "---")) else COLOURS.get(line[:1])
        out.append(f"{colour}{line}{RESET}" if colour else line)
    return "\n".join(out)


def wants_colour(stream) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def stage(parser: argparse.ArgumentParser, text: str) -> Path:
    found = stage_file(int(text)) if text.isdigit() else None
    if found is None:
        parser.error(f"no stage {text!r}: the stages are 1 to {len(stage_files())}")
    return found


def main(argv=None) -> str:
    parser = OneLineParser(prog="python -m common.tools.stage_diff", description=__doc__.splitlines()[0])
    parser.add_argument("old", metavar="FROM", help="the earlier stage's number")
    parser.add_argument("new", metavar="TO", help="the later stage's number")
    parser.add_argument("--full", action="store_true", help="the plain diff of the two files, docstrings included")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    text = lesson(stage(parser, args.old), stage(parser, args.new), args.full)
    say(text)
    return text


def say(text: str) -> None:
    """Print the lesson, coloured in a terminal; a reader that stops early (`| head`) is no error."""
    try:
        print(coloured(text) if wants_colour(sys.stdout) else text, flush=True)
    except BrokenPipeError:  # as Python's documentation advises: no second error when the interpreter flushes
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
