"""The course as a static web site: an index with the stage table, and a page per stage with its
docstring, the side-by-side diff from the previous stage (syntax highlighted), and the stage's
figures from the last `make run` / `make compare`, when there are any. No server needed:
open site/index.html from disk.

Run: python -m common.site [--out site] [--runs runs]
"""
from __future__ import annotations

import argparse
import ast
import difflib
import html
import shutil
import sys
from pathlib import Path

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from common.harness import STAGES_DIR

CONTEXT = 3  # unchanged lines shown around each change; longer unchanged runs are folded

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1400px; padding: 0 1rem; color: #222; }
a { color: #0b5cad; } nav { margin-bottom: 1rem; }
table.stages { border-collapse: collapse; } table.stages td, table.stages th { padding: .3rem .8rem; border-bottom: 1px solid #ddd; text-align: left; }
pre.doc { background: #f6f8fa; padding: 1rem; border-radius: 6px; white-space: pre-wrap; }
table.diff { border-collapse: collapse; width: 100%; table-layout: fixed; font-family: ui-monospace, monospace; font-size: 12px; }
table.diff td { vertical-align: top; white-space: pre-wrap; word-break: break-all; padding: 0 .4rem; }
table.diff td.num { width: 3rem; color: #999; text-align: right; user-select: none; }
td.removed { background: #ffebe9; } td.added { background: #e6ffec; } td.empty { background: #fafafa; }
tr.fold td { background: #eef3fb; color: #557; text-align: center; font-style: italic; }
img { max-width: 100%; border: 1px solid #ddd; margin: .5rem 0; }
"""


def stage_files() -> list[Path]:
    return sorted(STAGES_DIR.glob("stage[0-9][0-9]_*.py"))


def docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def highlighted_lines(source: str) -> list[str]:
    """One HTML fragment per source line; pygments closes every span at the end of a line."""
    html_code = highlight(source, PythonLexer(), HtmlFormatter(nowrap=True))
    lines = html_code.split("\n")
    return lines[: len(source.splitlines())]


def diff_rows(old: str, new: str) -> list[str]:
    """Table rows of a side-by-side diff: removed lines on the left, added on the right."""
    a, b = old.splitlines(), new.splitlines()
    ha, hb = highlighted_lines(old), highlighted_lines(new)
    rows = []

    def row(i, j, left_class, right_class):
        left = (f'<td class="num">{i + 1}</td><td class="{left_class}">{ha[i]}</td>' if i is not None
                else '<td class="num"></td><td class="empty"></td>')
        right = (f'<td class="num">{j + 1}</td><td class="{right_class}">{hb[j]}</td>' if j is not None
                 else '<td class="num"></td><td class="empty"></td>')
        rows.append(f"<tr>{left}{right}</tr>")

    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            n = i2 - i1
            shown = range(n) if n <= 2 * CONTEXT + 1 else list(range(CONTEXT)) + [None] + list(range(n - CONTEXT, n))
            for k in shown:
                if k is None:
                    rows.append(f'<tr class="fold"><td colspan="4">… {n - 2 * CONTEXT} unchanged lines …</td></tr>')
                else:
                    row(i1 + k, j1 + k, "same", "same")
            continue
        for k in range(max(i2 - i1, j2 - j1)):
            row(i1 + k if i1 + k < i2 else None, j1 + k if j1 + k < j2 else None, "removed", "added")
    return rows


def latest(pattern: str, runs: Path) -> Path | None:
    found = sorted(runs.glob(pattern))
    return found[-1] if found else None


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<link rel="stylesheet" href="style.css"></head><body>\n{body}\n</body></html>\n')


def figure(src: Path | None, out: Path, name: str, caption: str) -> str:
    """Copy a figure into the site and return its <figure>, or nothing when there is none."""
    if src is None:
        return ""
    (out / "figures").mkdir(exist_ok=True)
    shutil.copyfile(src, out / "figures" / name)
    return f'<figure><img src="figures/{name}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def build(out: Path, runs: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "style.css").write_text(CSS + HtmlFormatter().get_style_defs([".diff", ".source"]))
    files = stage_files()
    compare_png = next((p for p in (runs / "compare" / f"compare-{d}.png" for d in ("both", "float64", "float32"))
                        if p.exists()), None)
    written = []
    for k, path in enumerate(files):
        name, previous = path.stem, files[k - 1] if k else None
        links = " · ".join(f'<a href="{p.stem}.html">{int(p.stem[5:7])}</a>' for p in files)
        body = [f'<nav><a href="index.html">index</a> · stages: {links}</nav>', f"<h1>{html.escape(name)}</h1>",
                f'<pre class="doc">{html.escape(docstring(path))}</pre>',
                f"<p>Run it: <code>python -m stages.{name} --epochs 1</code></p>"]
        if previous is not None:
            body.append(f"<h2>The lesson: {previous.stem} → {name}</h2>"
                        f"<p>Left: what {previous.stem} wrote (red: removed). Right: {name} (green: added).</p>")
            body.append('<table class="diff">' + "\n".join(diff_rows(previous.read_text(), path.read_text())) + "</table>")
        else:
            body.append("<h2>The whole program</h2>")
            body.append('<table class="diff source">' + "\n".join(
                f'<tr><td class="num">{i + 1}</td><td class="same">{line}</td></tr>'
                for i, line in enumerate(highlighted_lines(path.read_text()))) + "</table>")
        body.append(figure(latest(f"{name}/*/curves.png", runs), out, f"{name}-curves.png",
                           f"{name}: training loss and test accuracy of the last run"))
        body.append(figure(compare_png, out, "compare.png", "all stages compared (make compare)"))
        (out / f"{name}.html").write_text(page(name, "\n".join(body)))
        written.append(out / f"{name}.html")
    rows = "\n".join(f'<tr><td>{int(p.stem[5:7])}</td><td><a href="{p.stem}.html">{p.stem}</a></td>'
                     f"<td>{html.escape(docstring(p).splitlines()[0])}</td></tr>" for p in files)
    index = [
        "<h1>PyTorch by refactoring</h1>",
        "<p>One CIFAR-10 convnet, trained by hand in numpy, refactored one idea per stage into idiomatic, "
        "multi-GPU PyTorch. Each stage page shows the stage's docstring and its diff from the stage before: "
        "the diff is the lesson.</p>",
        f'<table class="stages"><tr><th>stage</th><th>file</th><th>what it is</th></tr>{rows}</table>',
        figure(compare_png, out, "compare.png", "all stages compared (make compare)"),
        figure(latest("course-summary.png", runs), out, "course-summary.png", "all stages' training curves (make run)"),
    ]
    (out / "index.html").write_text(page("PyTorch by refactoring", "\n".join(index)))
    return [out / "index.html"] + written


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m common.site", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="site", help="folder to write the site into")
    parser.add_argument("--runs", default="runs", help="where `make run` and `make compare` left their records")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        pages = build(Path(args.out), Path(args.runs))
    except OSError as err:
        parser.exit(2, f"{parser.prog}: error: cannot write the site to {args.out}: {err.strerror}\n")
    print(f"wrote {len(pages)} pages: open {pages[0]}")
    return pages


if __name__ == "__main__":
    main()
