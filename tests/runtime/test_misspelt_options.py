"""A misspelt option or choice names the nearest one, in the stages' parser and the tools' (both
common/cli.py's OneLineParser): `--bach-size` -> "did you mean --batch-size?"."""
from __future__ import annotations

import importlib

import pytest

from common.errors import BAD_INPUT

MISSPELT = {  # the program, what was typed, the suggestion
    "a stage's option": ("stages.stage06_optim", ["--bach-size", "4"], "; did you mean --batch-size?"),
    "a stage's option=value": ("stages.stage07_dataloader", ["--wokers=2"], "; did you mean --workers?"),
    "a stage's choice": ("stages.stage06_optim", ["--data", "synthtic"], "; did you mean 'synthetic'?"),
    "a tool's option": ("common.tools.compare", ["--stepz", "2"], "; did you mean --steps?"),
    "the course runner's option": ("common.tools.course", ["--stagess", "3"], "; did you mean --stages?"),
    "torchrun's option": ("common.tools.torchrun", ["--nproc-pernode", "2", "-m", "stages.stage11_distributed"],
                          "; did you mean --nproc-per-node?"),
}


def refused(module: str, argv: list[str], capsys) -> list[str]:
    """The lines main(argv) of the program `module` wrote before it exited with code 2 (in this
    process: the parser answers before any work; test_command_line.py runs a real process)."""
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == BAD_INPUT and "Traceback" not in err, err[-800:]
    return err.strip().splitlines()


@pytest.mark.parametrize("module,argv,suggestion", MISSPELT.values(), ids=MISSPELT.keys())
def test_a_misspelt_option_names_the_nearest_one(module, argv, suggestion, capsys):
    [line] = refused(module, argv, capsys)
    assert line.endswith(f"{suggestion} (see --help)")


def test_an_option_like_none_suggests_nothing(capsys):
    assert refused("stages.stage06_optim", ["--zzz"], capsys) == [
        "python -m stages.stage06_optim: error: unrecognized arguments: --zzz (see --help)"]
