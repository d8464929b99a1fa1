"""make mistakes: classic mistakes, each planted in its stage and run beside the correct run from
the same seed, their symptoms measured (runs/mistakes/mistakes.json, a figure, a page); make check
names the entry that matches a mistake it finds."""
from __future__ import annotations

import json
import re

import pytest

from common.tools import make as make_py
from common.tools import mistakes
from common.tools.exercises import EXERCISES, check_here, report
from common.tools.mistakes import BY_SLUG, GALLERY, gallery_note, planted_source
from tests.helpers import ROOT, copy_of_the_course, make


def test_the_gallery_holds_at_least_eight_classic_mistakes_each_one_line_of_its_stage():
    assert len(GALLERY) >= 8 and len(BY_SLUG) == len(GALLERY)
    for mistake in GALLERY:
        if mistake.function is None:  # a mistake of the command line
            assert mistake.wrong_options and mistake.wrong_options != mistake.options
            continue
        source = planted_source(mistake)  # finds the course's line exactly once
        compile(source, mistake.slug, "exec")
        assert source != (ROOT / "stages").joinpath(f"{mistakes._stage_name(mistake.stage)}.py").read_text()


def blanked_where(mistake) -> bool:
    """The mistake's line lies in a blank of its stage's exercise, where make check looks."""
    exercise = EXERCISES[mistake.stage]
    return mistake.function in exercise.blanks or any(lines.function == mistake.function
                                                     for lines in exercise.lines.values())


CHECKABLE = [pytest.param(m, id=m.slug, marks=getattr(pytest.mark, f"stage{m.stage}"))
             for m in GALLERY if m.function is not None and blanked_where(m)]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("mistake", CHECKABLE)
def test_make_check_names_the_gallery_entry_of_the_mistake_it_finds(mistake, tmp_path):
    path = tmp_path / f"{mistakes._stage_name(mistake.stage)}.py"
    path.write_text(planted_source(mistake))
    out = report(mistake.stage, path, check_here(mistake.stage, path))
    assert gallery_note(mistake.slug) in out, out


def test_nearly_every_mistake_of_the_gallery_is_one_make_check_finds():
    assert len(CHECKABLE) >= len(GALLERY) - 1  # the learning rate is an option, not a line of an exercise


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """The whole gallery, measured once: what make mistakes writes."""
    out = tmp_path_factory.mktemp("mistakes")
    assert mistakes.main(["--out", str(out)]) == 0
    return out, json.loads((out / "mistakes.json").read_text())


def entry(report: dict, slug: str) -> tuple[dict, dict]:
    found = next(e for e in report["mistakes"] if e["name"] == slug)
    return found["numbers"]["mistaken"], found["numbers"]["correct"]


def worse(wrong: dict, right: dict) -> bool:
    return wrong["diverged_at_step"] is not None or wrong["final_loss"] > right["final_loss"] + 0.5


@pytest.mark.slow
def test_make_mistakes_writes_one_entry_per_mistake_a_figure_and_a_page(gallery):
    out, report = gallery
    assert [e["name"] for e in report["mistakes"]] == [m.slug for m in GALLERY]
    for e in report["mistakes"]:
        assert {"name", "title", "stage", "where", "right", "wrong", "symptom", "numbers"} <= set(e)
        assert e["symptom"] and set(e["numbers"]) == {"mistaken", "correct"}
    assert (out / "mistakes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "mistakes.md").read_text()
    assert all(f"## {m.title}" in page for m in GALLERY) and report["measured"] in page


@pytest.mark.slow
def test_each_mistake_shows_the_symptom_its_entry_says(gallery):
    _, report = gallery
    assert worse(*entry(report, "forgotten-zero-grad"))
    wrong, right = entry(report, "step-before-backward")
    assert wrong["largest_weight_change"] == {"after_step_1": 0.0, "after_the_run": 0.0}
    assert right["largest_weight_change"]["after_step_1"] > 0
    wrong, right = entry(report, "update-outside-no-grad")
    assert wrong["steps"] == 0 and "in-place operation" in wrong["error"] and right["steps"] > 0
    wrong, right = entry(report, "eval-in-train-mode")
    assert len(set(right["same_weights_evaluated"])) == 1  # eval mode: the same answer every time
    assert len(set(wrong["same_weights_evaluated"])) > 1  # dropout on: another answer at each try
    assert max(wrong["same_weights_evaluated"]) < right["same_weights_evaluated"][0]
    wrong, right = entry(report, "train-mode-never-restored")
    assert wrong["final_loss"] < right["final_loss"]  # later epochs train without dropout
    wrong, right = entry(report, "unshuffled-data")
    assert wrong["test_accuracy"][-1] < right["test_accuracy"][-1] - 0.3
    assert worse(*entry(report, "lr-ten-times"))
    wrong, right = entry(report, "softmax-before-loss")
    assert wrong["final_loss"] > 2 and worse(wrong, right)
    assert worse(*entry(report, "summed-loss"))
    wrong, right = entry(report, "sampler-epoch-never-set")
    assert wrong["repeated_order"] == 1.0 and right["repeated_order"] < 0.5
    wrong, right = entry(report, "to-device-unassigned")
    assert wrong["loss_difference"] == 0.0  # the CPU hides it
    assert wrong["on_two_devices"].startswith("RuntimeError") and right["on_two_devices"] == "ran"


def test_docs_mistakes_is_the_measured_gallery():
    page = (ROOT / "docs" / "mistakes.md").read_text()
    for mistake in GALLERY:
        assert f"[{mistake.title}](#{mistake.slug})" in page and f'<a id="{mistake.slug}"></a>' in page
    assert re.search(r"measured every number below on \d{4}-\d\d-\d\d", page)
    assert (ROOT / "docs" / "figures" / "mistakes.png").exists()


def test_make_mistakes_is_a_make_target_that_runs_from_a_copy_of_the_course(tmp_path):
    assert "mistakes" in make_py.TARGETS
    makefile = (ROOT / "Makefile").read_text()
    assert "\nmistakes: $(READY)\n" in makefile and '@echo "make mistakes ' in makefile
    course = copy_of_the_course(tmp_path)
    done = make(course, "mistakes", "ARGS=--only summed-loss update-outside-no-grad --out runs/few")
    assert done.returncode == 0, done.stderr
    written = json.loads((course / "runs" / "few" / "mistakes.json").read_text())
    assert [e["name"] for e in written["mistakes"]] == ["summed-loss", "update-outside-no-grad"]


def test_an_unknown_mistake_is_one_line_and_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        mistakes.main(["--only", "no-such-mistake"])
    assert exit_info.value.code == 2 and len(capsys.readouterr().err.splitlines()) == 1
