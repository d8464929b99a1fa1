"""Compare stage outputs: every stage from the same weights on the same batches, side by side.

For N steps of SGD with momentum, each stage's loss, and its largest relative difference from
stage 1 in logits (on a fixed probe batch, after the N steps), in gradients (over all steps)
and in parameters (after the N steps), with its time per step. Writes the table as JSON and
CSV, and a figure: the loss curves of all stages overlaid, and beside them each stage's
per-step deviation from stage 1 on a log scale (float64 stays near round-off, float32 drifts).
Exits with code 1, naming the stage, when a stage disagrees beyond the dtype's tolerance.

Run: python -m common.tools.compare [--dtype float32] [--steps 50] [--batch-size 4] [--stages 1 6 10]
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.cli import DTYPES, OneLineParser, batch_size, positive_int
from common.harness import TOLERANCES, driver, load_stage, relative_error, sample_batches, stage_names, to_numpy
from common.tools.figures import save_figure, write_whole
from common.tools.program import run_program
from common.weights import reference_params

LR, MOMENTUM = 0.001, 0.9  # the tutorial's settings


def run_stage(stage, params: dict, batches: list, probe, dtype: str) -> dict:
    """One stage through all batches: per-step losses, gradients and parameters, and timing."""
    d = driver(stage)
    model = d.build(params, dtype=dtype)
    losses, grads, trajectory, seconds = [], [], [], 0.0
    for x, y in batches:
        start = time.perf_counter()
        loss, step_grads = d.train_step(model, x, y, LR, MOMENTUM)
        seconds += time.perf_counter() - start
        losses.append(float(loss))
        grads.append({k: to_numpy(v) for k, v in step_grads.items()})
        trajectory.append({k: to_numpy(v) for k, v in d.get_params(model).items()})
    return {"losses": np.array(losses), "grads": grads, "params": trajectory,
            "logits": to_numpy(d.forward(model, probe)), "ms_per_step": 1000 * seconds / len(batches)}


def worst(actual: dict, expected: dict) -> float:
    return max(relative_error(actual[k], expected[k]) for k in expected)


def compare(stage_list: list[str], dtype: str, steps: int, batch_size: int, seed: int = 0) -> tuple[list, dict]:
    params = reference_params(seed)
    batches = sample_batches(steps + 1, batch_size, seed)
    batches, (probe, _) = batches[:steps], batches[steps]
    results = {name: run_stage(load_stage(name), params, batches, probe, dtype)
               for name in tqdm(stage_list, desc=f"compare ({dtype}, {steps} steps)", unit="stage")}
    first = results[stage_list[0]]
    rows = []
    for name, r in results.items():
        rows.append({
            "stage": name.split(".")[1], "loss": float(r["losses"][-1]),
            "logits": relative_error(r["logits"], first["logits"]),
            "gradients": max(worst(g, g1) for g, g1 in zip(r["grads"], first["grads"])),
            "parameters": worst(r["params"][-1], first["params"][-1]),
            "ms_per_step": r["ms_per_step"],
        })
    curves = {name.split(".")[1]: {"loss": r["losses"].tolist(),
                                   "deviation": [worst(p, p1) for p, p1 in zip(r["params"], first["params"])]}
              for name, r in results.items()}
    return rows, curves


def disagreements(rows: list[dict], dtype: str) -> list[str]:
    rtol = TOLERANCES[dtype].rtol
    return [f"{r['stage']} differs from {rows[0]['stage']} in {what} by {r[what]:.1e} (tolerance {rtol:.0e})"
            for r in rows for what in ("logits", "gradients", "parameters") if r[what] > rtol]


def format_table(rows: list[dict], steps: int) -> str:
    head = f"{'stage':<22}{f'loss@{steps}':>12}{'logits':>11}{'gradients':>11}{'parameters':>12}{'ms/step':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['stage']:<22}{r['loss']:>12.6f}{r['logits']:>11.1e}{r['gradients']:>11.1e}"
                     f"{r['parameters']:>12.1e}{r['ms_per_step']:>9.2f}")
    return "\n".join(lines)


def plot(curves_by_dtype: dict, path: Path):
    """The figure of the comparison (see compare_figure.draw_comparison), saved to `path`; returns it."""
    from common.tools.compare_figure import draw_comparison  # matplotlib loads only once there is a figure

    fig = draw_comparison(curves_by_dtype, {dtype: TOLERANCES[dtype].rtol for dtype in curves_by_dtype})
    save_figure(fig, path, dpi=110)  # to a temporary name, renamed: never a partial figure
    return fig


def write(out: Path, dtype: str, steps: int, rows: list[dict], curves: dict) -> Path:
    stem = out / f"compare-{dtype}"
    saved = json.dumps({"dtype": dtype, "steps": steps, "rows": rows, "curves": curves}, indent=1) + "\n"
    write_whole(stem.with_suffix(".json"), lambda f: f.write(saved.encode()))  # never half a file
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_whole(stem.with_suffix(".csv"), lambda f: f.write(table.getvalue().encode()))
    return stem


def main(argv=None) -> dict:
    parser = OneLineParser(prog="python -m common.tools.compare", description=__doc__.splitlines()[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dtype", choices=DTYPES + ("both",), default="both", help="precision of every stage")
    parser.add_argument("--steps", type=positive_int, default=50, help="training steps per stage")
    parser.add_argument("--batch-size", type=batch_size, default=4, help="images per step")
    parser.add_argument("--stages", type=int, nargs="+", default=None, help="stage numbers (default: all)")
    parser.add_argument("--out", default="runs/compare", help="folder for the JSON, CSV and PNG files")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        stage_list = stage_names() if args.stages is None else [load_stage(n).__name__ for n in args.stages]
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables, curves, problems = {}, {}, []
    for dtype in (("float64", "float32") if args.dtype == "both" else (args.dtype,)):
        rows, curves[dtype] = compare(stage_list, dtype, args.steps, args.batch_size)
        tables[dtype] = rows
        stem = write(out, dtype, args.steps, rows, curves[dtype])
        print(f"\n{dtype}: every stage from the same weights on the same {args.steps} batches of {args.batch_size}; "
              f"relative differences from {rows[0]['stage']}:")
        print(format_table(rows, args.steps))
        print(f"written: {stem}.json, {stem}.csv")
        problems += [f"{dtype}: {line}" for line in disagreements(rows, dtype)]
    figure = out / f"compare-{args.dtype}.png"
    plot(curves, figure)
    print(f"figure: {figure}")
    for line in problems:
        print(f"DISAGREES: {line}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print("all stages agree within their dtype's tolerance")
    added = [name.split(".")[1] for name in stage_list if driver(name).main_options()]
    if added:
        print(f"({', '.join(added)} ran as with --amp off --compile off: autocast changes the numbers on purpose, "
              "and is compared with float32 in its own tests)")
    return tables


if __name__ == "__main__":
    run_program(main)  # one line and an exit code for every ending (common/tools/program.py)
