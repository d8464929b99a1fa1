"""A run's figure says what it trained on: the synthetic shapes reach about 95 % in one epoch where
CIFAR-10 reaches about 55 %, so a synthetic result must never read as a CIFAR-10 one. Read from
the matplotlib objects (the titles), for records that name their data in summary.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.text import Text

from common.data import SYNTHETIC_NAME, data_name, make_synthetic
from common.run.plots import draw_run

SOURCES = {  # data.source as summary.json keeps it -> what the figure must call it
    "synthetic": (make_synthetic(0, n_train=10, n_test=10).source, SYNTHETIC_NAME),
    "cifar10 via torchvision": ("CIFAR-10 via torchvision from data", "CIFAR-10"),
    "cifar10 from .npy": ("CIFAR-10 from the .npy files in /data/cifar", "CIFAR-10"),
}


def record_of(root: Path, source: str | None) -> Path:
    """A finished run's record, as the recorder leaves it before it draws curves.png."""
    record = root / "stage06_optim" / "20260101-000000"
    record.mkdir(parents=True)
    (record / "losses.csv").write_text("step,epoch,loss\n" + "".join(f"{s},1,{2.3 - s / 100}\n" for s in range(1, 101)))
    (record / "accuracy.csv").write_text("epoch,step,test_accuracy,seconds\n1,100,0.957000,7.00\n")
    summary = {"stage": "stage06_optim", "test_accuracy": 0.957, "steps": 100, "complete": True,
               "data": {} if source is None else {"source": source, "details": None}}
    (record / "summary.json").write_text(json.dumps(summary))
    return record


def titles(fig) -> dict[str, str]:
    return {"figure": fig.get_suptitle(), "accuracy": fig.axes[-1].get_title()}


@pytest.mark.parametrize("source, name", SOURCES.values(), ids=SOURCES.keys())
def test_the_figure_title_and_the_accuracy_title_name_the_data(tmp_path, source, name):
    shown = titles(draw_run(record_of(tmp_path, source)))
    for where, title in shown.items():
        assert f"on {name}" in title, f"the {where} title: {title!r}"
    if name == "CIFAR-10":
        assert "synthetic" not in " ".join(shown.values())


def test_a_record_that_names_no_data_says_so_rather_than_guess(tmp_path):
    fig = draw_run(record_of(tmp_path, None))
    written = " ".join(t.get_text() for t in fig.findobj(Text))
    assert "the record names no data" in fig.get_suptitle()
    assert "CIFAR-10" not in written and "synthetic" not in written


def test_the_synthetic_set_is_named_as_not_cifar10_wherever_its_source_says_so():
    assert data_name(make_synthetic(3, n_train=10, n_test=10).source) == "synthetic shapes, not CIFAR-10"
    assert data_name("CIFAR-10 via torchvision from data") == "CIFAR-10"
