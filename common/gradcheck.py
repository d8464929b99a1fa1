"""Gradient check: finite differences of the loss against a stage's analytic gradients.

For each parameter it perturbs the coordinates with the largest gradient and compares
  one-sided   (L(p + h) - L(p)) / h          error ~ h      + rounding / h
  central     (L(p + h) - L(p - h)) / (2h)   error ~ h**2   + rounding / h
with the analytic gradient, in float64 and in float32, each with its best step h. In float64
the central difference agrees to 1e-7 or better. In float32 it cannot: the loss carries
only ~7 digits, so rounding / h swamps the difference whatever h is. The last column shows
that it is the finite difference that fails there, not the gradient: the float32 analytic
gradient matches the float64 one to float32 precision.

Run: python -m common.gradcheck [--stage 1]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from common.harness import load_stage, one_step, sample_batches
from common.weights import reference_params

STEP = {  # near-optimal steps: sqrt(machine eps) for one-sided, cbrt(machine eps) for central
    ("float64", "one-sided"): 1.5e-8, ("float64", "central"): 6e-6,
    ("float32", "one-sided"): 3.5e-4, ("float32", "central"): 5e-3,
}
FLOAT64_GOAL = 1e-7
NP_DTYPES = {"float32": np.float32, "float64": np.float64}


def loss_at(stage, params: dict, x, y, dtype: str) -> float:
    """The loss at `params`: train_step with lr 0 returns it and changes nothing."""
    model = stage.build(params, dtype=dtype)
    return float(stage.train_step(model, x, y, 0.0, 0.0)[0])


def finite_difference(stage, params: dict, name: str, index: tuple, x, y, dtype: str, kind: str) -> float:
    base = {k: v.astype(NP_DTYPES[dtype]) for k, v in params.items()}
    plus, minus = dict(base), dict(base)
    plus[name] = base[name].copy()
    plus[name][index] += STEP[dtype, kind]
    h = float(plus[name][index]) - float(base[name][index])  # the step as the dtype stores it
    if kind == "one-sided":
        return (loss_at(stage, plus, x, y, dtype) - loss_at(stage, base, x, y, dtype)) / h
    minus[name] = base[name].copy()
    minus[name][index] -= STEP[dtype, kind]
    h = float(plus[name][index]) - float(minus[name][index])
    return (loss_at(stage, plus, x, y, dtype) - loss_at(stage, minus, x, y, dtype)) / h


def check(stage_number: int = 1, coords: int = 6, batch_size: int = 4, seed: int = 0) -> dict:
    """{param: {column: relative error}} over the `coords` largest-gradient coordinates."""
    stage = load_stage(stage_number)
    params = reference_params(seed)
    [(x, y)] = sample_batches(1, batch_size, seed)
    analytic = {d: one_step(stage, params, x, y, d)["grads"] for d in ("float64", "float32")}
    table = {}
    for name, grad64 in analytic["float64"].items():
        flat = np.argsort(-np.abs(grad64), axis=None)[:coords]
        indices = [np.unravel_index(i, grad64.shape) for i in flat]
        row = {}
        for dtype in ("float64", "float32"):
            exact = np.array([analytic[dtype][name][i] for i in indices])
            for kind in ("one-sided", "central"):
                fd = np.array([finite_difference(stage, params, name, i, x, y, dtype, kind) for i in indices])
                row[f"{kind} {dtype}"] = float(np.abs(fd - exact).max() / np.abs(exact).max())
        row["analytic float32 vs float64"] = float(
            np.abs(analytic["float32"][name] - grad64).max() / np.abs(grad64).max())
        table[name] = row
    return table


def verdicts(table: dict) -> list[str]:
    worst = {col: max(row[col] for row in table.values()) for col in next(iter(table.values()))}
    float64_ok = worst["central float64"] <= FLOAT64_GOAL
    return [
        f"float64: central differences agree with the analytic gradients to {worst['central float64']:.1e} "
        f"(goal {FLOAT64_GOAL:.0e}): the gradients {'check' if float64_ok else 'DO NOT check'}.",
        f"float32: the finite differences are off by up to {worst['central float32']:.1e}, yet the float32 "
        f"analytic gradients match float64 to {worst['analytic float32 vs float64']:.1e}: the finite "
        "difference is what fails in float32, not the gradient.",
    ]


def format_table(table: dict) -> str:
    columns = list(next(iter(table.values())))
    lines = [f"{'parameter':<14}" + "".join(f"{c:>16}" for c in ["one-sided f64", "central f64",
                                                                 "one-sided f32", "central f32", "f32 vs f64"])]
    for name, row in table.items():
        lines.append(f"{name:<14}" + "".join(f"{row[c]:>16.2e}" for c in columns))
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m common.gradcheck", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--stage", type=int, default=1, help="which stage's gradients to check")
    parser.add_argument("--coords", type=int, default=6, help="coordinates checked per parameter")
    parser.add_argument("--batch-size", type=int, default=4, help="images in the batch")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and images")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        table = check(args.stage, args.coords, args.batch_size, args.seed)
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"Relative error against stage {args.stage}'s analytic gradient "
          f"(max over the {args.coords} largest-gradient coordinates of each parameter):")
    print(format_table(table))
    print("\n".join(verdicts(table)))
    return table


if __name__ == "__main__":
    main()
