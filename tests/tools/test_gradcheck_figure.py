"""The gradient check's figure reads at the width docs/tools.md shows it on GitHub (about 900 px): every text of
it, measured from the matplotlib objects, is at least MIN_TEXT_PX high there."""
from __future__ import annotations

import pytest
from matplotlib.text import Text

from common.tools.gradcheck import FIGURE_PARAMS, DPI, draw_scans, plot_scans, scan_steps

PAGE_WIDTH_PX = 900  # a page's column on GitHub, where docs/tools.md shows docs/figures/gradcheck-step-size.png
MIN_TEXT_PX = 11  # smaller text than this cannot be read on a screen without zooming


@pytest.fixture(scope="module")
def figure():
    scans = [scan_steps(name, steps_per_decade=1) for name in FIGURE_PARAMS]  # few steps: the layout is the same
    return draw_scans(scans, batch_size=4), scans


def shown_px(fig, text: Text) -> float:
    """A text's font size in pixels once the whole figure is scaled to PAGE_WIDTH_PX."""
    width_px = fig.get_figwidth() * DPI
    return text.get_fontsize() / 72 * DPI * min(1.0, PAGE_WIDTH_PX / width_px)


def test_every_text_is_legible_at_the_pages_width(figure):
    fig, _ = figure
    fig.draw_without_rendering()  # tick labels exist once the figure is laid out
    texts = [t for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]
    assert len(texts) > 40, "the check saw the labels, the notes and the ticks"
    small = sorted({(round(shown_px(fig, t), 1), t.get_text()[:40]) for t in texts if shown_px(fig, t) < MIN_TEXT_PX})
    assert small == [], f"too small at {PAGE_WIDTH_PX} px: {small[:5]}"


def test_one_panel_per_parameter_each_with_its_own_step_axis(figure):
    fig, scans = figure
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split("[")[0] for ax in panels] == list(FIGURE_PARAMS)
    fig.draw_without_rendering()
    for ax in panels:
        assert any(label.get_visible() and label.get_text() for label in ax.get_xticklabels()), ax.get_title()
    tops = [ax.get_position().y0 for ax in panels]
    assert tops == sorted(tops, reverse=True), "stacked one above the other, in the order of the table"


def test_the_title_names_the_data(figure):
    fig, _ = figure
    assert "synthetic shapes, not CIFAR-10" in fig.get_suptitle()


def test_the_written_figure_is_at_most_the_pages_width(figure, tmp_path):
    _, scans = figure
    plot_scans(scans, tmp_path / "step-size.png", batch_size=4)
    from matplotlib.image import imread

    height, width = imread(tmp_path / "step-size.png").shape[:2]
    assert width <= PAGE_WIDTH_PX and height > width, "one column of panels, shown at its own size"
