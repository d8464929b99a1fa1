"""Every stage as a Jupyter notebook, written from the stage file and its lesson page (they stay the one source).

    make notebooks                    # notebooks/stage01_numpy.ipynb ... one per stage
    python -m common.tools.notebooks --execute   # the same, each then run once, its outputs saved in it

A notebook is the lesson page around the stage's code: the page's title and first paragraph, a
set-up cell, the page's "What changes" and "Why" as markdown cells, then the stage file cut where
its section rules (`# ---- model`, ...) cut it, a markdown heading and a code cell per section;
then a cell that trains one whole epoch on the built-in synthetic shapes and shows the figure of
that run inline (the curve falls, the accuracy ends far above chance), the page's "What to look
at" and "Fine print", an exercise cell that writes the stage's exercise into work/ and runs its
check, and the page's "Next". The lesson page's links point from notebooks/ (another stage's page:
that stage's notebook). A stage without a lesson page gets its docstring instead.

The cells are laid out in jupytext's "percent" text format and read into a notebook by jupytext.
The stage's `if __name__ == "__main__": main()` is left out: in a notebook `__name__` is
"__main__" too, and main() would parse the kernel's own command line.

The set-up cell looks for the course in the folder the notebook runs in, the folders above it
(a notebook opened from notebooks/ finds it one level up) and the folders in it, after unpacking
any .zip there (a course uploaded to Colab as a zip), and works from there. Where there is no
course, it clones COURSE_REPOSITORY when this checkout knows its public address (git's `origin`)
and installs requirements.txt with pip; otherwise it stops with one line that says what to do.
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
from common.tools.program import run_program
from common.tools.exercises.catalog import EXERCISES
from common.tools.lessons import LESSONS_DIR, SNIPPET, Lesson, read_lesson, relink, relative_to

NOTEBOOKS_DIR = ROOT / "notebooks"


def course_repository() -> str | None:
    """Where a notebook opened outside a checkout (Colab) clones the course from: the address this
    checkout was cloned from (git's `origin`), or None where it has none that another machine could use."""
    import subprocess

    try:
        url = subprocess.run(["git", "remote", "get-url", "origin"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        url = ""
    return shareable(url)


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
# One whole epoch of the synthetic shapes (2,000 steps of 4): seconds, and enough to learn them.
RUN_ARGS = ["--data", "synthetic", "--epochs", "1", "--out", "runs/notebook"]
SECTION_RULE = re.compile(r"^# -{8,} (?P<name>.+)$")
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}
NO_COURSE = ("This notebook needs the course's files: clone the course with git and open this notebook from its "
             "notebooks/ folder, or on Colab upload the course as a .zip (Files panel, left) and run this cell again.")

SET_UP = '''\
# Set-up: find the course (this folder, one above it as from notebooks/, or one in it, unpacking
# any .zip here first) and work from its root. Without it: clone it where its address is known.
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

COURSE_REPOSITORY = {repository!r}  # the public git address (None: the checkout that wrote this notebook had none)


def find_course(here):
    folders = [here, *here.parents, *sorted(p for p in here.glob("*/") if p.is_dir()),
               *sorted(p for p in here.glob("*/*/") if p.is_dir())]
    return next((f for f in folders if (f / "stages").is_dir() and (f / "common").is_dir()), None)


def unpack_course(here):
    """A course uploaded as a .zip (with its stages/ inside): unpacked beside it, once."""
    for archive in sorted(here.glob("*.zip")):
        with zipfile.ZipFile(archive) as z:
            if any(re.search(r"(^|/)stages/", name) for name in z.namelist()) and not (here / archive.stem).exists():
                z.extractall(here / archive.stem)


ROOT = find_course(Path.cwd())
if ROOT is None:
    unpack_course(Path.cwd())
    ROOT = find_course(Path.cwd())
if ROOT is None and COURSE_REPOSITORY:  # e.g. on Colab: fetch the course, and install its pinned packages
    ROOT = Path(Path(COURSE_REPOSITORY).stem).resolve()
    subprocess.run(["git", "clone", "--depth", "1", COURSE_REPOSITORY, str(ROOT)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-r", str(ROOT / "requirements.txt")],
                   check=True)
if ROOT is None:
    raise SystemExit({no_course!r})
os.chdir(ROOT)  # the stage reads data/ and writes runs/ relative to the course's root
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))'''

RUN_TEXT = """\
## Run it

One whole epoch on the course's built-in synthetic shapes (2,000 steps of 4 images), then the
figure the run's record keeps (`curves.png`): the training loss and each layer's gradient norm
per step, and the test accuracy. The synthetic shapes are far easier than CIFAR-10's photographs:
one epoch reaches about 95 % here, where the tutorial's network reaches 53-56 % on CIFAR-10.
The options are those of `python -m stages.{stem}`: change them and run the cell again."""

RUN_CODE = '''\
import json

from IPython.display import Image, display

from common.data import data_name

__file__ = str(ROOT / "stages" / "{stem}.py")  # main() names the run's record after the stage file
summary = main({args!r})
display(Image(filename=str(Path(summary["record"]) / "curves.png")))
print(f"{{summary['stage']}}: test accuracy {{100 * summary['test_accuracy']:.2f}}% after {{summary['steps']}} "
      f"steps, on {{data_name(summary['data'].get('source'))}}")'''

EXERCISE_TEXT = """\
## Do it yourself

`make exercise STAGE={n}` (the cell below does the same) writes `work/{stem}.py`: this stage with its
lesson taken out, {blanks} left for you to write. Fill them in, in that file, and run the cell again:
the check compares your functions with PyTorch{against} and names what disagrees. Until you have
written them it says "not done yet". `make solution STAGE={n}` shows the course's own answer."""

EXERCISE_CODE = '''\
from common.tools.exercises.catalog import work_file
from common.tools.exercises.report import main as exercise

if not work_file({n}).exists():  # written once: your work in it is never overwritten
    exercise(["exercise", "{n}"])
exit_code = exercise(["check", "{n}"])  # 0 once every function passes, as `make check` exits'''


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


class Prose:
    """The lesson page's parts as markdown for the notebook of `stem`, its links pointing from out_dir."""

    def __init__(self, lesson: Lesson | None, out_dir: Path, stems: set[str], lessons_dir: Path):
        self.lesson, self.elsewhere = lesson, relative_to(out_dir)
        self.stems, self.lessons_dir = stems, lessons_dir.resolve()

    def target_for(self, file: Path, anchor: str) -> str:
        if file.parent == self.lessons_dir and file.suffix == ".md" and file.stem in self.stems:
            return f"{file.stem}.ipynb{anchor}"  # another stage's lesson: its notebook, beside this one
        return self.elsewhere(file, anchor)

    def body(self, heading: str) -> str:
        """The section's markdown, its links pointing from the notebook; "" where the page lacks it."""
        if self.lesson is None or heading not in self.lesson.sections:
            return ""
        return relink(self.lesson.sections[heading], self.lesson, self.target_for)

    def section(self, heading: str) -> list[str]:
        """The section as one markdown cell, or nothing where the page lacks it."""
        text = self.body(heading)
        return [markdown(f"## {heading}\n\n{text}")] if text else []

    def opening(self, docstring: str) -> str:
        """The title and first paragraph; without a lesson page, the docstring."""
        if self.lesson is None:
            title, _, rest = docstring.partition("\n")
            return markdown(f"# {title}\n{rest}")
        return markdown(f"# {self.lesson.title}\n\n" + relink(self.lesson.intro, self.lesson, self.target_for))


def stage_cells(stage: Path, docstring: str, sections: list) -> list[str]:
    """The stage file's code, a heading and a cell per section, under its docstring."""
    cells = [markdown(f"## The code: `stages/{stage.name}`\n\nThe stage file, cut where its section rules cut it. "
                      f"Its docstring:\n\n```text\n{docstring}\n```")]
    for name, body in sections:
        if name is not None:
            cells.append(markdown(f"### {name}"))
        cells.append(code(body))
    return cells


def run_text(stage: Path, prose: Prose) -> str:
    """The notebook's run, then how the lesson page runs the stage from a terminal."""
    terminal = prose.body("Run it")
    return markdown(RUN_TEXT.format(stem=stage.stem)
                    + (f"\n\nFrom a terminal, as the lesson page runs it:\n\n{terminal}" if terminal else ""))


def try_it_cells(prose: Prose) -> list[str]:
    """The page's "Try it": its words as markdown, each snippet as a code cell to run and change,
    and what the page shows it printing."""
    text = prose.body("Try it")
    cells, words = [], ["## Try it"]
    for snippet in SNIPPET.finditer(text):
        words.append(text[:snippet.start()] if not cells else "")
        cells += [markdown("\n\n".join(w.strip() for w in words if w.strip())), code(snippet["code"].rstrip("\n")),
                  markdown(f"The lesson page shows it printing:\n\n```text\n{snippet['output']}```")]
        text, words = text[snippet.end():], []
    return cells


def exercise_cells(stage: Path) -> list[str]:
    n = int(stage.stem[5:7])
    if n not in EXERCISES:
        return [markdown(f"## Do it yourself\n\nThis stage has no exercise yet (`make exercise` covers stages "
                         f"{min(EXERCISES)} to {max(EXERCISES)}).")]
    blanks = ", ".join(f"`{name}`" for name in EXERCISES[n].blanks)
    text = EXERCISE_TEXT.format(n=n, stem=stage.stem, blanks=blanks, against=f" and stage {n - 1}" if n > 1 else "")
    return [markdown(text), code(EXERCISE_CODE.format(n=n))]


def percent_text(stage: Path, out_dir: Path = NOTEBOOKS_DIR, lessons_dir: Path = LESSONS_DIR) -> str:
    """The notebook as jupytext's percent format: one `# %%` marker per cell."""
    docstring, sections = split_stage(stage.read_text())
    prose = Prose(read_lesson(stage.stem, lessons_dir), out_dir, {p.stem for p in stage_files()}, lessons_dir)
    set_up = SET_UP.format(repository=COURSE_REPOSITORY, no_course=NO_COURSE)
    cells = [prose.opening(docstring), code(set_up), *prose.section("What changes"), *prose.section("Why"),
             *try_it_cells(prose),
             *stage_cells(stage, docstring, sections),
             run_text(stage, prose), code(RUN_CODE.format(stem=stage.stem, args=RUN_ARGS)),
             *prose.section("What to look at"), *prose.section("Fine print"), *exercise_cells(stage),
             *prose.section("Next")]
    return "\n".join(cells)


def stage_notebook(stage: Path, out_dir: Path = NOTEBOOKS_DIR, lessons_dir: Path = LESSONS_DIR):
    """The notebook of one stage, with the python3 kernel and cell ids that stay the same run after run."""
    import jupytext

    notebook = jupytext.reads(percent_text(stage, out_dir, lessons_dir), fmt="py:percent")
    notebook.metadata = {"kernelspec": KERNEL, "language_info": {"name": "python"}}
    for i, cell in enumerate(notebook.cells):
        cell.id = f"{stage.stem}-{i}"
    return notebook


# ---------------------------------------------------------------- writing and running
def write_notebooks(out_dir: Path = NOTEBOOKS_DIR, stages: list[Path] | None = None,
                    lessons_dir: Path = LESSONS_DIR) -> list[Path]:
    import nbformat

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stage in stages or stage_files():
        path = out_dir / f"{stage.stem}.ipynb"
        nbformat.write(stage_notebook(stage, out_dir, lessons_dir), path)
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
    parser.add_argument("--lessons", type=Path, default=LESSONS_DIR, help="the lesson pages, stageNN_<name>.md")
    parser.add_argument("--execute", action="store_true", help="run each notebook once and save its outputs")
    args = parser.parse_args(argv)
    paths = write_notebooks(args.out, lessons_dir=args.lessons)
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
