"""The gradient check's claims, each measured on stage 1's loss with the reference weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tests.helpers import ROOT

from common.tools.gradcheck import FLOAT64_GOAL, PARAM_NAMES, STEP, check, gradcheck_directions, main, reported_numbers
from stages import stage01_numpy as stage1


@pytest.fixture(scope="module")
def command(tmp_path_factory):
    """`make gradcheck`, kept small (1 coordinate per parameter, 1 step per decade), and the numbers
    it wrote. With one BLAS thread: on a busy two-core machine numpy's OpenBLAS splits each
    convolution over two threads that then wait for a free core, several times slower."""
    out = tmp_path_factory.mktemp("gradcheck") / "step-size.png"
    done = subprocess.run([sys.executable, "-m", "common.tools.gradcheck", "--coords", "1", "--steps-per-decade", "1",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    return dict(json.loads(out.with_suffix(".json").read_text()), printed=done.stdout, out=out)


def worst(table: dict, column: str) -> float:
    return max(row[column]["error"] for row in table.values())


def errors(scan: dict, dtype: str, kind: str) -> np.ndarray:
    return np.array(scan["errors"][f"{dtype} {kind}"])


def error_at(scan: dict, dtype: str, kind: str, h: float) -> float:
    [i] = np.flatnonzero(np.isclose(scan["steps"], h, rtol=1e-6, atol=0))
    return float(errors(scan, dtype, kind)[i])


def test_float64_central_differences_confirm_the_hand_written_gradients(command):
    for name, row in command["table"].items():
        assert row["central f64"]["error"] <= FLOAT64_GOAL, name
        assert row["central f64"]["crossed"] == 0, name


def test_float64_one_sided_is_worse_than_central(command):
    assert worst(command["table"], "one-sided f64") > 10 * worst(command["table"], "central f64")


def test_the_float32_analytic_gradient_matches_float64_while_float32_differences_fail(command):
    analytic = worst(command["table"], "f32 vs f64 grad")
    assert analytic < 1e-6, "the float32 analytic gradient should match float64 to float32 precision"
    assert worst(command["table"], "central f32") > 1000 * analytic


def test_float64_differences_at_the_float32_step_cross_kinks_and_fail_too(command):
    conv1, fc3_bias = command["table"]["conv1.weight"], command["table"]["fc3.bias"]
    assert conv1["f64 at f32's h"]["crossed"] == 1, "conv1.weight's step of 5e-3 should cross a kink"
    assert conv1["f64 at f32's h"]["error"] > 1e-2
    assert conv1["central f64"]["error"] < FLOAT64_GOAL  # the same coordinate, a step below the kink
    # where there is no kink, float64 does well at that same step: the kink is what spoils it
    assert fc3_bias["f64 at f32's h"]["crossed"] == 0 and fc3_bias["f64 at f32's h"]["error"] < 1e-5
    scan = command["scans"]["conv1.weight"]
    kink, steps = min(scan["kink_up"], scan["kink_down"]), np.array(scan["steps"])
    assert kink < STEP["float32", "central"]
    central = errors(scan, "float64", "central")
    assert central[(steps < kink / 2) & (steps >= 1e-6)].max() < 1e-6  # below 1e-6 rounding grows
    assert central[steps > 2 * kink].min() > 1e-3


def test_float64_central_difference_error_falls_as_h_squared_until_rounding(command):
    scan = command["scans"]["fc3.bias"]
    assert scan["kink_up"] == scan["kink_down"] == np.inf  # no kink: truncation and rounding alone
    e = {h: error_at(scan, "float64", "central", h) for h in (1e-1, 1e-2, 1e-3, 1e-5, 1e-9)}
    assert 50 < e[1e-1] / e[1e-2] < 200 and 50 < e[1e-2] / e[1e-3] < 200  # 100x per decade: h**2
    assert e[1e-9] > 100 * e[1e-5]  # rounding, ~eps / h, has taken over


def test_float64_one_sided_difference_error_falls_as_h(command):
    scan = command["scans"]["fc3.bias"]
    e = {h: error_at(scan, "float64", "one-sided", h) for h in (1e-1, 1e-2, 1e-3)}
    assert 5 < e[1e-1] / e[1e-2] < 20 and 5 < e[1e-2] / e[1e-3] < 20  # 10x per decade: h


def test_float32_best_step_error_is_far_above_float64s(command):
    for name, scan in command["scans"].items():
        for kind in ("one-sided", "central"):
            best32, best64 = scan["best"][f"float32 {kind}"][1], scan["best"][f"float64 {kind}"][1]
            assert best32 > 1e3 * best64, (name, kind)


def test_float32_cannot_resolve_a_step_short_enough_to_miss_conv1s_kinks(command):
    scan = command["scans"]["conv1.weight"]
    steps = np.array(scan["steps"])
    short = steps < min(scan["kink_up"], scan["kink_down"])
    assert np.nanmin(errors(scan, "float32", "central")[short]) > 0.1
    assert np.nanmax(errors(scan, "float64", "central")[short & (steps >= 1e-6)]) < 1e-6


def test_autograd_gradcheck_passes_stage1_gradients_in_float64(command):
    every = command["torch"]["float64, every tensor along a direction"]
    assert every["passed"], every["message"]
    assert every["pieces"] == 1, "gradcheck's eps crossed a kink"
    assert command["torch"]["float64, fc3.bias"]["passed"]


def test_autograd_gradcheck_fails_them_in_float32(command):
    result = command["torch"]["float32, fc3.bias"]
    assert not result["passed"] and "Jacobian mismatch" in result["message"]
    units32 = np.array(command["torch"]["float32 units moved"]["units"])
    units64 = np.array(command["torch"]["float64 units moved"]["units"])
    assert np.abs(units32).max() <= 8, "eps should move the float32 loss by a few rounding units at most"
    assert np.array_equal(units32, np.round(units32))
    assert np.abs(units64).min() > 1e6


def transposed_conv1_kernels(backward):
    def buggy(params, cache, dlogits):
        grads = backward(params, cache, dlogits)
        grads["conv1.weight"] = grads["conv1.weight"].transpose(0, 1, 3, 2).copy()  # rows and columns swapped
        return grads
    return buggy


def test_both_gradient_checks_catch_a_transposed_conv1_weight_gradient(monkeypatch):
    ours = dict(coords=1, names=("conv1.weight",))
    assert check(**ours)["conv1.weight"]["central f64"].error <= FLOAT64_GOAL
    assert gradcheck_directions("float64").passed
    monkeypatch.setattr(stage1, "backward", transposed_conv1_kernels(stage1.backward))
    assert check(**ours)["conv1.weight"]["central f64"].error > 1e-2
    caught = gradcheck_directions("float64")
    assert not caught.passed
    numerical, analytical = (np.array(numbers, dtype=float) for numbers in reported_numbers(caught.message))
    wrong = ~np.isclose(numerical, analytical, rtol=1e-3, atol=1e-5)  # torch.autograd.gradcheck's own defaults
    assert [PARAM_NAMES[k] for k in np.flatnonzero(wrong)] == ["conv1.weight"]


def test_gradcheck_command_prints_its_tables_and_verdicts_and_writes_the_figure(command):
    printed = command["printed"]
    for text in ("conv1.weight", "central f64", "f64 at f32's h", "the gradients check", "not the gradient",
                 "nearest kink up, down", "eps crossed no kink", "FAILS", "rounding units"):
        assert text in printed, text
    assert command["out"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("make_args", [
    lambda tmp: ["--coords", "0"],
    lambda tmp: ["--stage", "3"],
    lambda tmp: ["--out", str(tmp)],
    lambda tmp: ["--out", str(tmp / "figure.txt")],
    lambda tmp: ["--out", str(tmp / "a-file" / "figure.png")],
], ids=["coords-0", "stage-option", "out-is-a-folder", "out-not-an-image", "out-under-a-file"])
def test_bad_arguments_get_one_line_and_exit_code_2(make_args, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        main(make_args(tmp_path))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
