"""Every stage as a Jupyter notebook, written from the stage file itself (the file stays the one source).

    make notebooks                    # notebooks/stage01_numpy.ipynb ... stage11_distributed.ipynb
    python -m common.tools.notebooks --execute   # the same, each then run once, its outputs saved in it

A notebook is its stage cut where the stage's section rules (`# ---- model`, ...) cut it: the
docstring as the first cell (markdown), a set-up cell, the imports, then for every section a
markdown heading and one code cell, and last a cell that runs the stage for 200 steps on the
built-in synthetic images and shows the figure of that run inline. The cells are laid out in
jupytext's "percent" text format and read into a notebook by jupytext. The stage's
`if __name__ == "__main__": main()` is left out: in a notebook `__name__` is "__main__" too,
and main() would parse the kernel's own command line.

The set-up cell looks for the course in the folder the notebook runs in and the folders above
it (a notebook opened from notebooks/ finds it one level up) and works from there. Where there
is no course around it, e.g. on Colab, it first clones COURSE_REPOSITORY and installs its
requirements.txt with pip.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
import time
from pathlib import Path

from common.cli import OneLineParser
from common.harness import ROOT, stage_files
from common.run.program import run_program

NOTEBOOKS_DIR = ROOT / "notebooks"
PLACEHOLDER_REPOSITORY = "https://github.com/OWNER/pytorch-by-refactoring"


def course_repository() -> str:
    """Where a notebook opened outside a checkout (Colab) clones the course from: the address this
    checkout was cloned from (git's `origin`), or a placeholder the set-up cell asks to replace."""
    import subprocess

    try:
        url = subprocess.run(["git", "remote", "get-url", "origin"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        url = ""
    return shareable(url) or PLACEHOLDER_REPOSITORY


def shareable(url: str) -> str | None:
    """The address as a notebook may carry it: a network address without the user name or token
    it may hold (https://user:token@host/...), or None for a local path, useless elsewhere."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.scheme in ("http", "https", "ssh", "git") and parts.hostname:
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        user = "git@" if parts.scheme == "ssh" and parts.username == "git" else ""
        return urlunsplit(parts._replace(netloc=user + host))
    if re.fullmatch(r"[\w.-]+@[\w.-]+:[^/].*", url):  # scp-like: git@github.com:owner/course.git
        return url
    return None


COURSE_REPOSITORY = course_repository()
RUN_ARGS = ["--data", "synthetic", "--max-steps", "200", "--out", "runs/notebook"]
SECTION_RULE = re.compile(r"^# -{8,} (?P<name>.+)$")
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}

SET_UP = f'''\
# Set-up: find the course (this folder or one above it, as from notebooks/) and work from its
# root. Anywhere else, e.g. on Colab, clone the course and install what it needs first.
import os
import subprocess
import sys
from pathlib import Path

COURSE_REPOSITORY = {COURSE_REPOSITORY!r}  # the course's git address: change it if it is another
ROOT = next((folder for folder in (Path.cwd(), *Path.cwd().parents)
             if (folder / "stages").is_dir() and (folder / "common").is_dir()), None)
if ROOT is None:  # no course around this notebook: fetch it, and install its pinned packages
    if COURSE_REPOSITORY == {PLACEHOLDER_REPOSITORY!r}:
        raise SystemExit("set COURSE_REPOSITORY above to the git address of the course, then run this cell again")
    ROOT = Path(Path(COURSE_REPOSITORY).name).resolve()
    subprocess.run(["git", "clone", "--depth", "1", COURSE_REPOSITORY, str(ROOT)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-r", str(ROOT / "requirements.txt")],
                   check=True)
os.chdir(ROOT)  # the stage reads data/ and writes runs/ relative to the course's root
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))'''

RUN_TEXT = """\
## Run it

200 training steps on the course's built-in synthetic images, then the figure that the run's
record keeps (`curves.png`): the training loss and each layer's gradient norm per step, and the
test accuracy. At the tutorial's learning rate 200 steps are only a start, as the run says when
it ends; without `"--max-steps", "200"` it trains whole epochs. The options are those of
`python -m stages.{stem}`: change them and run the cell again."""

RUN_CODE = '''\
from IPython.display import Image, display

__file__ = str(ROOT / "stages" / "{stem}.py")  # main() names the run's record after the stage file
summary = main({args!r})
display(Image(filename=str(Path(summary["record"]) / "curves.png")))'''


# ---------------------------------------------------------------- cutting a stage into cells
def split_stage(source: str) -> tuple[str, list[tuple[str | None, str]]]:
    """The docstring, and the code after it as (section name, code) pairs; the code before the
    first section rule (the imports) has no name. The `if __name__ == "__main__":` block is left out."""
    tree = ast.parse(source)
    docstring_node, lines = tree.body[0], source.splitlines()
    run_as_program = [node for node in tree.body
                      if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)]
    for node in reversed(run_as_program):
        del lines[node.lineno - 1:node.end_lineno]
    sections: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in lines[docstring_node.end_lineno:]:
        rule = SECTION_RULE.match(line)
        if rule:
            sections.append((rule["name"], []))
        else:
            sections[-1][1].append(line)
    return ast.get_docstring(tree), [(name, "\n".join(body).strip("\n")) for name, body in sections]


def markdown(text: str) -> str:
    return "# %% [markdown]\n" + "\n".join(f"# {line}".rstrip() for line in text.splitlines()) + "\n"


def code(text: str) -> str:
    return f"# %%\n{text}\n"


def percent_text(stage: Path) -> str:
    """The stage as jupytext's percent format: one `# %%` marker per cell."""
    docstring, sections = split_stage(stage.read_text())
    title, _, rest = docstring.partition("\n")
    cells = [markdown(f"# {title}\n{rest}"), code(SET_UP)]
    for name, body in sections:
        if name is not None:
            cells.append(markdown(f"## {name}"))
        cells.append(code(body))
    cells += [markdown(RUN_TEXT.format(stem=stage.stem)), code(RUN_CODE.format(stem=stage.stem, args=RUN_ARGS))]
    return "\n".join(cells)


def stage_notebook(stage: Path):
    """The notebook of one stage, with the python3 kernel and cell ids that stay the same run after run."""
    import jupytext

    notebook = jupytext.reads(percent_text(stage), fmt="py:percent")
    notebook.metadata = {"kernelspec": KERNEL, "language_info": {"name": "python"}}
    for i, cell in enumerate(notebook.cells):
        cell.id = f"{stage.stem}-{i}"
    return notebook


# ---------------------------------------------------------------- writing and running
def write_notebooks(out_dir: Path = NOTEBOOKS_DIR, stages: list[Path] | None = None) -> list[Path]:
    import nbformat

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stage in stages or stage_files():
        path = out_dir / f"{stage.stem}.ipynb"
        nbformat.write(stage_notebook(stage), path)
        paths.append(path)
    return paths


def execute(path: Path, timeout: int = 600):
    """Run every cell of the notebook in a fresh python3 kernel started in the notebook's folder,
    as Jupyter would; a cell that raises stops it with nbclient's CellExecutionError."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=timeout, kernel_name=KERNEL["name"],
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return notebook


def main(argv=None) -> list[Path]:
    parser = OneLineParser(prog="python -m common.tools.notebooks", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=NOTEBOOKS_DIR, help="folder for the notebooks")
    parser.add_argument("--execute", action="store_true", help="run each notebook once and save its outputs")
    args = parser.parse_args(argv)
    paths = write_notebooks(args.out)
    print(f"wrote {len(paths)} notebooks to {args.out}")
    if args.execute:
        import nbformat

        for path in paths:
            start = time.perf_counter()
            nbformat.write(execute(path), path)
            print(f"ran {path.name} in {time.perf_counter() - start:.1f}s")
    return paths


if __name__ == "__main__":
    run_program(lambda: main(sys.argv[1:]))  # one line and an exit code for every ending
