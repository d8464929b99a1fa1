"""A misspelt option or choice names the nearest one, in the stages' parser and the tools' (both
common/cli.py's OneLineParser): `--bach-size` -> "did you mean --batch-size?"."""
from __future__ import annotations

import subprocess
import sys

import pytest

from common.errors import BAD_INPUT
from tests.helpers import EVENT_TIMEOUT, ROOT

MISSPELT = {  # the program, what was typed, the suggestion
    "a stage's option": ("stages.stage06_optim", ["--bach-size", "4"], "; did you mean --batch-size?"),
    "a stage's option=value": ("stages.stage07_dataloader", ["--wokers=2"], "; did you mean --workers?"),
    "a stage's choice": ("stages.stage06_optim", ["--data", "synthtic"], "; did you mean 'synthetic'?"),
    "a tool's option": ("common.tools.compare", ["--stepz", "2"], "; did you mean --steps?"),
    "the course runner's option": ("common.tools.course", ["--stagess", "3"], "; did you mean --stages?"),
    "torchrun's option": ("common.tools.torchrun", ["--nproc-pernode", "2", "-m", "stages.stage11_distributed"],
                          "; did you mean --nproc-per-node?"),
}


@pytest.mark.parametrize("module,argv,suggestion", MISSPELT.values(), ids=MISSPELT.keys())
def test_a_misspelt_option_names_the_nearest_one(module, argv, suggestion):
    result = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, capture_output=True, text=True,
                            timeout=EVENT_TIMEOUT)
    assert result.returncode == BAD_INPUT and "Traceback" not in result.stderr, result.stderr[-800:]
    [line] = result.stderr.strip().splitlines()
    assert line.endswith(f"{suggestion} (see --help)")


def test_an_option_like_none_suggests_nothing():
    result = subprocess.run([sys.executable, "-m", "stages.stage06_optim", "--zzz"], cwd=ROOT, capture_output=True,
                            text=True, timeout=EVENT_TIMEOUT)
    assert result.returncode == BAD_INPUT
    assert result.stderr.strip() == "python -m stages.stage06_optim: error: unrecognized arguments: --zzz (see --help)"
