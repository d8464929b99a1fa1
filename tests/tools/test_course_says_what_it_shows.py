"""The course's summary names its data and explains its numbers, and `make run` ends with what to do
next. The table is read as printed, the figures from their matplotlib objects."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from matplotlib.text import Text

from common.data import make_synthetic
from common.harness import stage_names
from common.tools.figures import plt
from common.tools import course
from common.tools.compare import plot as plot_comparison

SYNTHETIC = make_synthetic(0, n_train=10, n_test=10).source
CIFAR10 = "CIFAR-10 via torchvision from data"
STEMS = [name.split(".")[1] for name in stage_names()]


def summaries_of(root: Path, stems: list[str], source: str, accuracy=lambda k: 0.956) -> list[dict]:
    """What each stage's main() returns, over records holding a losses.csv."""
    summaries = []
    for k, stem in enumerate(stems):
        record = root / stem / "20260101-000000"
        record.mkdir(parents=True)
        (record / "losses.csv").write_text("step,epoch,loss\n" + "".join(f"{s},1,{2.3 - s / 1000 + k / 100}\n"
                                                                          for s in range(1, 201)))
        summaries.append({"stage": stem, "final_loss": 0.3, "test_accuracy": accuracy(k), "seconds": 7.0,
                          "steps": 200, "record": str(record), "data": {"source": source, "details": None}})
    return summaries


def figure_texts(fig) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(Text))


# ---------------------------------------------------------------- the table
def test_the_table_of_a_synthetic_run_says_synthetic_and_why_it_scores_so_high(tmp_path):
    table = course.format_summary(summaries_of(tmp_path, STEMS[:2], SYNTHETIC))
    first, *rest = table.splitlines()
    assert first == "test accuracy on synthetic shapes, not CIFAR-10:"
    notes = " ".join(line[6:].strip() for line in rest if line.startswith(("note: ", "      ")))
    assert "one shape in one colour" in notes and "53-56 %" in notes and "about 95 %" in notes


def test_the_table_of_a_cifar10_run_says_cifar10_and_nothing_of_synthetic_shapes(tmp_path):
    table = course.format_summary(summaries_of(tmp_path, STEMS[:2], CIFAR10))
    assert table.splitlines()[0] == "test accuracy on CIFAR-10:"
    assert "synthetic" not in table and "note:" not in table


def test_the_stages_with_a_distributed_sampler_get_a_word_on_their_other_data_order(tmp_path):
    sampled = [stem for stem in STEMS if course.uses_a_distributed_sampler(stem)]
    assert sampled and sampled[0] == "stage11_distributed"  # the DDP stage, and those built on it
    table = course.format_summary(summaries_of(tmp_path, STEMS, SYNTHETIC))
    joined = " ".join(table.split())
    first, last = (course.stage_number(s) for s in (sampled[0], sampled[-1]))
    assert f"stages {first}–{last} take the batches from a DistributedSampler" in joined
    assert "not a cost of DDP" in joined
    alone = course.format_summary(summaries_of(tmp_path / "alone", sampled[:1], SYNTHETIC))
    assert "DistributedSampler" not in alone, "with no other stage beside it there is no gap to explain"


# ---------------------------------------------------------------- the figures
@pytest.mark.parametrize("source, name", [(SYNTHETIC, "synthetic shapes, not CIFAR-10"), (CIFAR10, "CIFAR-10")],
                         ids=["synthetic", "cifar10"])
def test_the_summary_figure_names_the_data_in_its_title_and_above_the_accuracies(tmp_path, source, name):
    summaries = summaries_of(tmp_path, STEMS, source)
    run = {"all_stages": True, "full": True, "stages": list(range(1, len(STEMS) + 1)), "epochs": 1,
           "max_steps": None, "finished": "2026-01-01 12:00:00", "summaries": summaries}
    fig = course.draw_course(summaries, course.describe(run))
    try:
        assert f"on {name} (finished 2026-01-01 12:00)" in fig.get_suptitle()
        assert fig.axes[1].get_title().endswith(f"on {name}")
        written = figure_texts(fig)
        assert ("53-56 %" in written) == (source == SYNTHETIC), "the note on the synthetic set, only for it"
        assert "DistributedSampler" in written
    finally:
        plt.close(fig)


def test_the_compare_figure_says_it_runs_on_the_synthetic_shapes(tmp_path):
    curves = {dtype: {f"stage0{k}_x": {"loss": [2.3, 2.2, 2.1], "deviation": [0.0, 1e-16, 1e-16]} for k in (1, 2)}
              for dtype in ("float64", "float32")}
    fig = plot_comparison(curves, tmp_path / "compare-both.png")
    assert fig.get_suptitle().endswith("on the same 3 batches of synthetic shapes, not CIFAR-10")


# ---------------------------------------------------------------- what to do next
def test_one_stage_ends_with_its_lesson_its_diff_its_exercise_and_the_next_stage():
    lines = course.next_steps(["stages.stage06_optim"], smoke=False)
    text = " ".join(lines)
    assert lines[0].startswith("next: ")
    for expected in ("make diff FROM=5 TO=6", "make exercise STAGE=6", "make check STAGE=6", "make run STAGE=7"):
        assert expected in text, expected
    assert re.search(r"read (docs/stages/stage06_optim\.md|the docstring of stages/stage06_optim\.py)", text)


def test_the_last_stage_has_no_next_stage_and_the_course_points_to_the_site_and_the_first_lesson():
    last = " ".join(course.next_steps([stage_names()[-1]], smoke=False))
    assert "make run STAGE" not in last
    full = " ".join(course.next_steps(stage_names(), smoke=False))
    assert "make site" in full and "site/index.html" in full and "make exercise STAGE=1" in full
    smoke = " ".join(course.next_steps(stage_names(), smoke=True))
    assert "make run" in smoke and "whole epoch" in smoke


def test_a_stage_with_a_lesson_page_names_the_page(tmp_path, monkeypatch):
    (tmp_path / "docs" / "stages").mkdir(parents=True)
    (tmp_path / "docs" / "stages" / "stage06_optim.md").write_text("# Stage 6: a loss module and torch.optim\n")
    monkeypatch.setattr(course, "ROOT", tmp_path)
    assert course.next_steps(["stages.stage06_optim"], smoke=False)[0].startswith(
        "next: read docs/stages/stage06_optim.md")
    assert course.next_steps(["stages.stage07_dataloader"], smoke=False)[0].startswith(
        "next: read the docstring of stages/stage07_dataloader.py"), "no page: the docstring instead"
