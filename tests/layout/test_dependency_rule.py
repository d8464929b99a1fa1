"""The rooms of the course and who may import whom (docs/contributing.md), read from every import."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

RUNTIME = "runtime"
ROOMS_ALLOWED = {  # a room -> the rooms of the course it may import
    "stages": {RUNTIME},
    RUNTIME: {RUNTIME},
    "harness": {RUNTIME, "harness"},
    "tools": {RUNTIME, "harness", "stages", "tools"},
    "benchmarks": {RUNTIME, "harness", "stages", "tools", "benchmarks"},
}


def room_of_module(name: str) -> str | None:
    """The room of an imported module of the course, or None for a library."""
    top = name.split(".")
    if top[0] == "stages":
        return "stages"
    if top[0] in ("tests", "conftest"):
        return "tests"
    if top[0] == "benchmarks":
        return "benchmarks"
    if top[0] == "common":
        return {"harness": "harness", "tools": "tools"}.get(top[1] if len(top) > 1 else "", RUNTIME)
    return None


def room_of_file(path: Path) -> str:
    return room_of_module(".".join(path.relative_to(ROOT).with_suffix("").parts))


def course_files() -> list[Path]:
    return sorted(p for folder in ("stages", "common", "benchmarks") for p in (ROOT / folder).rglob("*.py"))


def imports_of(source: str) -> list[tuple[int, str]]:
    """Every module a file imports, at any depth (an import inside a function counts too)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "common":  # `from common import tools` names a room by its alias
                found += [(node.lineno, f"common.{alias.name}") for alias in node.names]
    return found


def broken_rules(sources: dict[Path, str]) -> list[str]:
    broken = []
    for path, source in sources.items():
        mine = room_of_file(path)
        for line, module in imports_of(source):
            theirs = room_of_module(module)
            if theirs is not None and theirs not in ROOMS_ALLOWED[mine]:
                broken.append(f"{path.relative_to(ROOT)}:{line}: {mine} imports {module} ({theirs})")
    return broken


def test_every_import_follows_the_rule():
    assert broken_rules({path: path.read_text() for path in course_files()}) == []


@pytest.mark.parametrize("room, line", [
    ("stages/stage99_example.py", "from common.harness import driver"),
    ("common/run/example.py", "from common.tools import course"),
    ("common/data.py", "from stages import stage01_numpy"),
    ("common/harness/example.py", "import tests.helpers"),
    ("common/tools/example.py", "from tests.helpers import ROOT"),
])
def test_the_rule_catches_an_import_that_runs_back_up(room, line):
    source = f"import numpy\n\n\ndef f():\n    {line.strip()}\n"
    assert len(broken_rules({ROOT / room: source})) == 1


def test_nothing_outside_the_tests_reads_a_file_in_tests():
    """`make test` runs the tests (common/tools/make.py names them for pytest); nothing else names tests/."""
    product = [p for p in course_files() if p != ROOT / "common" / "tools" / "make.py"]
    mentions = [f"{p.relative_to(ROOT)}:{n}" for p in product + [ROOT / "Makefile"]
                for n, line in enumerate(p.read_text().splitlines(), 1)
                if re.search(r"""["'/]tests["'/]|"tests"|\btests\.""", line) and "testpaths" not in line]
    assert mentions == []
