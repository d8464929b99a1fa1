"""`make help`: every command the Makefile has, grouped by what a learner is doing, in aligned columns."""
from __future__ import annotations

import re

from tests.helpers import ROOT, make

GROUPS = ["learn", "run", "check", "tools"]
# Targets that help names before their rule is in this branch: `make mistakes` comes with the
# gallery of mistakes, written on another branch.
ANNOUNCED = {"mistakes"}
ROW = re.compile(r"^  (make (?P<target>[a-z-]+)\b.*?) {2,}(?P<what>\S.*)$")


def rules() -> set[str]:
    """The targets the Makefile has a rule for (the environment's marker file aside)."""
    return set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))


def printed_help() -> str:
    done = make(ROOT, "help")
    assert done.returncode == 0, done.stderr
    return done.stdout


def rows_by_group(text: str) -> dict[str, list[re.Match]]:
    groups: dict[str, list[re.Match]] = {}
    for line in text.splitlines():
        if line in GROUPS:
            groups[line] = []
        elif line.startswith("  "):
            row = ROW.match(line)
            assert row, f"not a command and its description: {line!r}"
            groups[list(groups)[-1]].append(row)
    return groups


def test_help_is_grouped_into_learn_run_check_and_tools():
    groups = rows_by_group(printed_help())
    assert list(groups) == GROUPS
    assert all(groups.values()), "no empty group"
    learn = {row["target"] for row in groups["learn"]}
    assert {"diff", "exercise", "check", "solution", "mistakes"} <= learn


def test_help_names_every_target_of_the_makefile_and_no_other():
    named = {row["target"] for rows in rows_by_group(printed_help()).values() for row in rows}
    assert rules() - named == {"help"}, "targets missing from make help"
    assert named - rules() <= ANNOUNCED, "make help names targets the Makefile does not have"
    assert "clean" in named and "help" not in named


def test_the_descriptions_start_in_one_column():
    text = printed_help()
    rows = [row for rows in rows_by_group(text).values() for row in rows]
    columns = {row.start("what") for row in rows}
    assert len(columns) == 1, f"descriptions start at columns {sorted(columns)}"
    assert max(len(line) for line in text.splitlines()) <= 100
