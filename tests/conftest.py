"""Shared fixtures: the stages as pytest parameters, each carrying its own marker (-m stage3)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common.harness import stage_names  # noqa: E402
from common.weights import reference_params  # noqa: E402

STAGES = stage_names()


def stage_number(name: str) -> int:
    return int(name.split(".stage")[1][:2])


def stage_param(name: str):
    """A stage module name as a test parameter, marked `stageN` so -m can select it."""
    return pytest.param(name, id=name.split(".")[1], marks=getattr(pytest.mark, f"stage{stage_number(name)}"))


def stage_pair_param(previous: str, current: str):
    return pytest.param(previous, current, id=f"{stage_number(previous)}->{stage_number(current)}",
                        marks=getattr(pytest.mark, f"stage{stage_number(current)}"))


ALL_STAGES = [stage_param(n) for n in STAGES]
CONSECUTIVE_STAGES = [stage_pair_param(a, b) for a, b in zip(STAGES, STAGES[1:])]


@pytest.fixture(scope="session")
def params():
    return reference_params(0)
