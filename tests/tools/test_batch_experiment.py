"""`make batch-experiment`: batch sizes compared at equal epochs and at equal time."""
from __future__ import annotations

import json

from common.tools import batch_experiment
from tests.helpers import assert_close


def test_batch_experiment_compares_at_equal_epochs_and_equal_time(tmp_path, tiny_data, capsys):
    """On the tiny data folder: what is tested is the experiment's bookkeeping, not what it finds."""
    runs = batch_experiment.main(["--batch-sizes", "32", "8", "--epochs", "1", "--data", "auto",
                                  "--data-dir", str(tiny_data), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert list(runs) == [8, 32], "the smallest batch runs first: its time sets the budget"
    budget = runs[8][-1]["seconds"]
    assert runs[32][-1]["seconds"] >= budget and runs[32][-1]["epoch"] >= 1
    assert_close(runs[32][0]["lr"], 0.001 * (32 / 4) ** 0.5, "float64", "lr at batch 32: sqrt(32 / 4) times 0.001")
    assert runs[8][0]["epoch"] == 0.0
    assert "At equal epochs" in out and "At equal time" in out
    saved = json.loads((tmp_path / "batch-experiment.json").read_text())
    assert_close(saved["budget_seconds"], budget, "float64", "the budget written")
    assert (tmp_path / "batch-experiment.png").stat().st_size > 20_000
