"""Every stage as a notebook: the lesson page around the stage's code, a run that learns, an exercise
that is checked; cut from the stage file itself and run headless, so that none goes stale."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest

from common.data import CHANCE
from common.harness import stage_names
from common.tools import notebooks
from common.tools.exercises.catalog import EXERCISES
from tests.helpers import copy_of_the_course, make

STAGE_FILES = notebooks.stage_files()
STAGES = [pytest.param(path, id=path.stem, marks=getattr(pytest.mark, f"stage{int(path.stem[5:7])}"))
          for path in STAGE_FILES]
# Executed whole (each trains an epoch in a kernel of its own): the two ends of the course, numpy
# alone (1) and torch.compile in a process group (13); every other notebook is compiled, below.
EXECUTED = [STAGES[0], STAGES[-1]]
LEARNED = 5 * CHANCE  # one synthetic epoch reaches about 95 %: half of that is learning, not luck


def stage_code_lines(path) -> list[str]:
    """The stage's lines after its docstring, without its section rules, its
    `if __name__ == "__main__":` block and blank lines: what the notebook's code cells must hold."""
    source = path.read_text()
    lines = source.splitlines()[ast.parse(source).body[0].end_lineno:]
    main_block = lines.index('if __name__ == "__main__":')
    lines = lines[:main_block] + [line for line in lines[main_block + 1:] if not line.startswith("    ")]
    return [line for line in lines if line.strip() and not re.match(r"# -{8,} ", line)]


def the_stage_cells(cells) -> list:
    """From the heading "## The code" to the run's heading."""
    start = next(i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith("## The code"))
    end = next(i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith("## Run it"))
    return cells[start + 1:end]


def lesson_page(stem: str, following: str | None) -> str:
    after = f"[the next stage]({following}.md)" if following else "the end"
    return (f"# Stage 6: the lesson of {stem}\n\nIts first paragraph, see [the tools](../tools.md#make-diff).\n\n"
            "## What changes\n\n```python\n## a comment in code\nloss = criterion(model(x), y)\n```\n\n"
            "## Why\n\nBecause.\n\n## Try it\n\nThis:\n\n```python\nprint(6 * 7)\n```\n\nIt prints:\n\n```text\n42\n```\n\n"
            "## Run it\n\n```sh\nmake run STAGE=6\n```\n\n## What to look at\n\n- `step 1:`\n\n"
            f"## Fine print\n\n- a claim.\n\n## Next\n\nOn to {after}.\n")


def test_there_is_a_notebook_for_every_stage():
    assert [f"stages.{p.stem}" for p in STAGE_FILES] == stage_names()


@pytest.mark.parametrize("path", STAGES)
def test_a_notebook_holds_its_stage_cut_at_the_section_rules(path, tmp_path):
    notebook = notebooks.stage_notebook(path, tmp_path / "notebooks", lessons_dir=tmp_path / "no-lessons")
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    cells = notebook.cells
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert cells[0].cell_type == "markdown" and cells[0].source == "# " + docstring, "no lesson page: the docstring"
    assert cells[1].cell_type == "code" and "COURSE_REPOSITORY = " in cells[1].source
    stage_cells = the_stage_cells(cells)
    rules = re.findall(r"^# -{8,} (.+)$", path.read_text(), flags=re.MULTILINE)
    assert [c.source for c in stage_cells if c.cell_type == "markdown"] == [f"### {name}" for name in rules]
    code = "\n".join(c.source for c in stage_cells if c.cell_type == "code").splitlines()
    assert [line for line in code if line.strip()] == stage_code_lines(path)
    [run] = [c for c in cells if c.cell_type == "code" and "main(" in c.source and "Image(" in c.source]
    assert f"main({notebooks.RUN_ARGS!r})" in run.source
    assert "--max-steps" not in notebooks.RUN_ARGS, "a whole epoch"
    assert notebooks.RUN_ARGS[:4] == ["--data", "synthetic", "--epochs", "1"]
    number = int(path.stem[5:7])
    checks = [c for c in cells if c.cell_type == "code" and f'exercise(["check", "{number}"])' in c.source]
    assert len(checks) == (1 if number in EXERCISES else 0)


def test_the_lesson_pages_text_is_the_markdown_around_the_code(tmp_path):
    lessons, stages = tmp_path / "docs" / "stages", STAGE_FILES
    lessons.mkdir(parents=True)
    (tmp_path / "docs" / "tools.md").write_text("# Tools\n")
    k = next(i for i, p in enumerate(stages) if p.stem == "stage06_optim")
    (lessons / "stage06_optim.md").write_text(lesson_page("stage06_optim", stages[k + 1].stem))
    out = tmp_path / "notebooks"
    cells = notebooks.stage_notebook(stages[k], out, lessons_dir=lessons).cells
    headings = [c.source.splitlines()[0] for c in cells if c.cell_type == "markdown"]
    assert headings[0] == "# Stage 6: the lesson of stage06_optim"
    order = [h for h in headings if h.startswith("## ")]
    assert order == ["## What changes", "## Why", "## Try it", "## The code: `stages/stage06_optim.py`",
                     "## Run it", "## What to look at", "## Fine print", "## Do it yourself", "## Next"]
    try_it = next(i for i, c in enumerate(cells) if c.source.startswith("## Try it"))
    assert "This:" in cells[try_it].source, "the page's words before the snippet"
    assert cells[try_it + 1].cell_type == "code" and cells[try_it + 1].source == "print(6 * 7)", "a cell to run"
    assert "```text\n42\n```" in cells[try_it + 2].source, "and what the page shows it printing"
    what_changes = next(c.source for c in cells if c.source.startswith("## What changes"))
    assert "## a comment in code" in what_changes, "a ## inside a fenced block stays in its section"
    run_it = next(c.source for c in cells if c.source.startswith("## Run it"))
    assert "One whole epoch" in run_it and "make run STAGE=6" in run_it, "the notebook's run, then the page's"
    assert f"({stages[k + 1].stem}.ipynb)" in cells[-1].source, "the next lesson: the next notebook"
    assert "(../docs/tools.md#make-diff)" in cells[0].source, "other links point from notebooks/"
    assert (out / "../docs/tools.md").resolve() == (tmp_path / "docs" / "tools.md").resolve()


# ---------------------------------------------------------------- the set-up cell
def set_up_in(folder, repository=None) -> subprocess.CompletedProcess:
    source = notebooks.SET_UP.format(repository=repository, no_course=notebooks.NO_COURSE)
    return subprocess.run([sys.executable, "-c", source + "\nprint('course at', ROOT)"], cwd=folder,
                          capture_output=True, text=True, timeout=60)


def test_without_the_course_or_its_address_the_set_up_says_what_to_do_in_one_line(tmp_path):
    done = set_up_in(tmp_path)
    assert done.returncode != 0 and done.stderr.strip() == notebooks.NO_COURSE
    assert "OWNER" not in notebooks.SET_UP, "no placeholder to edit"
    assert "clone the course" in notebooks.NO_COURSE and ".zip" in notebooks.NO_COURSE


def test_a_course_uploaded_as_a_zip_is_unpacked_and_found(tmp_path):
    with zipfile.ZipFile(tmp_path / "pytorch-course.zip", "w") as z:
        for name in ("pytorch-course/stages/__init__.py", "pytorch-course/common/__init__.py"):
            z.writestr(name, "")
    done = set_up_in(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"course at {tmp_path / 'pytorch-course' / 'pytorch-course'}"


def test_a_notebook_carries_the_courses_address_without_credentials_or_local_paths():
    assert notebooks.shareable("https://user:token@github.com/o/course.git") == "https://github.com/o/course.git"
    assert notebooks.shareable("ssh://git@example.org:2222/o/course.git") == "ssh://git@example.org:2222/o/course.git"
    assert notebooks.shareable("git@github.com:o/course.git") == "git@github.com:o/course.git"
    assert notebooks.shareable("/work/course") is None and notebooks.shareable("") is None


def test_make_notebooks_writes_one_notebook_per_stage(tmp_path):
    course = copy_of_the_course(tmp_path)
    done = make(course, "notebooks")
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in (course / "notebooks").iterdir())
    assert written == [f"{p.stem}.ipynb" for p in STAGE_FILES]
    for name in written:
        nbformat.validate(nbformat.read(course / "notebooks" / name, as_version=4))


# ---------------------------------------------------------------- every notebook, executed
@pytest.fixture(scope="module")
def course_with_notebooks(tmp_path_factory):
    """A copy of the course with its notebooks in notebooks/, where a learner opens them."""
    course = copy_of_the_course(tmp_path_factory.mktemp("course"))
    notebooks.write_notebooks(course / "notebooks", [course / "stages" / p.name for p in STAGE_FILES])
    return course


def printed(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def timed_execute(path):
    start = time.perf_counter()
    return notebooks.execute(path), time.perf_counter() - start


@pytest.fixture(scope="module")
def executed(course_with_notebooks, request):
    """The notebooks of the headless tests this session runs, executed two at a time as they are
    asked for: each runs in a kernel of its own, so two keep two cores busy while this process
    only waits for them."""
    wanted = [item.callspec.params["path"] for item in request.session.items
              if getattr(item, "originalname", None) == "test_a_notebook_of_each_kind_runs_headless_learns_and_checks_its_exercise"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {path.stem: pool.submit(timed_execute, course_with_notebooks / "notebooks" / f"{path.stem}.ipynb")
               for path in wanted}


@pytest.mark.parametrize("path", STAGES)
def test_every_notebooks_code_is_python_that_compiles(path, tmp_path):
    """What the notebooks not executed below are checked for: each code cell is valid Python."""
    for cell in notebooks.stage_notebook(path, tmp_path / "notebooks").cells:
        if cell.cell_type == "code":
            compile(cell.source, f"{path.stem}.ipynb", "exec")


@pytest.mark.slow
@pytest.mark.parametrize("path", EXECUTED)
def test_a_notebook_of_each_kind_runs_headless_learns_and_checks_its_exercise(path, course_with_notebooks, executed):
    """Run as Jupyter runs it, in a python3 kernel started in notebooks/; the set-up cell finds
    the course one folder up, so it neither clones nor installs anything (there is no network)."""
    notebook, seconds = executed[path.stem].result()
    print(f"{path.stem}: {seconds:.1f}s")
    set_up = notebook.cells[1]
    assert set_up.outputs == [], "the set-up cell cloned or installed something"
    [run] = [c for c in notebook.cells if c.cell_type == "code" and "Image(" in c.source]
    images = [o for o in run.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1, [o.get("output_type") for o in run.outputs]
    result = re.search(r"test accuracy ([\d.]+)% after (\d+) steps, on (.+)", printed(run))
    assert result, printed(run)[-500:]
    assert float(result[1]) / 100 > LEARNED, "one whole epoch learns the synthetic shapes"
    assert int(result[2]) == 2000 and result[3].strip() == "synthetic shapes, not CIFAR-10"
    record = course_with_notebooks / "runs" / "notebook" / path.stem
    assert len(list(record.glob("*/curves.png"))) == 1, "the run wrote its record in the course's runs/notebook"
    number = int(path.stem[5:7])
    if number in EXERCISES:
        [check] = [c for c in notebook.cells if c.cell_type == "code" and '"check"' in c.source]
        report = printed(check)
        assert f"checking work/{path.stem}.py against PyTorch" in report and "verdict: not yet" in report, report
        assert (course_with_notebooks / "work" / f"{path.stem}.py").exists()
