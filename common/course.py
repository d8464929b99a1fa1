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
    return summaries


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # an unknown stage number
        sys.exit(f"python -m common.course: error: {err}")
