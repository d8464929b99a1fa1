"""Run the course: every stage (or the ones named) in order, then a summary table.

Options other than --stages go to every stage unchanged, e.g.
  python -m common.course --epochs 1
  python -m common.course --stages 1 3 --max-steps 20 --data synthetic
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.harness import load_stage, stage_names


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m common.course", description=__doc__.splitlines()[0],
                                     epilog="Any other option is passed to every stage (see a stage's --help).")
    parser.add_argument("--stages", type=int, nargs="+", default=None,
                        help="stage numbers to run (default: all, in order)")
    return parser.parse_known_args(argv)


def format_summary(summaries: list[dict]) -> str:
    lines = [f"{'stage':<24}{'final loss':>12}{'test accuracy':>15}{'seconds':>10}", "-" * 61]
    for s in summaries:
        lines.append(f"{s['stage']:<24}{s['final_loss']:>12.4f}{100 * s['test_accuracy']:>14.2f}%{s['seconds']:>10.1f}")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args, stage_argv = parse(sys.argv[1:] if argv is None else argv)
    names = stage_names() if args.stages is None else [load_stage(n).__name__ for n in args.stages]
    summaries = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        summaries.append(load_stage(name).main(stage_argv))  # a failing stage exits with its own code
    print("\n" + format_summary(summaries))
    out = Path(summaries[0]["record"]).parent.parent if summaries else Path("runs")
    (out / "course-summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
    figure = plot_course(summaries, out / "course-summary.png")
    print(f"summary: {out / 'course-summary.json'}, figure: {figure}")
    return summaries


def plot_course(summaries: list[dict], path: Path) -> Path:
    """Every stage's smoothed training loss on one axis, and its test accuracy beside it."""
    from common.plots import moving_average, plt, read_csv

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    for i, s in enumerate(summaries):
        losses = read_csv(Path(s["record"]) / "losses.csv")
        if not losses:
            continue
        smooth = moving_average(losses["loss"], 100)
        color = plt.cm.viridis(i / max(len(summaries) - 1, 1))
        ax_loss.plot(losses["step"][len(losses["step"]) - len(smooth):], smooth, color=color, lw=1.2, label=s["stage"])
        ax_acc.barh(s["stage"], 100 * s["test_accuracy"], color=color)
    ax_loss.set(xlabel="training step", ylabel="cross-entropy loss (mean of 100 steps)", title="training loss per stage (identical stages overlap)")
    ax_loss.legend(fontsize=7, ncol=2)
    ax_acc.set(xlabel="test accuracy (%)", xlim=(0, 100), title="test accuracy at the end")
    ax_acc.invert_yaxis()
    ax_acc.axvline(10, color="0.6", ls="--", lw=1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # an unknown stage number
        sys.exit(f"python -m common.course: error: {err}")
