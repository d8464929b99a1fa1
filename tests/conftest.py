"""The test suite's fixtures and hooks. Nothing is imported from this file: what tests share by
name (the stages as parameters, presets, run_main, assert_close, ...) is in tests/helpers.py.

Where a test lives says what it checks:

    equivalence/  every stage computes what the independent reference computes, and what the
                  stage before it computes; the programs themselves, run by main(), agree; a
                  seed repeats a run bit for bit; stage 11's two processes take one process's steps
    claims/       one file per stage, test_stageNN_<name>.py: each claim that stage's docstring
                  and lesson makes about PyTorch, shown by running it. A claim that runs over
                  several stages lives with the stage that first makes it, over the stages that
                  have what it needs (tests.helpers.stages_where)
    runtime/      what every stage imports: data, weights, the command line, the record a run
                  leaves, checkpoints, reliability (a full disk, signals), threads, figures
    tools/        what the make targets run: course, compare, batch experiment, gradcheck, site,
                  notebooks, exercises, bench, and make itself
    fuzz/         the property-based (hypothesis) tests, marked `fuzz`
    gpu/          whole stages on a GPU against the CPU, marked `cuda`
    layout/       the rooms of the course and who may import whom

The GPU rule: a claim about the GPU stays in its stage's claims file, marked `cuda` and skipped
where no GPU is visible; gpu/ holds only the comparisons of whole stages on a GPU with the CPU.
`-m cuda` selects both; `-m stage9` selects one stage's tests, wherever they live.

Fixtures of a wider scope run an expensive program once where several tests read what it left;
those tests only read it.
"""
from __future__ import annotations

import shutil

import pytest

pytest.register_assert_rewrite("tests.helpers")  # its asserts explain themselves as a test's do

from common.weights import reference_params  # noqa: E402
from tests.helpers import (SMOKE, TINY_TEST, TINY_TRAIN, Computations, npy_data_dir, run_main, smoke_argv,  # noqa: E402
                           tiny)


def pytest_configure(config):
    """A marker per stage, found by its file name as everything else finds the stages: `-m stage9`
    selects one stage's tests, and a new stage gets its marker without an edit here."""
    from common.harness import stage_files, stage_number

    for path in stage_files():
        config.addinivalue_line("markers", f"stage{stage_number(path.stem)}: tests of {path.stem}")


@pytest.fixture(scope="session")
def params():
    """The reference weights, seed 0, as float64 arrays (read only)."""
    return reference_params(0)


@pytest.fixture(scope="session")
def computed(params):
    """computed.one_step(stage, dtype, batch_size), computed.trajectory(stage, dtype): each once."""
    return Computations(params)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A data folder of 40 training and 10 test images (tests.helpers.tiny)."""
    return npy_data_dir(tmp_path_factory.mktemp("tiny_data"), TINY_TRAIN, TINY_TEST)


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory):
    """shared_run(stage, *argv, preset=SMOKE): run_main once per session for each stage and argv,
    for tests that only read what the run printed and left."""
    done = {}

    def run(stage: str, *argv: str, preset: list[str] = SMOKE):
        key = (stage, tuple(preset), argv)
        if key not in done:
            done[key] = run_main(stage, tmp_path_factory.mktemp("shared_run"), *argv, preset=preset)
        return done[key]

    return run


@pytest.fixture(scope="session")
def smoke_run(shared_run, tiny_data):
    """smoke_run(stage): each stage's one shared run, tests.helpers.smoke_argv(stage) on the tiny
    data folder, which the tests of what a run prints and leaves read. smoke_run(stage, out): the
    same run once more, afresh, into `out`, for the tests that repeat it."""
    def run(stage: str, out=None):
        if out is None:
            return shared_run(stage, *smoke_argv(stage), preset=tiny(tiny_data))
        return run_main(stage, out, *smoke_argv(stage), preset=tiny(tiny_data))

    return run


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, once per module of the web-page tests (Debian's chromium: .ci/run installs it)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield browser
        browser.close()
