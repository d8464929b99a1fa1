"""The course as a static web site, from the stage files, the lesson pages and the run records in runs/.

An index (the stage table with each stage's accuracy, how to run the course, what each page
holds) and a page per stage: its lesson page (docs/stages/stageNN_<name>.md, rendered from
markdown, read by common/tools/lessons.py), its docstring, the side-by-side diff of its code
from the previous stage, its figure, its exercise (`make exercise STAGE=N`) and the next stage.
No server needed: open site/index.html from disk.

Every result names its data: "synthetic shapes, not CIFAR-10" or "CIFAR-10" (summary.json's
data.source). The pages work on a phone: nothing is wider than a 400 px screen, the diff puts
the old line above the new one where two columns no longer fit (NARROW), and every figure is a
link to itself at full size.

The diff shows each stage's docstring once, in its own box above the lesson, and only the code:
removed lines red on the left, added lines green on the right, and within a changed line the
changed words marked darker. Long lines wrap at spaces, never inside a word, except on a narrow
screen a word longer than LONG_WORD characters, which could not fit there whole.

The stage figures come from the last *full* course run (runs/course-summary.json, written by
`make run`: every stage, no --max-steps), whatever ran after it: a smoke or partial run writes
its own course-summary-*.json and leaves the full run's alone. Without a full run the pages say how to
make one. The figures of `make compare` and `make gradcheck` are shown when they exist.

Run: python -m common.tools.site [--out site] [--runs runs] [--lessons docs/stages]
"""
from __future__ import annotations

import argparse
import difflib
import html
import itertools
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer, TextLexer, get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

from common.cli import OneLineParser
from common.data import data_name, on_data
from common.errors import BAD_INPUT
from common.harness import stage_files
from common.tools.program import run_program
from common.tools.course import notes as course_notes
from common.tools.exercises.catalog import EXERCISES
from common.tools.lessons import LESSONS_DIR, Lesson, read_lesson, relink
from common.tools.stage_diff import docstring_and_end

CONTEXT = 3  # unchanged lines shown around each change; longer unchanged runs are folded
SIMILAR = 0.5  # two lines at least this alike (difflib's ratio) are one line changed, not two
MAX_PAIRING = 400  # above this many line pairs in one changed block, pair lines in order (cost)
MAX_HANG = 20  # a wrapped line continues 4 columns right of its indentation, or of this many columns
# Side by side, each code column must hold about 48 characters of 12 px code (two columns, line
# numbers and margins: 880 px); below that the diff is stacked, the old line above the new.
NARROW = 879
LONG_WORD = 30  # a word longer than this cannot fit a phone's column: on a narrow screen it may break

CSS = """
*, *::before, *::after { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1400px; padding: 0 1rem; color: #222;
       line-height: 1.45; overflow-wrap: break-word; }
a { color: #0b5cad; } nav { margin-bottom: 1rem; } nav.pager { margin: 2rem 0 1rem; }
code { font-family: ui-monospace, monospace; font-size: .92em; }
p code, li code, td code, figcaption code { overflow-wrap: anywhere; }
.prose { max-width: 52rem; }
.prose pre { background: #f6f8fa; padding: .6rem .9rem; border-radius: 6px; overflow-x: auto; font-size: 13px; }
.prose table { display: block; max-width: 100%; overflow-x: auto; border-collapse: collapse; }
.prose th, .prose td { border: 1px solid #ddd; padding: .2rem .5rem; }
.todo { background: #eef6ee; border-left: 4px solid #2a7a3a; padding: .6rem 1rem; border-radius: 0 6px 6px 0; }
.todo p { margin: .3rem 0; }
table.stages, table.commands { border-collapse: collapse; } table.commands code { white-space: nowrap; }
table.stages td, table.stages th, table.commands td, table.commands th { padding: .3rem .8rem; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
table.stages td.accuracy { text-align: right; white-space: nowrap; }
pre.doc { background: #f6f8fa; padding: 1rem; border-radius: 6px; white-space: pre-wrap; overflow-wrap: anywhere; }
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
img { max-width: 100%; height: auto; border: 1px solid #ddd; margin: .5rem 0; }
p.missing { background: #fff8e1; padding: .6rem 1rem; border-radius: 6px; }
p.note { color: #444; font-size: .92rem; max-width: 52rem; }
@media (max-width: NARROWpx) {
  /* one column: each row's old line above its new one; an unchanged line once, as the new stage has it */
  table.diff, table.diff tbody { display: block; width: 100%; font-size: 11px; }
  table.diff colgroup, table.diff col { display: none; }
  table.diff tr { display: grid; grid-template-columns: 2.6rem minmax(0, 1fr); }
  table.diff tr.fold, table.diff tr.fold td { display: block; }
  table.diff td.empty, table.diff tr.same > td:nth-child(-n+2) { display: none; }
  table.diff td.code { padding-left: calc(.3rem + min(var(--indent, 0ch), 6ch) + 2ch);
                       text-indent: calc(-1 * (min(var(--indent, 0ch), 6ch) + 2ch)); }
  table.diff .word.long { white-space: normal; overflow-wrap: anywhere; }
  table.diff td.removed + td.num, table.diff td.removed + td.num + td.added { border-top: 1px dashed #ccc; }
}
@media (max-width: 600px) {
  body { margin: 1rem auto; } h1 { font-size: 1.6rem; }
  table.commands tr, table.commands td, table.commands th { display: block; border: 0; padding: .1rem .4rem; }
  table.commands tr { border-bottom: 1px solid #ddd; padding: .3rem 0; }
  table.commands tr:first-child { display: none; }
  table.commands code { white-space: normal; }
  table.stages td, table.stages th { padding: .3rem .4rem; }
  .prose pre { white-space: pre-wrap; overflow-wrap: anywhere; }
}
""".replace("NARROW", str(NARROW))

COMMANDS = [  # (command, what it does) for the index page; every one is a Makefile target
    ("make run", "every stage, one epoch each, in order (\u201cstage 3 of 13\u201d), then a summary table, "
                 "runs/course-summary.png and what to do next; the stage pages show the figures of this full run"),
    ("make run STAGE=3", "one stage; its summary is runs/course-summary-stages-3.png and the pages keep the full run's"),
    ("make diff FROM=2 TO=3", "the lesson in the terminal: stage 3's docstring, then the diff of the code"),
    ("make exercise STAGE=3", "do it yourself: stage 3 with its lesson taken out, in work/; "
                              "then make check STAGE=3 checks your work and make solution STAGE=3 shows the answer"),
    ("make smoke", "every stage for 20 steps on synthetic data: a quick check that all of them run "
                   "(runs/course-summary-smoke.png; the pages keep the full run's figures)"),
    ("make test", "the test suite: every stage computes what the one before it computes, and what PyTorch does"),
    ("make compare", "every stage trained on the same batches and compared with stage 1 (runs/compare/)"),
    ("make gradcheck", "finite differences against stage 1's hand-written gradients (runs/gradcheck/)"),
    ("make site", "this site, from the stage files, the lesson pages and runs/; open site/index.html"),
    ("make help", "every command, grouped: learn, run, check, tools"),
]
SYNTHETIC_WORD = (
    "Without CIFAR-10 on disk or a network, or with <code>--data synthetic</code>, a run trains on the course's "
    "built-in synthetic shapes (<code>common/data.py</code>): each class one shape in one colour, far easier than "
    "CIFAR-10's photographs. One epoch of them reaches about 95 %; on CIFAR-10 the tutorial's network reaches "
    "53\u201356 %. Every figure and table here says which data it shows.")


# ---------------------------------------------------------------- reading the stages
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
    inside, unless it is too long for a phone's column: .long), the changed characters in <mark>,
    and pygments' token spans innermost."""
    chars = [(ch, cls) for cls, text in tokens for ch in text]
    chars = [Char(ch, cls, m) for (ch, cls), m in zip(chars, marked or [False] * len(chars))]
    out = []
    for is_space, run in itertools.groupby(chars, key=lambda c: c.text in " \t"):
        run = list(run)
        inner = []
        for is_marked, piece in itertools.groupby(run, key=lambda c: c.marked):
            spans = "".join(token_span(cls, "".join(c.text for c in group))
                            for cls, group in itertools.groupby(piece, key=lambda c: c.cls))
            inner.append(f"<mark>{spans}</mark>" if is_marked else spans)
        long = " long" if len(run) > LONG_WORD else ""
        out.append("".join(inner) if is_space else f'<span class="word{long}">{"".join(inner)}</span>')
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


EMPTY = '<td class="num empty"></td><td class="code empty"></td>'
NUM_CODE = '<col class="num"><col>'  # column widths: a fixed-layout table takes them from here, not from a fold row


def diff_rows(old: str, new: str) -> list[str]:
    """Table rows of a side-by-side diff of two stages' code below their docstrings."""
    (_, old_end), (_, new_end) = docstring_and_end(old), docstring_and_end(new)
    a, b = old.split("\n")[old_end:], new.split("\n")[new_end:]
    ta, tb = line_tokens(old)[old_end:], line_tokens(new)[new_end:]
    rows = []
    if old_end or new_end:
        rows.append(f'<tr class="fold"><td colspan="4">lines 1–{old_end} and 1–{new_end}: the module docstrings '
                    f"(this stage's is shown above)</td></tr>")
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            for k in folded(i2 - i1):
                if k is None:
                    rows.append(f'<tr class="fold"><td colspan="4">… {i2 - i1 - 2 * CONTEXT} unchanged lines …'
                                '</td></tr>')
                else:
                    rows.append('<tr class="same">' + code_cell(ta[i1 + k], old_end + i1 + k + 1, "same")
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
    rows = [f'<tr class="fold"><td colspan="2">lines 1–{end}: the module docstring (shown above)'
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


def summary_of(course: dict | None, name: str) -> dict | None:
    return None if course is None else next((s for s in course["summaries"] if s["stage"] == name), None)


def data_of(summary: dict) -> str:
    """What a stage of the full run trained on, in the figures' words."""
    data = summary.get("data")
    return data_name(data.get("source") if isinstance(data, dict) else None)


def course_data(course: dict) -> str:
    """What the full run's stages trained on: one name, or each of them."""
    return " and ".join(dict.fromkeys(data_of(s) for s in course["summaries"]))


def stage_figure(name: str, course: dict | None, runs: Path, out: Path) -> str:
    """The stage's curves from the full course run, with which run and which data it was; or how to make one."""
    if course is None:
        return (f'<p class="missing">No full course run found in {html.escape(str(runs))}, so no figure: '
                "<code>make run</code> trains every stage for one epoch and draws its curves; then "
                "<code>make site</code> shows them here. "
                "(Smoke runs and runs of some stages only are not shown: the pages show one whole course.)</p>")
    summary = summary_of(course, name)
    if summary is None:
        return (f'<p class="missing">The full course run of {html.escape(course["finished"])} '
                f"did not include {name}.</p>")
    record = runs / summary["record"]
    epochs = f"{course['epochs']} epoch{'s' if course['epochs'] > 1 else ''}"
    caption = (f"{name}: training loss and test accuracy {on_data(data_of(summary))}, from the full course run "
               f"(make run) that finished {course['finished']}: {epochs}, {summary['steps']} steps; record {record}")
    if not (record / "curves.png").exists():
        return f'<p class="missing">{html.escape(caption)}: its curves.png is missing.</p>'
    return figure(record / "curves.png", out, f"{name}-curves.png", caption)


def figure(src: Path | None, out: Path, name: str, caption: str) -> str:
    """Copy a figure into the site and return its <figure>, the image a link to itself at full
    size (a phone shows it shrunk to the screen); or nothing when there is none."""
    if src is None or not src.exists():
        return ""
    (out / "figures").mkdir(exist_ok=True)
    shutil.copyfile(src, out / "figures" / name)
    return (f'<figure><a class="full-size" href="figures/{name}" title="open the figure at full size">'
            f'<img src="figures/{name}" alt="{html.escape(caption)}"></a>'
            f'<figcaption>{html.escape(caption)} (<a href="figures/{name}">full size</a>)</figcaption></figure>')


def compare_figure(runs: Path, out: Path) -> str:
    found = next((p for p in (runs / "compare" / f"compare-{d}.png" for d in ("both", "float64", "float32"))
                  if p.exists()), None)
    return figure(found, out, "compare.png", "all stages on the same batches of synthetic shapes, not CIFAR-10, "
                                             "compared with stage 1 (make compare)")


def gradcheck_figure(runs: Path, out: Path) -> str:
    return figure(runs / "gradcheck" / "step-size.png", out, "gradcheck-step-size.png",
                  "make gradcheck: the finite-difference error of stage 1's gradients against the step size h, "
                  "on a batch of synthetic shapes, not CIFAR-10")


# ---------------------------------------------------------------- the lesson pages, rendered
def highlighted(code: str, language: str, _attrs) -> str:
    """A fenced block of a lesson page, coloured by pygments as the diff is."""
    try:
        lexer = get_lexer_by_name(language) if language else TextLexer()
    except ClassNotFound:
        lexer = TextLexer()
    return f'<pre class="highlight"><code>{highlight(code, lexer, HtmlFormatter(nowrap=True))}</code></pre>'


MARKDOWN = MarkdownIt("commonmark", {"html": False, "highlight": highlighted}).enable("table")


class Site(NamedTuple):
    """What every page is written from."""
    out: Path
    runs: Path
    lessons_dir: Path
    files: list[Path]
    course: dict | None

    def rendered(self, lesson: Lesson, markdown: str) -> str:
        """A part of a lesson page as HTML, its links pointing from the site: another lesson page to
        that stage's page, any other file of the course by its path from the site's folder."""
        stems = {p.stem for p in self.files}
        lessons_dir = self.lessons_dir.resolve()

        def target_for(file: Path, anchor: str) -> str:
            if file.parent == lessons_dir and file.suffix == ".md" and file.stem in stems:
                return f"{file.stem}.html{anchor}"
            return Path(os.path.relpath(file, self.out.resolve())).as_posix() + anchor

        return MARKDOWN.render(relink(markdown, lesson, target_for))


def slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


# ---------------------------------------------------------------- the pages
def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(title)}</title><link rel="stylesheet" href="style.css"></head><body>\n'
            f"{body}\n</body></html>\n")


def table(classes: str, columns: str, rows: list[str]) -> str:
    return f'<table class="{classes}">{columns}' + "\n".join(rows) + "</table>"


def stage_title(path: Path, lesson: Lesson | None) -> str:
    """"Stage 6: a loss module and torch.optim" from the lesson page, or the docstring's first line."""
    return lesson.title if lesson is not None else docstring_and_end(path.read_text())[0].splitlines()[0]


def exercise_box(number: int, name: str) -> str:
    """What `make exercise STAGE=N` gives the learner, and the two commands after it."""
    if number not in EXERCISES:
        return (f'<div class="todo" id="exercise"><p>Do it yourself: this stage has no exercise yet '
                f"(<code>make exercise</code> covers stages {min(EXERCISES)} to {max(EXERCISES)}).</p></div>")
    blanks = ", ".join(f"<code>{html.escape(b)}</code>" for b in EXERCISES[number].blanks)
    return (f'<div class="todo" id="exercise"><p><strong>Do it yourself: '
            f"<code>make exercise STAGE={number}</code></strong> "
            f"writes <code>work/{name}.py</code>, this stage with its lesson taken out: {blanks}. Fill them in, then "
            f"<code>make check STAGE={number}</code> checks your file against PyTorch"
            f"{f' and stage {number - 1}' if number > 1 else ''} and names what disagrees; "
            f"<code>make solution STAGE={number}</code> shows the course's own answer as a diff.</p>"
            f"<p>Why these: {html.escape(EXERCISES[number].why)}</p></div>")


def pager(site: Site, k: int) -> str:
    """The way on: the previous stage, the index, the next stage (the last leads back to the index)."""
    files = site.files
    parts = [f'<a href="{files[k - 1].stem}.html">← stage {stage_number(files[k - 1])}</a>'] if k else []
    parts.append('<a href="index.html">index</a>')
    if k + 1 < len(files):
        nxt = files[k + 1]
        parts.append(f'<a class="next" href="{nxt.stem}.html">next: '
                     f"{html.escape(stage_title(nxt, read_lesson(nxt.stem, site.lessons_dir)))} →</a>")
    else:
        parts.append("this is the last stage")
    return f'<nav class="pager">{" · ".join(parts)}</nav>'


def diff_part(path: Path, previous: Path | None) -> str:
    name, source = path.stem, path.read_text()
    if previous is None:
        return "\n".join(['<h2 id="the-code">The whole program</h2>',
                          table("diff source", NUM_CODE, source_rows(source))])
    return "\n".join([
        f'<h2 id="the-code">The code: {previous.stem} → {name}</h2>',
        f"<p>Old: {previous.stem}, new: {name}; their code below the docstrings. Red: removed, green: added; "
        "within a changed line the changed words are darker. Side by side on a wide screen, the old line above "
        "the new one on a narrow one.</p>",
        table("diff", NUM_CODE * 2, diff_rows(previous.read_text(), source))])


def lesson_parts(site: Site, lesson: Lesson | None, inserts: dict[str, str]) -> list[str]:
    """The lesson page's sections with the page's own parts after the ones they belong to: the diff
    after "Why", the figure after "What to look at", the exercise after "Fine print". A part whose
    section the lesson page lacks comes before "Next", or at the end."""
    body, pending = [], dict(inserts)
    for heading, markdown in ({} if lesson is None else lesson.sections).items():
        if heading == "Do it yourself":  # the exercise box says it (exercise_box)
            continue
        if heading == "Next":
            body += list(pending.values())
            pending.clear()
        body += [f'<h2 id="{slug(heading)}">{html.escape(heading)}</h2>',
                 f'<div class="prose">{site.rendered(lesson, markdown)}</div>']
        if heading in pending:
            body.append(pending.pop(heading))
    return body + list(pending.values())


def stage_page(site: Site, k: int) -> str:
    path, files = site.files[k], site.files
    previous = files[k - 1] if k else None
    name, number = path.stem, stage_number(path)
    lesson = read_lesson(name, site.lessons_dir)
    links = " · ".join(f'<a href="{p.stem}.html">{stage_number(p)}</a>' for p in files)
    lesson_link = Path(os.path.relpath(site.lessons_dir.resolve() / f"{name}.md", site.out.resolve())).as_posix()
    body = [f'<nav><a href="index.html">index</a> · stages: {links}</nav>',
            f"<h1>{html.escape(lesson.title if lesson else name)}</h1>",  # no page: the docstring below titles it
            f'<p><code>stages/{name}.py</code> · the lesson page: '
            f'<a class="lesson-page" href="{html.escape(lesson_link)}">'
            f"docs/stages/{name}.md</a>{'' if lesson else ' (not written yet)'}</p>"]
    if lesson is not None:
        body.append(f'<div class="prose">{site.rendered(lesson, lesson.intro)}</div>')
    body += [f'<div class="todo"><p>Run it: <code>make run STAGE={number}</code> · do it yourself: '
             f'<a href="#exercise"><code>make exercise STAGE={number}</code></a> · '
             + (f'next: <a href="{files[k + 1].stem}.html">stage {stage_number(files[k + 1])}</a>'
                if k + 1 < len(files) else 'the last stage') + "</p></div>",
             "<h2 id=\"docstring\">The docstring</h2>",
             f'<pre class="doc">{html.escape(docstring_and_end(path.read_text())[0])}</pre>']
    training = ["<h3>Training</h3>" if lesson else '<h2 id="training">Training</h2>',
                stage_figure(name, site.course, site.runs, site.out), compare_figure(site.runs, site.out)]
    if previous is None:
        training.append(gradcheck_figure(site.runs, site.out))
    body += lesson_parts(site, lesson, {"Why": diff_part(path, previous), "What to look at": "\n".join(training),
                                        "Fine print": exercise_box(number, name)})
    body.append(pager(site, k))
    return page(stage_title(path, lesson), "\n".join(body))


def index_page(site: Site) -> str:
    course, runs, out = site.course, site.runs, site.out
    accuracy = f"test accuracy, {course_data(course)}" if course else "test accuracy"
    rows = []
    for p in site.files:
        summary = summary_of(course, p.stem)
        value = f"{100 * summary['test_accuracy']:.2f} %" if summary else "–"
        what = html.escape(re.sub(r"^Stage \d+: ", "", stage_title(p, read_lesson(p.stem, site.lessons_dir))))
        rows.append(f'<tr><td>{stage_number(p)}</td><td><a href="{p.stem}.html">{p.stem}</a><br>{what}</td>'
                    f'<td class="accuracy">{value}</td></tr>')
    commands = "\n".join(f"<tr><td><code>{html.escape(c)}</code></td><td>{html.escape(what)}</td></tr>"
                         for c, what in COMMANDS)
    if course is None:
        summary = (f'<p class="missing">No full course run found in {html.escape(str(runs))}: <code>make run</code>, '
                   "then <code>make site</code>, puts every stage's curves here and on the stage pages.</p>")
    else:
        summary = figure(runs / "course-summary.png", out, "course-summary.png",
                         f"every stage's training loss and test accuracy {on_data(course_data(course))}: the full "
                         f"course run (make run) that finished {course['finished']}")
    first = site.files[0]
    body = [
        "<h1>PyTorch by refactoring</h1>",
        '<div class="prose"><p>One CIFAR-10 convnet, trained by hand in numpy, refactored one idea per stage into '
        "idiomatic, multi-GPU PyTorch. The diff between two stages is the lesson; each stage has a lesson page "
        "and an exercise.</p>",
        f"<p>{SYNTHETIC_WORD}</p></div>",
        f'<div class="todo"><p>Start here: <a href="{first.stem}.html">stage {stage_number(first)}</a>. '
        "On each stage page: its lesson, the diff from the stage before, its figure, and an exercise to do it "
        "yourself (<code>make exercise STAGE=N</code>).</p></div>",
        f'<table class="stages"><tr><th>#</th><th>stage</th><th>{html.escape(accuracy)}</th></tr>'
        + "\n".join(rows) + "</table>",
        *(f'<p class="note">{html.escape(note[0].upper() + note[1:])}.</p>'
          for note in (course_notes(course["summaries"]) if course else [])),
        "<h2>How to run it</h2>",
        "<p>From the repository's folder (the first <code>make</code> creates <code>.venv</code> and installs "
        "the packages):</p>",
        f'<table class="commands"><tr><th>command</th><th>what it does</th></tr>{commands}</table>',
        "<h2>What each page holds</h2>",
        "<ul><li>This page: the stages with their test accuracy in the last full course run, how to run them, and "
        "the figures of the whole course: the last full course run, <code>make compare</code> and "
        "<code>make gradcheck</code>, when they have been run.</li>"
        "<li>A stage page: its lesson page (what changes, why, how to run it, what to look at, the fine print); "
        "the stage's docstring; the diff of its code from the stage before, unchanged stretches folded (stage 1: "
        "the whole program); its training curves from the last full course run; its exercise; and the next "
        "stage.</li></ul>",
        "<h2>Figures</h2>", summary, compare_figure(runs, out), gradcheck_figure(runs, out),
    ]
    return page("PyTorch by refactoring", "\n".join(body))


def build(out: Path, runs: Path, lessons_dir: Path = LESSONS_DIR) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "style.css").write_text(CSS + HtmlFormatter().get_style_defs([".diff", ".prose .highlight"]))
    site = Site(out, runs, lessons_dir, stage_files(), full_course_run(runs))
    written = [out / "index.html"]
    written[0].write_text(index_page(site))
    for k, path in enumerate(site.files):
        written.append(out / f"{path.stem}.html")
        written[-1].write_text(stage_page(site, k))
    return written


def main(argv=None) -> list[Path]:
    parser = OneLineParser(prog="python -m common.tools.site", description=__doc__.splitlines()[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="site", help="folder to write the site into")
    parser.add_argument("--runs", default="runs", help="where `make run`, `make compare` and `make gradcheck` write")
    parser.add_argument("--lessons", default=str(LESSONS_DIR.relative_to(LESSONS_DIR.parents[1])),
                        help="the lesson pages, stageNN_<name>.md")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        pages = build(Path(args.out), Path(args.runs), Path(args.lessons))
    except OSError as err:
        parser.exit(BAD_INPUT, f"{parser.prog}: error: cannot write the site to {args.out}: {err.strerror}\n")
    print(f"wrote {len(pages)} pages: open {pages[0]}")
    return pages


if __name__ == "__main__":
    run_program(main)  # one line and an exit code for every ending (common/tools/program.py)
