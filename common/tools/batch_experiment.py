"""The batch-size experiment: accuracy per epoch and per second of training, for several batch sizes.

Trains stage 10 once per batch size (default 4, 16, 64, 256) from the same reference weights,
evaluating the test accuracy before training and four times per epoch, with the training
seconds spent so far (evaluation time excluded). The smallest batch size trains for --epochs;
its training time becomes the budget, and every other batch size trains for at least --epochs
and at least that budget. Then it compares
  - at equal epochs: a small batch takes more steps per epoch, which tends to help early on
    (whether it still leads after a few epochs depends on the data and the lr rule: measure);
  - at equal time (the budget): a large batch processes images faster (fewer, larger matrix
    products and less Python overhead per image), so it fits more epochs into the same seconds.
"epochs done" at the budget is the last evaluation within it: a multiple of 1/4 epoch.
The learning rate grows with the square root of the batch size, lr = base_lr * sqrt(B / 4),
a common rule for SGD that keeps the step-to-step noise comparable across batch sizes. (The
linear rule, lr proportional to B, is the other common one; the results depend on the rule:
docs/measurements.md has both at B = 256.)

Run: python -m common.tools.batch_experiment [--batch-sizes 4 16 64 256] [--epochs 3] [--data cifar10]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from common.cli import OneLineParser, batch_size, positive_float, positive_int
from common.data import CHANCE, SOURCES, load_data
from common.errors import CourseError
from common.harness import driver, load_stage, stage_options
from common.tools.figures import save_figure, write_whole
from common.tools.program import run_program
from common.seed import seed_everything
from common.weights import reference_params

STAGE = 10
EVALS_PER_EPOCH = 4
BASE_BATCH = 4


def scaled_lr(base_lr: float, batch_size: int) -> float:
    return base_lr * math.sqrt(batch_size / BASE_BATCH)


def train_one_batch_size(data, batch_size: int, lr: float, epochs: int, seconds_budget: float,
                         seed: int) -> list[dict]:
    """Accuracy points [{epoch, seconds, accuracy}] of one run of stage 10, trained for at least
    `epochs` epochs and at least `seconds_budget` seconds."""
    stage = load_stage(STAGE)
    d = driver(stage)
    seed_everything(seed)
    args = stage_options(stage, ["--batch-size", str(batch_size), "--seed", str(seed)])
    device = torch.device("cpu")
    model = d.build(reference_params(seed), device=device)
    train_loader, test_loader = stage.make_loaders(data, args, device)

    def accuracy() -> float:
        correct = stage.evaluate(model.net, device, test_loader)  # the stage counts them
        return correct / len(data.test_y)

    steps = len(train_loader)
    evaluate_after = {round(k * steps / EVALS_PER_EPOCH) for k in range(1, EVALS_PER_EPOCH + 1)}
    points = [{"epoch": 0.0, "seconds": 0.0, "accuracy": accuracy()}]
    seconds, epoch = 0.0, 0
    with tqdm(desc=f"batch {batch_size:>3} (lr {lr:.4f})", unit="step", leave=False) as bar:
        while epoch < epochs or seconds < seconds_budget:
            model.net.train()
            start = time.perf_counter()
            for i, (x, y) in enumerate(train_loader, start=1):
                loss, _ = d.train_step(model, x, y, lr, 0.9)
                bar.update()
                if not math.isfinite(loss):
                    raise CourseError(f"batch size {batch_size}: the loss became {loss} (lr {lr:.4f}); "
                                      "try a smaller --lr")
                if i in evaluate_after:
                    seconds += time.perf_counter() - start
                    points.append({"epoch": epoch + i / steps, "seconds": seconds, "accuracy": accuracy()})
                    model.net.train()
                    start = time.perf_counter()
            epoch += 1
    return points


def at_or_before(points: list[dict], key: str, limit: float) -> dict:
    return [p for p in points if p[key] <= limit + 1e-9][-1]


def comparisons(runs: dict[int, list[dict]], epochs: int) -> tuple[str, str, float]:
    """Two tables: accuracy at each whole epoch, and accuracy within the fastest run's time."""
    header = f"{'batch':>6}{'lr':>9}" + "".join(f"{f'epoch {e}':>10}" for e in range(1, epochs + 1)) + f"{'s/epoch':>10}"
    lines = [header]
    for batch, points in runs.items():
        row = "".join(f"{100 * at_or_before(points, 'epoch', e)['accuracy']:>9.1f}%" for e in range(1, epochs + 1))
        seconds_per_epoch = at_or_before(points, "epoch", epochs)["seconds"] / epochs
        lines.append(f"{batch:>6}{points[0]['lr']:>9.4f}{row}{seconds_per_epoch:>10.1f}")
    budget = next(iter(runs.values()))[-1]["seconds"]  # the smallest batch's time for --epochs
    time_lines = [f"{'batch':>6}{'accuracy':>10}{'epochs done':>13}"]
    for batch, points in runs.items():
        p = at_or_before(points, "seconds", budget)
        time_lines.append(f"{batch:>6}{100 * p['accuracy']:>9.1f}%{p['epoch']:>13.2f}")
    return "\n".join(lines), "\n".join(time_lines), budget


def plot(runs: dict[int, list[dict]], budget: float, source: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_epoch, ax_time) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for i, (batch, points) in enumerate(runs.items()):
        style = dict(marker="o", ms=3, lw=1.5, color=plt.cm.plasma(i / max(len(runs) - 1, 1) * 0.85),
                     label=f"batch {batch} (lr {points[0]['lr']:.4f})")
        ax_epoch.plot([p["epoch"] for p in points], [100 * p["accuracy"] for p in points], **style)
        ax_time.plot([p["seconds"] for p in points], [100 * p["accuracy"] for p in points], **style)
    ax_time.axvline(budget, color="0.4", ls="--", lw=1, label=f"budget ({budget:.0f} s)")
    ax_epoch.set(xlabel="epochs of training", ylabel="test accuracy (%)", title="at equal epochs")
    ax_time.set(xlabel="training time (s, evaluation excluded)", title="at equal time")
    for ax in (ax_epoch, ax_time):
        ax.axhline(100 * CHANCE, color="0.7", ls=":", lw=1)  # chance
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Batch size, stage 10 on {source.split(' from ')[0].split(' via ')[0]}")
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=110)  # to a temporary name, renamed: never a partial figure
    finally:
        plt.close(fig)


def main(argv=None) -> dict:
    parser = OneLineParser(prog="python -m common.tools.batch_experiment", description=__doc__.splitlines()[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch-sizes", type=batch_size, nargs="+", default=[4, 16, 64, 256], help="batch sizes")
    parser.add_argument("--epochs", type=positive_int, default=3, help="epochs for every batch size")
    parser.add_argument("--lr", type=positive_float, default=0.001, help=f"learning rate at batch {BASE_BATCH}")
    parser.add_argument("--data", choices=SOURCES, default="synthetic", help="data source")
    parser.add_argument("--data-dir", default=None, help="a torchvision CIFAR-10 root or a folder of .npy files")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and data order")
    parser.add_argument("--out", default="runs/batch-experiment", help="folder for the JSON and PNG")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)  # before the training: a folder that cannot be made is said at once
        data = load_data(args.data, args.data_dir, args.seed)
        runs, budget = {}, 0.0
        for batch in sorted(args.batch_sizes):
            lr = scaled_lr(args.lr, batch)
            points = train_one_batch_size(data, batch, lr, args.epochs, budget, args.seed)
            runs[batch] = [dict(p, lr=lr) for p in points]
            budget = budget or points[-1]["seconds"]
    except CourseError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except OSError as err:
        print(f"{parser.prog}: error: cannot write to --out {args.out}: {err.strerror}", file=sys.stderr)
        sys.exit(2)
    by_epoch, by_time, budget = comparisons(runs, args.epochs)
    print(f"\nAt equal epochs (test accuracy after each epoch; lr = {args.lr} * sqrt(batch / {BASE_BATCH})):")
    print(by_epoch)
    print(f"\nAt equal time ({budget:.1f} s of training, what batch {min(runs)} needed for {args.epochs} epochs):")
    print(by_time)
    saved = json.dumps({"source": data.source, "budget_seconds": budget, "runs": {str(b): p for b, p in runs.items()}},
                       indent=1)
    write_whole(out / "batch-experiment.json", lambda f: f.write(saved.encode()))  # never half a file
    plot(runs, budget, data.source, out / "batch-experiment.png")
    print(f"\nwritten: {out / 'batch-experiment.json'}, {out / 'batch-experiment.png'}")
    return runs


if __name__ == "__main__":
    run_program(main)  # one line and an exit code for every ending (common/tools/program.py)
