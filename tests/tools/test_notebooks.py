"""Every stage as a notebook: cut from the stage file itself, and run headless, so that none goes stale."""
from __future__ import annotations

import ast
import re
import time
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest

from common.harness import stage_names
from common.tools import notebooks
from tests.helpers import copy_of_the_course, make

STAGE_FILES = notebooks.stage_files()
STAGES = [pytest.param(path, id=path.stem, marks=getattr(pytest.mark, f"stage{int(path.stem[5:7])}"))
          for path in STAGE_FILES]


def stage_code_lines(path) -> list[str]:
    """The stage's lines after its docstring, without its section rules, its
    `if __name__ == "__main__":` block and blank lines: what the notebook's code cells must hold."""
    source = path.read_text()
    lines = source.splitlines()[ast.parse(source).body[0].end_lineno:]
    main_block = lines.index('if __name__ == "__main__":')
    lines = lines[:main_block] + [line for line in lines[main_block + 1:] if not line.startswith("    ")]
    return [line for line in lines if line.strip() and not re.match(r"# -{8,} ", line)]


def test_there_is_a_notebook_for_every_stage():
    assert [f"stages.{p.stem}" for p in STAGE_FILES] == stage_names()


@pytest.mark.parametrize("path", STAGES)
def test_a_notebook_is_its_stage_cut_at_the_section_rules(path):
    notebook = notebooks.stage_notebook(path)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    cells = notebook.cells
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert cells[0].cell_type == "markdown" and cells[0].source == "# " + docstring
    assert cells[1].cell_type == "code" and notebooks.COURSE_REPOSITORY in cells[1].source
    stage_cells = cells[2:-2]  # between the set-up and the run at the end
    rules = re.findall(r"^# -{8,} (.+)$", path.read_text(), flags=re.MULTILINE)
    assert [c.source for c in stage_cells if c.cell_type == "markdown"] == [f"## {name}" for name in rules]
    code = "\n".join(c.source for c in stage_cells if c.cell_type == "code").splitlines()
    assert [line for line in code if line.strip()] == stage_code_lines(path)
    assert [c.cell_type for c in cells[-2:]] == ["markdown", "code"]
    assert f"main({notebooks.RUN_ARGS!r})" in cells[-1].source and "Image(" in cells[-1].source


def test_make_notebooks_writes_one_notebook_per_stage(tmp_path):
    course = copy_of_the_course(tmp_path)
    done = make(course, "notebooks")
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in (course / "notebooks").iterdir())
    assert written == [f"{p.stem}.ipynb" for p in STAGE_FILES]
    for name in written:
        nbformat.validate(nbformat.read(course / "notebooks" / name, as_version=4))


@pytest.fixture(scope="module")
def course_with_notebooks(tmp_path_factory):
    """A copy of the course with its notebooks in notebooks/, where a learner opens them."""
    course = copy_of_the_course(tmp_path_factory.mktemp("course"))
    notebooks.write_notebooks(course / "notebooks", [course / "stages" / p.name for p in STAGE_FILES])
    return course


def timed_execute(path):
    start = time.perf_counter()
    return notebooks.execute(path), time.perf_counter() - start


@pytest.fixture(scope="module")
def executed(course_with_notebooks, request):
    """The notebooks of the headless tests this session runs, executed two at a time as they are
    asked for: each runs in a kernel of its own, so two keep two cores busy while this process
    only waits for them."""
    wanted = [item.callspec.params["path"] for item in request.session.items
              if getattr(item, "originalname", None) == "test_every_notebook_runs_headless_and_shows_its_run_inline"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {path.stem: pool.submit(timed_execute, course_with_notebooks / "notebooks" / f"{path.stem}.ipynb")
               for path in wanted}


@pytest.mark.slow
@pytest.mark.parametrize("path", STAGES)
def test_every_notebook_runs_headless_and_shows_its_run_inline(path, course_with_notebooks, executed):
    """Run as Jupyter runs it, in a python3 kernel started in notebooks/; the set-up cell finds
    the course one folder up, so it neither clones nor installs anything (there is no network)."""
    notebook, seconds = executed[path.stem].result()
    print(f"{path.stem}: {seconds:.1f}s")
    set_up, run = notebook.cells[1], notebook.cells[-1]
    assert set_up.outputs == [], "the set-up cell cloned or installed something"
    assert not (course_with_notebooks / "notebooks" / "pytorch-by-refactoring").exists()
    images = [o for o in run.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1, [o.get("output_type") for o in run.outputs]
    assert any("test accuracy" in o.get("text", "") for o in run.outputs if o.output_type == "stream")
    record = course_with_notebooks / "runs" / "notebook" / path.stem
    assert len(list(record.glob("*/curves.png"))) == 1, "the run wrote its record in the course's runs/notebook"


def test_a_notebook_carries_the_courses_address_without_credentials_or_local_paths():
    assert notebooks.shareable("https://user:token@github.com/o/course.git") == "https://github.com/o/course.git"
    assert notebooks.shareable("ssh://git@example.org:2222/o/course.git") == "ssh://git@example.org:2222/o/course.git"
    assert notebooks.shareable("git@github.com:o/course.git") == "git@github.com:o/course.git"
    assert notebooks.shareable("/work/course") is None and notebooks.shareable("") is None
