"""Benchmarks of the course, measured side by side in one run, printed as tables and saved as CSV.

1. the time of one training step of every stage at batch 4 and 64, float32 and float64
   (median of repeats after warm-up), with its ratio to stage 6 (idiomatic PyTorch);
2. the shared machine: every stage's step at batch 4 and 64 (float32) on the idle machine
   and beside one CPU-bound process that the benchmark starts and stops itself, with the
   course's --threads default (common/cli.py) and with torch's own default; speed busy / idle;
3. one epoch of the stages' own loops (stages 7-10, with the real run recorder: progress bar,
   losses.csv) against the tutorial's own loop on the same images, read
   through a CIFAR10-style Dataset (a PIL image per sample, ToTensor, Normalize; batch 4);
4. achieved GFLOP/s per stage, from the network's FLOP count, against the machine's peak for
   a large float32 matrix product measured in the same run;
5. peak memory of one step of the numpy stage at batch 256 against stage 6;
6. stages 11-13 side by side: float32, autocast, autocast and torch.compile (step time, and the
   first step's, where torch.compile compiles).

Run: python -m benchmarks.bench [--quick] [--out runs/bench]
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import inspect
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn, optim
from tqdm import tqdm

from common.cli import DEFAULT_THREADS, OneLineParser
from common.data import make_synthetic
from common.harness import driver, load_stage, sample_batches, stage_names, stage_options
from common.run import StageRun, use_threads
from common.tools.program import run_program
from common.weights import PARAM_SHAPES, reference_params

TORCH_THREADS = torch.get_num_threads()  # torch's own default, one per physical core


# ---------------------------------------------------------------- FLOPs
def flops_per_image_forward() -> int:
    """2 FLOPs (multiply, add) per weight use: conv weights are used once per output pixel."""
    conv_outputs = {"conv1": 28 * 28, "conv2": 10 * 10}  # output pixels per channel
    total = 0
    for name, shape in PARAM_SHAPES.items():
        if name.endswith(".weight"):
            total += 2 * int(np.prod(shape)) * conv_outputs.get(name.split(".")[0], 1)
    return total


def flops_per_image_conv1_forward() -> int:
    return 2 * int(np.prod(PARAM_SHAPES["conv1.weight"])) * 28 * 28


def flops_per_image_train_step() -> int:
    """Forward, then the backward: every layer's weight gradient (as many FLOPs as its forward)
    and every input gradient but conv1's (the images need none), so 3 x forward - conv1's."""
    return 3 * flops_per_image_forward() - flops_per_image_conv1_forward()


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------- 1. train_step times
def step_time(stage, batch_size: int, dtype: str, repeats: int, warmup: int = 3,
              first: list | None = None) -> float:
    """Median seconds of one training step, on fresh batches each time, the model built as the
    stage's main() builds it (autocast from stage 12, torch.compile from stage 13). `first`, if
    given, receives the seconds of the first step (where torch.compile compiles)."""
    d = driver(stage)
    options = d.main_options()
    if "compile" in options:
        torch.compiler.reset()  # compile afresh for each setting, never from a full cache of earlier ones
    model = d.build(reference_params(0), dtype=dtype, **options)
    batches = [d.inputs(model, x, y) for x, y in sample_batches(warmup + repeats, batch_size, seed=1)]
    times = []
    for i, (x, y) in enumerate(batches):
        seconds = _timed(lambda: d.train_step(model, x, y, 0.001, 0.9))
        if i == 0 and first is not None:
            first.append(seconds)
        if i >= warmup:
            times.append(seconds)
    return statistics.median(times)


def bench_steps(repeats: int) -> list[dict]:
    rows = []
    configs = [(b, d) for b in (4, 64) for d in ("float32", "float64")]
    for name in tqdm(stage_names(), desc="step times", unit="stage"):
        stage = load_stage(name)
        for batch_size, dtype in configs:
            rows.append({"stage": name.split(".")[1], "batch": batch_size, "dtype": dtype,
                         "ms": 1000 * step_time(stage, batch_size, dtype, repeats)})
    reference = {(r["batch"], r["dtype"]): r["ms"] for r in rows if r["stage"].startswith("stage06")}
    for r in rows:
        r["vs_stage06"] = r["ms"] / reference[r["batch"], r["dtype"]]
        r["gflops"] = flops_per_image_train_step() * r["batch"] / (r["ms"] / 1000) / 1e9
    return rows


# ---------------------------------------------------------------- 6. PyTorch 2: mixed precision and torch.compile
def bench_pytorch2(repeats: int) -> list[dict]:
    """Stage 11 (float32), stage 12 (autocast) and stage 13 (autocast and torch.compile) side by
    side: the step time, its ratio to stage 11, and the first step's seconds (compiling)."""
    names = [n for n in stage_names() if int(n.split(".stage")[1][:2]) >= 11]
    rows = []
    for batch_size in (4, 64):
        for name in names:
            first = []
            ms = 1000 * step_time(name, batch_size, "float32", repeats, warmup=5, first=first)
            rows.append({"stage": name.split(".")[1], "batch": batch_size, "ms": ms, "first_step_s": first[0]})
        reference = next(r["ms"] for r in rows if r["batch"] == batch_size and r["stage"].startswith("stage11"))
        for r in rows[-len(names):]:
            r["vs_stage11"] = r["ms"] / reference
    return rows


# ---------------------------------------------------------------- 2. the shared machine
@contextlib.contextmanager
def one_busy_process():
    """A CPU-bound process beside the benchmark, as a learner's other program would be."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)  # let it settle on its core
        yield hog
    finally:
        hog.kill()
        hog.wait()


def bench_shared(repeats: int) -> list[dict]:
    """Speed beside one busy process over speed on the idle machine, per stage and batch size,
    with the course's --threads default and with torch's own default (one thread per core)."""
    settings = {"course": DEFAULT_THREADS, "torch": TORCH_THREADS}
    times = {}
    for busy in (False, True):
        with one_busy_process() if busy else contextlib.nullcontext():
            for name in tqdm(stage_names(), desc="shared machine (busy)" if busy else "shared machine (idle)",
                             unit="stage"):
                for batch_size in (4, 64):
                    for setting, threads in settings.items():  # taking turns, so a slow spell hits both
                        put_back = use_threads(threads)
                        try:
                            times[name, batch_size, setting, busy] = step_time(name, batch_size, "float32", repeats)
                        finally:
                            put_back()
    rows = []
    for name in stage_names():
        for batch_size in (4, 64):
            t = {(s, b): times[name, batch_size, s, b] for s in settings for b in (False, True)}
            rows.append({"stage": name.split(".")[1], "batch": batch_size,
                         "course_idle_ms": 1000 * t["course", False], "course_busy_ms": 1000 * t["course", True],
                         "course_busy_vs_idle": t["course", False] / t["course", True],
                         "torch_idle_ms": 1000 * t["torch", False], "torch_busy_ms": 1000 * t["torch", True],
                         "torch_busy_vs_idle": t["torch", False] / t["torch", True],
                         "course_idle_vs_torch_idle": t["torch", False] / t["course", False]})
    return rows


# ---------------------------------------------------------------- 3. one epoch against the tutorial's loop
class PlainNet(nn.Module):
    """The tutorial's Net, written here once more so the baseline owes nothing to the course."""

    def __init__(self):
        super().__init__()
        self.conv1, self.pool, self.conv2 = nn.Conv2d(3, 6, 5), nn.MaxPool2d(2, 2), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class TutorialCIFAR10(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 does per sample: a PIL image from the uint8 array, then the
    transform. The course's ArrayDataset hands the array to ToTensor directly."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def tutorial_epoch(data, batch_size: int) -> float:
    """The tutorial's loop over one epoch of the same images; returns seconds."""
    from torchvision import transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    trainloader = torch.utils.data.DataLoader(TutorialCIFAR10(data.train_x, data.train_y, transform),
                                              batch_size=batch_size, shuffle=True)
    net = PlainNet()
    criterion, optimizer = nn.CrossEntropyLoss(), optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    running_loss = 0.0
    start = time.perf_counter()
    for i, (inputs, labels) in enumerate(trainloader):
        optimizer.zero_grad()
        outputs = net(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        if i % 2000 == 1999:  # the tutorial prints the running loss every 2000 batches
            running_loss = 0.0
    return time.perf_counter() - start


def stage_epoch(stage_number: int, data, batch_size: int) -> float:
    """One epoch of a stage's own train_one_epoch, with the real recorder writing its record."""
    stage = load_stage(stage_number)
    d = driver(stage)
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        args = stage_options(stage, ["--batch-size", str(batch_size), "--out", out])
        model = d.build(reference_params(0))
        takes_device = "device" in inspect.signature(stage.make_loaders).parameters
        train_loader = stage.make_loaders(data, args, *((torch.device("cpu"),) if takes_device else ()))[0]
        with StageRun(stage.__file__, args) as run:
            run.start_epoch(1, len(train_loader))
            start = time.perf_counter()
            d.train_one_epoch(model, train_loader, 0.001, 0.9, run=run)
            seconds = time.perf_counter() - start
    return seconds


def bench_throughput(n_images: int, batch_size: int, rounds: int) -> list[dict]:
    """Images/s of each loop: the best of `rounds` epochs, the loops taking turns round by round,
    so that a slow spell of the machine does not fall on one loop alone."""
    data = make_synthetic(0, n_train=n_images, n_test=10)
    loops = {"the tutorial's loop": lambda: tutorial_epoch(data, batch_size)}
    loops.update({f"stage{n:02d}": (lambda n=n: stage_epoch(n, data, batch_size)) for n in (7, 8, 9, 10)})
    best = {label: float("inf") for label in loops}
    with tqdm(total=rounds * len(loops), desc="epoch throughput", unit="epoch") as bar:
        for _ in range(rounds):
            for label, run_epoch in loops.items():
                best[label] = min(best[label], run_epoch())
                bar.update()
    baseline = n_images / best["the tutorial's loop"]
    return [{"loop": label, "images_per_s": n_images / seconds, "vs_tutorial": n_images / seconds / baseline}
            for label, seconds in best.items()]


# ---------------------------------------------------------------- 5. peak memory
MEMORY_PROBE = """
import resource, sys
from common.harness import driver, sample_batches
from common.weights import reference_params
d = driver(int(sys.argv[1]))
model = d.build(reference_params(0), dtype="float32")
(x, y), = sample_batches(1, 256)
x, y = d.inputs(model, x, y)
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
before = rss_mib()
d.train_step(model, x, y, 0.001, 0.9)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(peak - before)
"""


def bench_memory() -> list[dict]:
    rows = []
    for number in (1, 6):
        out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(number)], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parent.parent)
        rows.append({"stage": f"stage{number:02d}", "batch": 256, "peak_extra_mib": float(out.stdout.split()[-1])})
    rows[0]["vs_stage06"] = rows[0]["peak_extra_mib"] / rows[1]["peak_extra_mib"]
    rows[1]["vs_stage06"] = 1.0
    return rows


PARTS = ("steps", "shared", "throughput", "memory", "pytorch2")


# ---------------------------------------------------------------- output
def print_table(title: str, rows: list[dict]) -> None:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in columns}
    print(f"\n{title}")
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r[c]).rjust(widths[c]) for c in columns))


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> dict:
    parser = OneLineParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a smaller epoch")
    parser.add_argument("--out", default="runs/bench", help="folder for the CSV files")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which measurements to make")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; numpy {np.__version__}")
    peak = matmul_peak_gflops()
    print(f"peak: a 2048x2048 float32 matrix product runs at {peak:.1f} GFLOP/s; "
          f"one training image costs {flops_per_image_train_step() / 1e6:.2f} MFLOP")
    repeats = 10 if args.quick else 40
    measure = {"steps": lambda: bench_steps(repeats),
               "shared": lambda: bench_shared(repeats=10 if args.quick else 30),
               "throughput": lambda: bench_throughput(2000 if args.quick else 8000, 4, rounds=1 if args.quick else 5),
               "memory": bench_memory, "pytorch2": lambda: bench_pytorch2(repeats)}
    results = {part: measure[part]() for part in PARTS if part in args.parts}
    titles = {
        "steps": "one training step (median ms; ratio to stage 6; achieved GFLOP/s and fraction of the matmul peak)",
        "shared": f"beside one CPU-bound process (float32, median ms): the course's --threads {DEFAULT_THREADS} "
                  f"against torch's default {TORCH_THREADS} threads; busy_vs_idle is speed beside it over speed "
                  "alone (goal: >= 0.8 with the course's default); course_idle_vs_torch_idle the idle speed kept",
        "throughput": "one epoch at batch 4 (images/s; ratio to the tutorial's loop, goal >= 0.95)",
        "memory": "peak extra memory of one float32 step at batch 256 (MiB)",
        "pytorch2": "stages 11-13, float32 (median ms; ratio to stage 11; the first step, where torch.compile "
                    "compiles, in seconds)",
    }
    for r in results.get("steps", []):
        r["of_peak"] = r["gflops"] / peak
    for part, rows in results.items():
        print_table(titles[part], rows)
    for name, rows in results.items():
        write_csv(out / f"{name}.csv", rows)
    print(f"\nCSV files in {out}/")
    return results


if __name__ == "__main__":
    run_program(main)  # one line and an exit code for every ending (common/tools/program.py)
