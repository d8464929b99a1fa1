"""The course as a static web site, from the stage files and the run records in runs/.

An index (the stage table, how to run the course, what each page holds) and a page per stage
with its docstring, the side-by-side diff of its code from the previous stage, and its figure.
No server needed: open site/index.html from disk.

The diff shows each stage's docstring once, in the box at the top, and below it only the code:
removed lines red on the left, added lines green on the right, and within a changed line the
changed words marked darker. Long lines wrap at spaces, never inside a word (a word wider than
its cell scrolls sideways).

The stage figures come from the last *full* course run (runs/course-summary.json, written by
`make run`: every stage, no --max-steps), whatever ran after it: a smoke or partial run writes
its own course-summary-*.json and leaves the full run's alone. Without a full run the pages say how to
make one. The figures of `make compare` and `make gradcheck` are shown when they exist.

Run: python -m common.tools.site [--out site] [--runs runs]
"""
from __future__ import annotations

import argparse
import ast
import difflib
import html
import itertools
import json
import re
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer
from pygments.token import STANDARD_TYPES

from common.cli import OneLineParser
from common.errors import BAD_INPUT
from common.harness import stage_files
from common.run.program import run_program

CONTEXT = 3  # unchanged lines shown around each change; longer unchanged runs are folded
SIMILAR = 0.5  # two lines at least this alike (difflib's ratio) are one line changed, not two
MAX_PAIRING = 400  # above this many line pairs in one changed block, pair lines in order (cost)
MAX_HANG = 20  # a wrapped line continues 4 columns right of its indentation, or of this many columns

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1400px; padding: 0 1rem; color: #222; }
a { color: #0b5cad; } nav { margin-bottom: 1rem; }
table.stages, table.commands { border-collapse: collapse; } table.commands code { white-space: nowrap; }
table.stages td, table.stages th, table.commands td, table.commands th { padding: .3rem .8rem; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
pre.doc { background: #f6f8fa; padding: 1rem; border-radius: 6px; white-space: pre-wrap; }
table.diff { border-collapse: collapse; width: 100%; table-layout: fixed; font-family: ui-monospace, monospace; font-size: 12px; }
table.diff td { vertical-align: top; padding: 0 .4rem; }
/* wrap long lines at spaces only (each run of non-spaces is one unbreakable .word); a continuation
   starts 4 columns right of its line's indentation: the first line is pulled back by as much */
table.diff td.code { white-space: pre-wrap; padding-left: calc(.4rem + var(--indent, 0ch) + 4ch);
                     text-indent: calc(-1 * (var(--indent, 0ch) + 4ch)); overflow-x: auto; }
table.diff .word { white-space: nowrap; }
table.diff col.num { width: 3.5rem; } table.diff td.num { color: #999; text-align: right; user-select: none; }
td.removed { background: #ffebe9; } td.added { background: #e6ffec; } td.empty { background: #fafafa; }
td.removed mark { background: #ffc1bd; color: inherit; } td.added mark { background: #abf2bc; color: inherit; }
tr.fold td { background: #eef3fb; color: #557; text-align: center; font-style: italic; }
figure { margin: 1rem 0; } figcaption { color: #444; font-size: .9rem; }
img { max-width: 100%; border: 1px solid #ddd; margin: .5rem 0; }
p.missing { background: #fff8e1; padding: .6rem 1rem; border-radius: 6px; }
"""

COMMANDS = [  # (command, what it does) for the index page; every one is a Makefile target
    ("make run", "every stage, one epoch each, in order (\u201cstage 3 of 11\u201d), then a summary table and "
                 "runs/course-summary.png; the stage pages show the figures of this full run"),
    ("make run STAGE=3", "one stage; its summary is runs/course-summary-stages-3.png and the pages keep the full run's"),
    ("make smoke", "every stage for 20 steps on synthetic data: a quick check that all of them run "
                   "(runs/course-summary-smoke.png; the pages keep the full run's figures)"),
    ("make test", "the test suite: every stage computes what the one before it computes, and what PyTorch does"),
    ("make diff FROM=2 TO=3", "the lesson between two stages as a unified diff in the terminal"),
    ("make compare", "every stage trained on the same batches and compared with stage 1 (runs/compare/)"),
    ("make gradcheck", "finite differences against stage 1's hand-written gradients (runs/gradcheck/)"),
    ("make site", "this site, from the stage files and runs/; open site/index.html"),
]


# ---------------------------------------------------------------- reading the stages
def docstring_and_end(source: str) -> tuple[str, int]:
    """The module docstring and the number of its last line (0 when there is none)."""
    tree = ast.parse(source)
    text = ast.get_docstring(tree) or ""
    return text, (tree.body[0].end_lineno if text else 0)


def stage_number(path: Path) -> int:
    return int(path.stem[5:7])


# ---------------------------------------------------------------- highlighting
class Char(NamedTuple):
    text: str
    cls: str  # pygments' CSS class
    marked: bool  # changed from the other version of the line


def css_class(ttype) -> str:
    """pygments' CSS class for a token type: that of the nearest type its style sheet names."""
    while ttype not in STANDARD_TYPES:
        ttype = ttype.parent
    return STANDARD_TYPES[ttype]


def line_tokens(source: str) -> list[list[tuple[str, str]]]:
    """Per source line, its (CSS class, text) tokens. The whole file is lexed at once, so a line
    inside a multi-line string is coloured as string; tokens spanning lines are split at "\\n"."""
    lines: list[list[tuple[str, str]]] = [[]]
    for ttype, value in PythonLexer(stripnl=False, ensurenl=False).get_tokens(source):
        for k, part in enumerate(value.split("\n")):
            if k:
                lines.append([])
            if part:
                lines[-1].append((css_class(ttype), part))
    return lines[:len(source.split("\n"))]


def render_line(tokens: list[tuple[str, str]], marked: list[bool] | None = None) -> str:
    """HTML of one line: each run of non-space characters in a .word span (it never wraps
    inside), the changed characters in <mark>, and pygments' token spans innermost."""
    chars = [(ch, cls) for cls, text in tokens for ch in text]
    chars = [Char(ch, cls, m) for (ch, cls), m in zip(chars, marked or [False] * len(chars))]
    out = []
    for is_space, run in itertools.groupby(chars, key=lambda c: c.text in " \t"):
        inner = []
        for is_marked, piece in itertools.groupby(run, key=lambda c: c.marked):
            spans = "".join(token_span(cls, "".join(c.text for c in group))
                            for cls, group in itertools.groupby(piece, key=lambda c: c.cls))
            inner.append(f"<mark>{spans}</mark>" if is_marked else spans)
        out.append("".join(inner) if is_space else f'<span class="word">{"".join(inner)}</span>')
    return "".join(out)


def token_span(cls: str, text: str) -> str:
    text = html.escape(text, quote=False)
    return f'<span class="{cls}">{text}</span>' if cls else text


# ---------------------------------------------------------------- diffing
WORDS = re.compile(r"\w+|\s+|[^\w\s]")  # identifiers and numbers, runs of spaces, single symbols


def changed_characters(old: str, new: str) -> tuple[list[bool], list[bool]]:
    """Which characters of two versions of a line differ, word by word: `F.cross_entropy(` ->
    `criterion(` marks `F.cross_entropy` and `criterion`, not the letters they share."""
    a, b = WORDS.findall(old), WORDS.findall(new)
    marked_a, marked_b = [], []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        marked_a += [tag != "equal"] * sum(map(len, a[i1:i2]))
        marked_b += [tag != "equal"] * sum(map(len, b[j1:j2]))
    return bridge_spaces(old, marked_a), bridge_spaces(new, marked_b)


def bridge_spaces(line: str, marked: list[bool]) -> list[bool]:
    """Mark the spaces between two marked words too: one mark over "with momentum buffers"."""
    for gap in re.finditer(r"(?<=\S) +(?=\S)", line):
        if marked[gap.start() - 1] and marked[gap.end()]:
            marked[gap.start():gap.end()] = [True] * len(gap.group())
    return marked


def similar(old: str, new: str) -> bool:
    return difflib.SequenceMatcher(None, old, new, autojunk=False).ratio() >= SIMILAR


def pair_lines(a: list[str], b: list[str]) -> list[tuple[int | None, int | None]]:
    """Rows for a block of changed lines: the most alike old and new line side by side, then the
    same for the lines above and below them; lines left over face an empty cell."""
    if not a or not b:
        return [(i, None) for i in range(len(a))] + [(None, j) for j in range(len(b))]
    if len(a) * len(b) <= MAX_PAIRING:
        best, where = SIMILAR, None
        for i, j in itertools.product(range(len(a)), range(len(b))):
            matcher = difflib.SequenceMatcher(None, a[i], b[j], autojunk=False)
            if matcher.real_quick_ratio() >= best and matcher.quick_ratio() >= best:  # cheap upper bounds first
                ratio = matcher.ratio()
                if ratio >= best:
                    best, where = ratio, (i, j)
        if where is not None:
            i, j = where
            below = [(None if p is None else p + i + 1, None if q is None else q + j + 1)
                     for p, q in pair_lines(a[i + 1:], b[j + 1:])]
            return pair_lines(a[:i], b[:j]) + [(i, j)] + below
    return list(itertools.zip_longest(range(len(a)), range(len(b))))


def code_cell(tokens, number: int, side: str, marked=None) -> str:
    """A line number and its line; --indent lets a wrapped line continue 4 columns right of its
    own indentation (of at most MAX_HANG columns, so that a narrow cell keeps room for text)."""
    text = "".join(t for _, t in tokens)
    indent = min(len(text) - len(text.lstrip(" ")), MAX_HANG)
    return (f'<td class="num">{number}</td><td class="code {side}" style="--indent: {indent}ch">'
            f"{render_line(tokens, marked)}</td>")


EMPTY = '<td class="num"></td><td class="code empty"></td>'
NUM_CODE = '<col class="num"><col>'  # column widths: a fixed-layout table takes them from here, not from a fold row


def diff_rows(old: str, new: str) -> list[str]:
    """Table rows of a side-by-side diff of two stages' code below their docstrings."""
    (_, old_end), (_, new_end) = docstring_and_end(old), docstring_and_end(new)
    a, b = old.split("\n")[old_end:], new.split("\n")[new_end:]
    ta, tb = line_tokens(old)[old_end:], line_tokens(new)[new_end:]
    rows = []
    if old_end or new_end:
        rows.append(f'<tr class="fold"><td colspan="4">lines 1–{old_end} and 1–{new_end}: the module docstrings '
                    f"(this stage's is at the top of the page)</td></tr>")
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            for k in folded(i2 - i1):
                if k is None:
                    rows.append(f'<tr class="fold"><td colspan="4">… {i2 - i1 - 2 * CONTEXT} unchanged lines …'
                                '</td></tr>')
                else:
                    rows.append("<tr>" + code_cell(ta[i1 + k], old_end + i1 + k + 1, "same")
                                + code_cell(tb[j1 + k], new_end + j1 + k + 1, "same") + "</tr>")
            continue
        for p, q in pair_lines(a[i1:i2], b[j1:j2]):
            i, j = (None if p is None else i1 + p), (None if q is None else j1 + q)
            marked_a = marked_b = None
            if i is not None and j is not None and similar(a[i], b[j]):
                marked_a, marked_b = changed_characters(a[i], b[j])
            left = EMPTY if i is None else code_cell(ta[i], old_end + i + 1, "removed", marked_a)
            right = EMPTY if j is None else code_cell(tb[j], new_end + j + 1, "added", marked_b)
            rows.append(f"<tr>{left}{right}</tr>")
    return rows


def folded(n: int) -> list[int | None]:
    """Which of n unchanged lines to show: all of a short run, else CONTEXT at each end (None: the fold)."""
    if n <= 2 * CONTEXT + 1:
        return list(range(n))
    return list(range(CONTEXT)) + [None] + list(range(n - CONTEXT, n))


def source_rows(source: str) -> list[str]:
    """Table rows of a whole program below its docstring (the first stage has no predecessor)."""
    _, end = docstring_and_end(source)
    rows = [f'<tr class="fold"><td colspan="2">lines 1–{end}: the module docstring (at the top of the page)'
            '</td></tr>'] if end else []
    rows += [f"<tr>{code_cell(tokens, end + k + 1, 'same')}</tr>" for k, tokens in enumerate(line_tokens(source)[end:])]
    return rows


# ---------------------------------------------------------------- the runs
def full_course_run(runs: Path) -> dict | None:
    """The last full course run's summary (runs/course-summary.json with "full": true), or None."""
    try:
        course = json.loads((runs / "course-summary.json").read_text())
    except (OSError, ValueError):
        return None
    wanted = {"summaries", "finished", "epochs"}
    return course if isinstance(course, dict) and course.get("full") is True and wanted <= course.keys() else None


def stage_figure(name: str, course: dict | None, runs: Path, out: Path) -> str:
    """The stage's curves from the full course run, with which run it was; or how to make one."""
    if course is None:
        return (f'<p class="missing">No full course run found in {html.escape(str(runs))}, so no figure: '
                "<code>make run</code> trains every stage for one epoch and draws its curves; then "
                "<code>make site</code> shows them here. "
                "(Smoke runs and runs of some stages only are not shown: the pages show one whole course.)</p>")
    summary = next((s for s in course["summaries"] if s["stage"] == name), None)
    if summary is None:
        return (f'<p class="missing">The full course run of {html.escape(course["finished"])} '
                f"did not include {name}.</p>")
    record = runs / summary["record"]
    epochs = f"{course['epochs']} epoch{'s' if course['epochs'] > 1 else ''}"
    caption = (f"{name}: training loss and test accuracy, from the full course run (make run) that finished "
               f"{course['finished']}: {epochs}, {summary['steps']} steps; record {record}")
    if not (record / "curves.png").exists():
        return f'<p class="missing">{html.escape(caption)}: its curves.png is missing.</p>'
    return figure(record / "curves.png", out, f"{name}-curves.png", caption)


def figure(src: Path | None, out: Path, name: str, caption: str) -> str:
    """Copy a figure into the site and return its <figure>, or nothing when there is none."""
    if src is None or not src.exists():
        return ""
    (out / "figures").mkdir(exist_ok=True)
    shutil.copyfile(src, out / "figures" / name)
    return (f'<figure><img src="figures/{name}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def compare_figure(runs: Path, out: Path) -> str:
    found = next((p for p in (runs / "compare" / f"compare-{d}.png" for d in ("both", "float64", "float32"))
                  if p.exists()), None)
    return figure(found, out, "compare.png", "all stages on the same batches, compared with stage 1 (make compare)")


def gradcheck_figure(runs: Path, out: Path) -> str:
    return figure(runs / "gradcheck" / "step-size.png", out, "gradcheck-step-size.png",
                  "make gradcheck: the finite-difference error of stage 1's gradients against the step size h")


# ---------------------------------------------------------------- the pages
def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(title)}</title><link rel="stylesheet" href="style.css"></head><body>\n'
            f"{body}\n</body></html>\n")


def table(classes: str, columns: str, rows: list[str]) -> str:
    return f'<table class="{classes}">{columns}' + "\n".join(rows) + "</table>"


def stage_page(path: Path, previous: Path | None, files: list[Path], course: dict | None, runs: Path,
               out: Path) -> str:
    name, source = path.stem, path.read_text()
    links = " · ".join(f'<a href="{p.stem}.html">{stage_number(p)}</a>' for p in files)
    body = [f'<nav><a href="index.html">index</a> · stages: {links}</nav>', f"<h1>{html.escape(name)}</h1>",
            f'<pre class="doc">{html.escape(docstring_and_end(source)[0])}</pre>',
            f"<p>Run it with <code>make run STAGE={stage_number(path)}</code>.</p>"]
    if previous is not None:
        body += [f"<h2>The lesson: {previous.stem} → {name}</h2>",
                 f"<p>Left: {previous.stem}, right: {name}; their code below the docstrings. Red: removed, "
                 "green: added; within a changed line the changed words are darker.</p>",
                 table("diff", NUM_CODE * 2, diff_rows(previous.read_text(), source))]
    else:
        body += ["<h2>The whole program</h2>", table("diff source", NUM_CODE, source_rows(source))]
    body += ["<h2>Training</h2>", stage_figure(name, course, runs, out), compare_figure(runs, out)]
    if previous is None:
        body.append(gradcheck_figure(runs, out))
    return page(name, "\n".join(body))


def index_page(files: list[Path], course: dict | None, runs: Path, out: Path) -> str:
    rows = "\n".join(f'<tr><td>{stage_number(p)}</td><td><a href="{p.stem}.html">{p.stem}</a></td>'
                     f"<td>{html.escape(docstring_and_end(p.read_text())[0].splitlines()[0])}</td></tr>" for p in files)
    commands = "\n".join(f"<tr><td><code>{html.escape(c)}</code></td><td>{html.escape(what)}</td></tr>"
                         for c, what in COMMANDS)
    if course is None:
        summary = (f'<p class="missing">No full course run found in {html.escape(str(runs))}: <code>make run</code>, '
                   "then <code>make site</code>, puts every stage's curves here and on the stage pages.</p>")
    else:
        summary = figure(runs / "course-summary.png", out, "course-summary.png",
                         f"every stage's training loss and test accuracy: the full course run (make run) that "
                         f"finished {course['finished']}")
    body = [
        "<h1>PyTorch by refactoring</h1>",
        "<p>One CIFAR-10 convnet, trained by hand in numpy, refactored one idea per stage into idiomatic, "
        "multi-GPU PyTorch. The diff between two stages is the lesson.</p>",
        f'<table class="stages"><tr><th>stage</th><th>file</th><th>what it is</th></tr>{rows}</table>',
        "<h2>How to run it</h2>",
        "<p>From the repository's folder (the first <code>make</code> creates <code>.venv</code> and installs "
        "the packages):</p>",
        f'<table class="commands"><tr><th>command</th><th>what it does</th></tr>{commands}</table>',
        "<h2>What each page holds</h2>",
        "<ul><li>This page: the stages, how to run them, and the figures of the whole course: the last full "
        "course run, <code>make compare</code> and <code>make gradcheck</code>, when they have been run.</li>"
        "<li>A stage page: the stage's docstring (what changed since the stage before, and why); the diff of "
        "its code from the stage before, side by side, with unchanged stretches folded (stage 1: the whole "
        "program); and its training curves from the last full course run.</li></ul>",
        "<h2>Figures</h2>", summary, compare_figure(runs, out), gradcheck_figure(runs, out),
    ]
    return page("PyTorch by refactoring", "\n".join(body))


def build(out: Path, runs: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "style.css").write_text(CSS + HtmlFormatter().get_style_defs(".diff"))
    files, course = stage_files(), full_course_run(runs)
    written = [out / "index.html"]
    written[0].write_text(index_page(files, course, runs, out))
    for k, path in enumerate(files):
        written.append(out / f"{path.stem}.html")
        written[-1].write_text(stage_page(path, files[k - 1] if k else None, files, course, runs, out))
    return written


def main(argv=None) -> list[Path]:
    parser = OneLineParser(prog="python -m common.tools.site", description=__doc__.splitlines()[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="site", help="folder to write the site into")
    parser.add_argument("--runs", default="runs", help="where `make run`, `make compare` and `make gradcheck` write")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        pages = build(Path(args.out), Path(args.runs))
    except OSError as err:
        parser.exit(BAD_INPUT, f"{parser.prog}: error: cannot write the site to {args.out}: {err.strerror}\n")
    print(f"wrote {len(pages)} pages: open {pages[0]}")
    return pages


if __name__ == "__main__":
    run_program(main)  # one line and an exit code for every ending (common/run/program.py)
