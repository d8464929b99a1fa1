"""Where the stages are, and loading them by number or name."""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]  # the course's folder: stages/, common/, tests/
STAGES_DIR = ROOT / "stages"


def stage_files() -> list[Path]:
    """The stages' files, in course order: [stages/stage01_numpy.py, ...]."""
    return sorted(STAGES_DIR.glob("stage[0-9][0-9]_*.py"))


def stage_file(number: int) -> Path | None:
    """stages/stageNN_*.py for stage `number`, or None when there is no such stage."""
    return next((p for p in stage_files() if p.name.startswith(f"stage{number:02d}_")), None)


def stage_names() -> list[str]:
    """Module names of the stages, in course order: ["stages.stage01_numpy", ...]."""
    return [f"stages.{p.stem}" for p in stage_files()]


def load_stage(which: int | str) -> ModuleType:
    """A stage by number (3) or module name ("stages.stage03_autograd")."""
    if isinstance(which, int) or str(which).isdigit():
        matches = [n for n in stage_names() if n.startswith(f"stages.stage{int(which):02d}_")]
        if not matches:
            raise ValueError(f"no stage {which}; stages are {', '.join(stage_names())}")
        which = matches[0]
    return importlib.import_module(str(which))


def stage_number(name: str) -> int:
    """"stages.stage03_autograd", "stage03_autograd" or a path of it -> 3."""
    return int(Path(str(name)).stem.rpartition(".")[2][5:7])


def stage_options(stage: ModuleType | int | str, argv=()) -> argparse.Namespace:
    """A stage's options as its main() would parse them, for tools that call its helpers."""
    from common.cli import parse_args

    stage = stage if isinstance(stage, ModuleType) else load_stage(stage)
    return parse_args(stage.__file__, stage.__doc__, list(argv), getattr(stage, "add_options", None))

