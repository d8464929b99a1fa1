"""Stage 13's claims (torch.compile) that need no compiling: how the model is compiled, and what the
stage does without a C++ compiler. The compiled stage's equivalence with eager lives in
tests/equivalence/."""
from __future__ import annotations

import pytest
import torch

from common.harness import load_stage
from tests.helpers import reference_net, run_main

pytestmark = pytest.mark.stage13


def test_module_compile_compiles_in_place_so_the_state_dict_keeps_the_nets_names():
    """model.compile() returns None and keeps the module, so saving and DDP see the plain Net;
    torch.compile(model) returns a wrapper whose state_dict names start with _orig_mod."""
    model = reference_net(13, "float32")
    names = list(model.state_dict())
    assert model.compile() is None
    assert list(model.state_dict()) == names
    wrapper = torch.compile(reference_net(13, "float32"))
    assert wrapper is not model and all(name.startswith("_orig_mod.") for name in wrapper.state_dict())


@pytest.mark.slow  # a process of its own, or compiling: seconds
def test_without_a_cpp_compiler_the_stage_says_so_and_runs_eager(tmp_path, monkeypatch):
    stage = load_stage(13)
    monkeypatch.setattr(stage.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert not stage.can_compile(torch.device("cpu"))
    assert stage.can_compile(torch.device("cuda")), "on a GPU inductor writes Triton, not C++"
    run = run_main(13, tmp_path, "--max-steps", "2")
    assert "torch.compile: no C++ compiler (inductor needs one on a CPU): running eager" in run.out
