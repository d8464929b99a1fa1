"""The learner's tools: compare stage outputs, the batch-size experiment."""
from __future__ import annotations

import json

import pytest

from common.tools import batch_experiment, compare
from common.harness import TOLERANCES, load_stage


def test_compare_finds_every_stage_in_agreement(tmp_path, capsys):
    tables = compare.main(["--steps", "4", "--stages", "1", "2", "6", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    for dtype, rows in tables.items():
        assert [r["stage"] for r in rows] == ["stage01_numpy", "stage02_tensors", "stage06_optim"]
        assert all(r[k] <= TOLERANCES[dtype].rtol for r in rows for k in ("logits", "gradients", "parameters"))
        saved = json.loads((tmp_path / f"compare-{dtype}.json").read_text())
        assert len(saved["curves"]["stage06_optim"]["deviation"]) == 4
        assert (tmp_path / f"compare-{dtype}.csv").read_text().startswith("stage,loss,logits")
    assert (tmp_path / "compare-both.png").stat().st_size > 20_000
    assert "all stages agree" in out


def test_compare_names_a_stage_that_disagrees(tmp_path, monkeypatch, capsys):
    stage = load_stage(2)
    honest_update = stage.sgd_momentum_update
    monkeypatch.setattr(stage, "sgd_momentum_update",
                        lambda params, buffers, grads, lr, momentum: honest_update(params, buffers, grads, lr * 1.001,
                                                                                   momentum))
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--steps", "3", "--stages", "1", "2", "--dtype", "float64", "--out", str(tmp_path)])
    assert exit_info.value.code == 1
    assert "DISAGREES: float64: stage02_tensors differs from stage01_numpy in parameters" in capsys.readouterr().err


def test_batch_experiment_compares_at_equal_epochs_and_equal_time(tmp_path, capsys):
    runs = batch_experiment.main(["--batch-sizes", "32", "8", "--epochs", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert list(runs) == [8, 32], "the smallest batch runs first: its time sets the budget"
    budget = runs[8][-1]["seconds"]
    assert runs[32][-1]["seconds"] >= budget and runs[32][-1]["epoch"] >= 1
    assert runs[32][0]["lr"] == pytest.approx(0.001 * (32 / 4) ** 0.5) and runs[8][0]["epoch"] == 0.0
    assert "At equal epochs" in out and "At equal time" in out
    saved = json.loads((tmp_path / "batch-experiment.json").read_text())
    assert saved["budget_seconds"] == pytest.approx(budget)
    assert (tmp_path / "batch-experiment.png").stat().st_size > 20_000
