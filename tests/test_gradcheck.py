"""The gradient check shows both halves of the known fact about finite differences."""
from __future__ import annotations

import pytest

from common.gradcheck import FLOAT64_GOAL, check, main


@pytest.fixture(scope="module")
def table():
    return check(stage_number=1, coords=4)


def test_float64_central_differences_confirm_the_hand_written_gradients(table):
    for name, row in table.items():
        assert row["central float64"] <= FLOAT64_GOAL, name


def test_float64_one_sided_is_worse_than_central(table):
    worst = {c: max(r[c] for r in table.values()) for c in ("one-sided float64", "central float64")}
    assert worst["one-sided float64"] > 10 * worst["central float64"]


def test_float32_finite_differences_fail_but_the_float32_gradient_does_not(table):
    worst_fd = max(row["central float32"] for row in table.values())
    worst_analytic = max(row["analytic float32 vs float64"] for row in table.values())
    assert worst_fd > 1e-3, "float32 finite differences should be poor"
    assert worst_analytic < 1e-5, "the float32 analytic gradient should match float64 closely"
    assert worst_fd > 100 * worst_analytic


def test_gradcheck_command_prints_a_table_and_verdicts(capsys):
    main(["--coords", "2"])
    out = capsys.readouterr().out
    assert "conv1.weight" in out and "central f64" in out
    assert "the gradients check" in out and "not the gradient" in out
