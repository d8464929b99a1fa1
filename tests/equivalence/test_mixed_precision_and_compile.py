"""Stages 12 and 13 against the stages before them: with their idea switched off they are the
stage before exactly; switched on, autocast agrees with float32 to bfloat16's tolerance and a
compiled model with the eager one to float32's (common/harness/tolerances.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common.harness import (BFLOAT16_GRADIENTS, driver, load_stage, one_step, relative_norm_error, sample_batches,
                            trajectory)
from tests.helpers import REPEATABLE, assert_close, assert_differs, run_main, stages_where, tiny

AMP_STAGES = stages_where(lambda stage: driver(stage).mixed_precision)
COMPILE_STAGES = stages_where(lambda stage: "compile" in driver(stage).main_options())


def the_stage_before(stage_name: str) -> str:
    number = int(stage_name.split(".stage")[1][:2])
    return load_stage(number - 1).__name__


@pytest.fixture()
def quick(tiny_data) -> list[str]:
    """Three steps of batches of 4 from the tiny data folder on one thread: a run that repeats bit
    for bit, evaluated on 10 images, so that a comparison of two programs takes a moment."""
    return [*tiny(tiny_data), "--epochs", "1", "--max-steps", "3"]


def params_npz_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("stage_name", AMP_STAGES)
def test_amp_off_is_the_stage_before_bit_for_bit(stage_name, dtype, tmp_path, quick):
    before = run_main(the_stage_before(stage_name), tmp_path / "before", "--dtype", dtype,
                      *(["--amp", "off"] if driver(the_stage_before(stage_name)).mixed_precision else []), preset=quick)
    off = run_main(stage_name, tmp_path / "off", "--dtype", dtype, "--amp", "off",
                   *(["--compile", "off"] if "compile" in driver(stage_name).main_options() else []), preset=quick)
    assert off.losses == before.losses and params_npz_equal(off.params, before.params)


@pytest.mark.parametrize("stage_name", AMP_STAGES)
def test_a_float64_run_is_never_autocast(stage_name, tmp_path, quick):
    """--amp on (the default) with --dtype float64 computes what --amp off computes, bit for bit."""
    extra = ["--compile", "off"] if "compile" in driver(stage_name).main_options() else []
    on = run_main(stage_name, tmp_path / "on", "--dtype", "float64", *extra, preset=quick)
    off = run_main(stage_name, tmp_path / "off", "--dtype", "float64", "--amp", "off", *extra, preset=quick)
    assert on.losses == off.losses and params_npz_equal(on.params, off.params)
    assert "autocast: off" in on.out.splitlines()


@pytest.mark.parametrize("batch_size", [4, 64])
@pytest.mark.parametrize("stage_name", AMP_STAGES)
def test_one_autocast_step_agrees_with_float32_to_bfloat16s_tolerance(stage_name, batch_size, params):
    [(x, y)] = sample_batches(1, batch_size, seed=3)
    float32 = one_step(stage_name, params, x, y, "float32")
    mixed = one_step(stage_name, params, x, y, "float32", amp=True)
    assert_close(mixed["logits"], float32["logits"], "bfloat16", "logits")
    assert_close(mixed["loss"], float32["loss"], "bfloat16", "loss")
    for name, grad in mixed["grads"].items():
        error = relative_norm_error(grad, float32["grads"][name])
        assert error <= BFLOAT16_GRADIENTS.rtol, f"{name}: {error:.3f} of its norm"
    assert_differs(mixed["logits"], float32["logits"], "float32", "logits: autocast did change them", times=10)


@pytest.mark.parametrize("stage_name", AMP_STAGES)
def test_the_stage_says_what_autocast_computes_in(stage_name, smoke_run):
    assert "autocast: bfloat16" in smoke_run(stage_name).out.splitlines()


@pytest.mark.parametrize("stage_name", AMP_STAGES)
def test_float16_and_its_gradient_scaler_only_where_bfloat16_is_missing(stage_name, monkeypatch):
    stage = load_stage(stage_name)
    assert stage.autocast_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert stage.autocast_dtype(torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert stage.autocast_dtype(torch.device("cuda")) == torch.bfloat16


# ---------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("stage_name", COMPILE_STAGES)
def test_compile_off_is_the_stage_before_bit_for_bit(stage_name, tmp_path, quick):
    before = run_main(the_stage_before(stage_name), tmp_path / "before", preset=quick)
    off = run_main(stage_name, tmp_path / "off", "--compile", "off", preset=quick)
    assert off.losses == before.losses and params_npz_equal(off.params, before.params)


@pytest.mark.parametrize("stage_name", COMPILE_STAGES)
def test_a_compiled_model_computes_the_eager_logits_gradients_and_steps(stage_name, params):
    """aot_eager: TorchDynamo's graph and AOTAutograd's backward, run by eager kernels: what
    torch.compile changes in how the program runs, without inductor's seconds of compiling."""
    torch.compiler.reset()
    [(x, y)] = sample_batches(1, 4, seed=3)
    eager = one_step(stage_name, params, x, y, "float32")
    compiled = one_step(stage_name, params, x, y, "float32", compile="aot_eager")
    assert_close(compiled["logits"], eager["logits"], "float32", "logits")
    assert_close(compiled["grads"], eager["grads"], "float32", "gradients")
    batches = sample_batches(5, 4, seed=1)
    eager_steps = trajectory(stage_name, params, batches, "float32")
    compiled_steps = trajectory(stage_name, params, batches, "float32", compile="aot_eager")
    assert_close(compiled_steps["losses"], eager_steps["losses"], "float32", "losses of 5 momentum steps")
    assert_close(compiled_steps["params"], eager_steps["params"], "float32", "parameters after them")


@pytest.mark.slow
@pytest.mark.parametrize("stage_name", COMPILE_STAGES)
def test_the_stage_compiled_by_inductor_trains_as_it_does_eager(stage_name, tmp_path):
    """The stage's own main(), compiled with inductor (C++ on this CPU), against --compile off:
    the same steps to float32's tolerance, and weights saved that load into a plain Net."""
    torch.compiler.reset()
    argv = [*REPEATABLE, "--max-steps", "20", "--amp", "off"]
    compiled = run_main(stage_name, tmp_path / "compiled", *argv)
    eager = run_main(stage_name, tmp_path / "eager", *argv, "--compile", "off")
    assert_close(compiled.losses, eager.losses, "float32", "losses")
    assert_close(compiled.params, eager.params, "float32", "parameters")
    state = torch.load(compiled.record / "model.pt", weights_only=True)
    net = load_stage(stage_name).Net()
    net.load_state_dict(state)  # a plain Net, never compiled: no "_orig_mod." or "module." keys
    assert_close(dict(net.state_dict()), eager.params, "float32", "the plain Net's weights")


@pytest.mark.parametrize("stage_name", COMPILE_STAGES)
def test_without_a_cxx_compiler_the_stage_says_so_and_runs_eager(stage_name, tmp_path, quick, monkeypatch):
    stage = load_stage(stage_name)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(stage.shutil, "which", lambda name: None)
    assert not stage.can_compile(torch.device("cpu")) and stage.can_compile(torch.device("cuda"))
    without = run_main(stage_name, tmp_path / "without", preset=quick)
    eager = run_main(stage_name, tmp_path / "eager", "--compile", "off", preset=quick)
    assert "torch.compile: no C++ compiler (inductor needs one on a CPU): running eager" in without.out
    assert without.losses == eager.losses


@pytest.mark.parametrize("stage_name", COMPILE_STAGES)
def test_the_stage_trains_through_torch_compile(stage_name, tmp_path, quick, monkeypatch):
    """The loop's forward is the compiled one: a backend of the test's own (torch.compile takes
    any callable) sees the graph traced with gradients on, at the training step."""
    traced_for_training = []

    def recording_backend(graph_module, example_inputs):
        traced_for_training.append(torch.is_grad_enabled())
        return graph_module.forward  # run the traced graph as it is: no inductor, no seconds of compiling

    compile_with_inductor = torch.compile
    monkeypatch.setattr(torch, "compile", lambda *a, **k: compile_with_inductor(*a, **k, backend=recording_backend))
    torch.compiler.reset()
    run_main(stage_name, tmp_path, "--amp", "off", preset=quick)
    assert True in traced_for_training


@pytest.mark.parametrize("stage_name", AMP_STAGES)
def test_the_stages_own_loop_autocasts_as_the_driver_does(stage_name, params):
    """The loop a learner reads runs its forward and loss under autocast: the steps the driver
    composes with --amp on, not float32's."""
    d = driver(stage_name)
    batches = sample_batches(5, 4, seed=9)
    by_driver, by_loop = d.build(params, amp=True), d.build(params, amp=True)
    driver_losses = [d.train_step(by_driver, x, y, 0.01, 0.9)[0] for x, y in batches]
    loop_losses = d.train_one_epoch(by_loop, batches, 0.01, 0.9)
    assert_close(loop_losses, driver_losses, "float32", "losses of the stage's own loop, autocast")
    assert_close(d.get_params(by_loop), d.get_params(by_driver), "float32", "parameters after its loop")
    float32 = trajectory(stage_name, params, batches, "float32", lr=0.01, momentum=0.9)
    assert_differs(d.get_params(by_loop), float32["params"], "float32", "parameters: autocast changed them")
