"""--device: `auto` takes whatever accelerator torch.accelerator reports (CUDA, MPS, XPU, ...), and
what cannot work on it is one line and exit code 2 before training. The accelerators are
pretended (tests.helpers.pretend_accelerator): what a stage decides, not what it computes."""
from __future__ import annotations

import pytest
import torch

from common.harness import load_stage, stage_options
from tests.helpers import is_distributed, pretend_accelerator, stages_where, takes_option

DEVICE_STAGES = stages_where(lambda stage: takes_option("--device")(stage) and not is_distributed(stage))
PROCESS_STAGES = stages_where(is_distributed)
DATA_PARALLEL_STAGES = stages_where(takes_option("--data-parallel"))


def refused(stage_name, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        stage_options(stage_name, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("kind", ["cuda", "mps", "xpu"])
@pytest.mark.parametrize("stage_name", DEVICE_STAGES)
def test_auto_chooses_the_machines_accelerator_whatever_its_kind(stage_name, kind, monkeypatch):
    pretend_accelerator(monkeypatch, kind)
    stage = load_stage(stage_name)
    assert stage.choose_device(stage_options(stage, []).device).type == kind
    assert stage.choose_device(stage_options(stage, ["--device", kind]).device) == torch.device(kind)
    assert stage.choose_device(stage_options(stage, ["--device", "cpu"]).device) == torch.device("cpu")


@pytest.mark.parametrize("stage_name", DEVICE_STAGES)
def test_auto_without_an_accelerator_is_the_cpu(stage_name, monkeypatch):
    pretend_accelerator(monkeypatch, "cuda", 0)
    stage = load_stage(stage_name)
    assert stage.choose_device(stage_options(stage, []).device) == torch.device("cpu")


@pytest.mark.parametrize("stage_name", DEVICE_STAGES)
def test_a_device_this_machine_does_not_have_is_one_line(stage_name, monkeypatch, capsys):
    pretend_accelerator(monkeypatch, "mps")
    assert "cuda: no such device on this machine (its accelerator is mps)" in refused(stage_name, ["--device", "cuda"],
                                                                                       capsys)
    pretend_accelerator(monkeypatch, "cuda", 0)
    assert "it has no accelerator" in refused(stage_name, ["--device", "mps"], capsys)
    assert "must be auto, cpu or an accelerator" in refused(stage_name, ["--device", "gpu"], capsys)


@pytest.mark.parametrize("device", ["auto", "mps"])
@pytest.mark.parametrize("stage_name", DEVICE_STAGES)
def test_float64_on_mps_is_refused_before_training(stage_name, device, monkeypatch, capsys):
    pretend_accelerator(monkeypatch, "mps")
    assert "mps has no float64" in refused(stage_name, ["--device", device, "--dtype", "float64"], capsys)
    assert stage_options(stage_name, ["--device", "cpu", "--dtype", "float64"]).dtype == "float64"


@pytest.mark.parametrize("stage_name", DATA_PARALLEL_STAGES)
def test_data_parallel_off_cuda_is_refused(stage_name, monkeypatch, capsys):
    pretend_accelerator(monkeypatch, "mps")
    assert "DataParallel splits batches over CUDA GPUs" in refused(stage_name, ["--data-parallel"], capsys)


@pytest.mark.parametrize("stage_name", PROCESS_STAGES)
def test_a_process_group_runs_where_a_backend_all_reduces_and_says_so_elsewhere(stage_name, monkeypatch, capsys):
    pretend_accelerator(monkeypatch, "mps")
    for device in ("mps", "auto"):
        assert "a process group all-reduces on cuda (nccl), xpu (xccl) or cpu (gloo)" in refused(
            stage_name, ["--device", device], capsys)
    stage = load_stage(stage_name)
    assert stage.choose_device(stage_options(stage, ["--device", "cpu"]).device) == torch.device("cpu")


@pytest.mark.parametrize("kind", ["cuda", "xpu"])
@pytest.mark.parametrize("stage_name", PROCESS_STAGES)
def test_each_process_of_a_group_takes_the_accelerator_numbered_by_its_local_rank(stage_name, kind, monkeypatch):
    pretend_accelerator(monkeypatch, kind, 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    stage = load_stage(stage_name)
    assert stage.choose_device(stage_options(stage, []).device) == torch.device(kind, 1)
    assert stage.choose_device(stage_options(stage, ["--device", kind]).device) == torch.device(kind, 1)
    assert stage.choose_device(stage_options(stage, ["--device", f"{kind}:0"]).device) == torch.device(kind, 0)
