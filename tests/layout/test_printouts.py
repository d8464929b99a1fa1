"""Each teaching printout lives in the stage whose lesson it is: a later stage never carries an
earlier stage's printer, and only the first step's line is in every stage (the same numbers in
stages 1-6 are the equivalence made visible)."""
from __future__ import annotations

import ast
from collections import defaultdict

from common.harness import stage_files

IN_EVERY_STAGE = "show_first_step"


def printers() -> dict[str, dict[str, str]]:
    """{printer name: {stage file name: its source}} for every top-level `def show_...`."""
    found = defaultdict(dict)
    for path in stage_files():
        source = path.read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("show_"):
                found[node.name][path.name] = ast.get_source_segment(source, node)
    return found


def test_every_stage_prints_its_first_step_with_the_same_printer():
    first = printers()[IN_EVERY_STAGE]
    assert sorted(first) == [p.name for p in stage_files()]
    assert len(set(first.values())) == 1, "one text in every stage: a diff never shows it"


def test_every_other_printer_lives_in_one_stage_only():
    carried = {name: sorted(stages) for name, stages in printers().items()
               if name != IN_EVERY_STAGE and len(stages) > 1}
    assert carried == {}
