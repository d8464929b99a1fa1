"""make mistakes: a gallery of classic mistakes, each run beside the correct run, its symptom measured.

Each mistake is one line of a stage written wrong (or one option), planted in a copy of the
stage's source; the copy's main() and the course's own main() then train from the same seed on
the same small synthetic data folder, and what their records show is measured: the per-step
losses, the test accuracy per epoch, the exception a run ended with, the data order, the weights
after the first step. It writes, under --out (default runs/mistakes):
  mistakes.json  one entry per mistake: its name, the stage, the wrong line beside the right one,
                 the symptom in words, and the measured numbers beside the correct run's;
  mistakes.png   each mistake's loss (or accuracy) curve against the correct one;
  mistakes.md    the gallery as a page: a table, then each mistake with its lines and numbers.
With --docs it also writes docs/mistakes.md and docs/figures/mistakes.png. `make check` names the
entry of this gallery that matches the mistake it finds.

Run: python -m common.tools.mistakes [--only SLUG ...] [--docs]
Exit codes: 0 done, 2 bad input, 4 a write failed, 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from common.errors import INTERRUPTED, CourseError, describe, one_line, printable
from common.harness import ROOT, StepLog

GALLERY_PAGE = "docs/mistakes.md"


# ---------------------------------------------------------------- the gallery
@dataclass(frozen=True)
class Mistake:
    slug: str  # its name here, in mistakes.json and in make check's diagnoses
    title: str
    stage: int
    function: str | None  # where the wrong line goes; None for a mistake of the command line
    right: str  # the course's line (the text the plant replaces)
    wrong: str  # the mistaken line ("" when the mistake is a line left out)
    kind: str  # what its figure shows: "loss", "accuracy", "error" or "order"
    headline: str  # the symptom in a few words, for the table
    options: tuple = ()  # options of both runs, beside the gallery's own
    wrong_options: tuple = ()  # options of the mistaken run only (a mistake of the command line)
    by_class: bool = False  # the data folder stores its training images class by class

    @property
    def shown_right(self) -> list[str]:
        """The right line(s) as they read, without their comments (the options, for the command line)."""
        return _code_lines(self.right) if self.function else [" ".join(self.options)]

    @property
    def shown_wrong(self) -> list[str]:
        if self.function is None:
            return [" ".join(self.wrong_options)]
        return _code_lines(self.wrong) or ["(the line left out)"]


def _code_lines(text: str) -> list[str]:
    return [line.split("  #")[0].strip() for line in text.splitlines() if line.strip()]


GALLERY = (
    Mistake("forgotten-zero-grad", "optimizer.zero_grad() forgotten", 6, "train_one_epoch",
            right="        optimizer.zero_grad()  # every parameter's .grad to None, as model.zero_grad() did\n",
            wrong="", kind="loss", headline="the gradients add up; the loss climbs"),
    Mistake("step-before-backward", "optimizer.step() before loss.backward()", 6, "train_one_epoch",
            right="        loss.backward()\n        optimizer.step()\n",
            wrong="        optimizer.step()\n        loss.backward()\n", kind="loss", headline="the weights never move"),
    Mistake("update-outside-no-grad", "the update outside torch.no_grad()", 3, "sgd_momentum_update",
            right="    with torch.no_grad():  # the update is not part of the model: autograd must not record it\n",
            wrong="    if True:  # no torch.no_grad()\n", kind="error", headline="an error at the first update"),
    Mistake("eval-in-train-mode", "evaluate() without model.eval(), with dropout 0.5", 8, "evaluate",
            right="    model.eval()  # dropout off: every prediction uses the whole network\n", wrong="",
            kind="accuracy", headline="a lower test accuracy, another at each try", options=("--dropout", "0.5")),
    Mistake("train-mode-never-restored", "train_one_epoch() without model.train(), with dropout 0.5", 8,
            "train_one_epoch", right="    model.train()  # dropout on\n", wrong="", kind="loss",
            headline="dropout off after epoch 1", options=("--dropout", "0.5")),
    Mistake("unshuffled-data", "shuffle=False, on a data set stored class by class", 7, "make_loaders",
            right="shuffle=True,", wrong="shuffle=False,", kind="accuracy",
            headline="it forgets all but the last classes it saw", by_class=True),
    Mistake("lr-ten-times", "a learning rate ten times too large", 6, None, right="", wrong="", kind="loss",
            headline="it learns, then blows up", options=("--lr", "0.01"), wrong_options=("--lr", "0.1")),
    Mistake("softmax-before-loss", "softmax before nn.CrossEntropyLoss", 6, "train_one_epoch",
            right="loss = criterion(model(x), y)", wrong="loss = criterion(F.softmax(model(x), dim=1), y)",
            kind="loss", headline="the loss barely moves"),
    Mistake("summed-loss", "a summed loss with the mean's learning rate", 4, "train_one_epoch",
            right="loss = F.cross_entropy(forward(params, x), y)",
            wrong='loss = F.cross_entropy(forward(params, x), y, reduction="sum")', kind="loss",
            headline="the loss explodes"),
    Mistake("sampler-epoch-never-set", "sampler.set_epoch(epoch) never called", 11, "main",
            right="            sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every process\n",
            wrong="", kind="order", headline="every epoch in the same order"),
    Mistake("to-device-unassigned", "x.to(device) without x =", 9, "train_one_epoch",
            right="        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # to the "
                  "device\n",
            wrong="        x.to(device), y.to(device)  # the copies are thrown away\n", kind="error",
            headline="nothing on the CPU, an error on a GPU"),
)
BY_SLUG = {m.slug: m for m in GALLERY}


def gallery_note(slug: str) -> str:
    """The line make check adds under a diagnosis: where the gallery shows this mistake's symptom."""
    return f'the gallery of mistakes shows this one: "{BY_SLUG[slug].title}" (make mistakes; {GALLERY_PAGE})'


# ---------------------------------------------------------------- the runs
N_TRAIN, N_TEST, BATCH, EPOCHS, LR = 1600, 500, 16, 3, "0.01"  # 100 steps an epoch, 300 in all
STEPS_PER_EPOCH = N_TRAIN // BATCH


def common_options(stage: int, data_dir: Path, out: Path) -> list[str]:
    from common.harness import load_stage, stage_options

    options = ["--data-dir", str(data_dir), "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", LR,
               "--seed", "0", "--threads", "1", "--out", str(out)]
    if hasattr(stage_options(load_stage(stage)), "device"):
        options += ["--device", "cpu"]
    return options


def planted_source(mistake: Mistake) -> str:
    """The stage's source with the mistake's line in place of the course's (in its function alone)."""
    import ast

    from common.harness import stage_file
    from common.tools.exercises.generator import function_nodes

    source = stage_file(mistake.stage).read_text()
    node = function_nodes(ast.parse(source))[mistake.function]
    lines = source.splitlines(keepends=True)
    before, body, after = (("".join(lines[:node.lineno - 1]), "".join(lines[node.lineno - 1:node.end_lineno]),
                            "".join(lines[node.end_lineno:])))
    if body.count(mistake.right) != 1:
        raise CourseError(f"{mistake.slug}: stage {mistake.stage}'s {mistake.function} no longer holds "
                          f"{mistake.right.strip()!r} once")
    return before + body.replace(mistake.right, mistake.wrong) + after


def mistaken_main(mistake: Mistake, folder: Path) -> Callable:
    """main() of the stage with the mistake planted, loaded from a file of its own."""
    from common.harness import load_stage

    if mistake.function is None:
        return load_stage(mistake.stage).main
    return _planted_module(mistake, folder).main


class Runs:
    """The correct runs, made once for every mistake that needs the same one."""

    def __init__(self, folder: Path):
        from common.harness.programs import small_data

        self.folder = folder
        self.data = {False: small_data(folder / "data", N_TRAIN, N_TEST),
                     True: small_data(folder / "data-by-class", N_TRAIN, N_TEST, by_class=True)}
        self.correct: dict[tuple, object] = {}
        self.count = 0

    def options(self, mistake: Mistake, *extra: str) -> list[str]:
        self.count += 1
        out = self.folder / "records" / str(self.count)
        return [*common_options(mistake.stage, self.data[mistake.by_class], out), *mistake.options, *extra]

    def run(self, main: Callable, argv: list[str]):
        from common.harness.programs import run_program

        program = run_program(main, argv)
        if program.exit_code == INTERRUPTED:  # a Ctrl-C the stage's own run caught ends the gallery too
            raise KeyboardInterrupt
        return program

    def correct_run(self, mistake: Mistake, *extra: str):
        from common.harness import load_stage

        key = (mistake.stage, mistake.options, mistake.by_class, extra)
        if key not in self.correct:
            self.correct[key] = self.run(load_stage(mistake.stage).main, self.options(mistake, *extra))
        return self.correct[key]

    def mistaken_run(self, mistake: Mistake, *extra: str):
        return self.run(mistaken_main(mistake, self.folder), self.options(mistake, *mistake.wrong_options, *extra))


# ---------------------------------------------------------------- what is measured
def measured(program) -> dict:
    """The numbers every entry reports of one run."""
    import numpy as np

    losses = program.losses
    finite = [loss for loss in losses if math.isfinite(loss)]
    diverged = next((i for i, loss in enumerate(losses, 1) if not math.isfinite(loss)), None)
    numbers = {"steps": len(losses),
               "final_loss": round(float(np.mean(finite[-50:])), 4) if finite else None,
               "test_accuracy": [round(a, 4) for a in program.accuracies],
               "diverged_at_step": diverged}
    if program.error is not None:
        numbers["error"] = one_line(f"{type(program.error).__name__}: {program.error}", 200)
    elif program.exit_code not in (None, 0):
        numbers["error"] = one_line(f"exit code {program.exit_code}: {program.last_line}", 200)
    return numbers


def weights_moved(runs: Runs, mistake: Mistake, main: Callable) -> dict:
    """The largest change of any weight from the weights it started with, after the first step
    and after the whole run, in float64 (where no rounding of the start can pass for a change)."""
    import numpy as np

    from common.weights import reference_params

    start = reference_params(0)
    moved = {}
    for when, extra in (("after_step_1", ("--max-steps", "1", "--epochs", "1")), ("after_the_run", ())):
        program = runs.run(main, runs.options(mistake, "--dtype", "float64", *extra))
        moved[when] = float(max(np.abs(program.params[n] - start[n]).max() for n in start)) \
            if program.params else float("nan")
    return moved


def repeated_evaluations(runs: Runs, mistake: Mistake, program, tries: int = 3) -> dict:
    """The test accuracy of the correct run's final weights, evaluated `tries` times by the
    course's evaluate() and by the mistaken one, each handed the model in train mode, as
    train_one_epoch leaves it."""
    import torch

    from common.data import load_data
    from common.harness import load_stage, stage_options

    stage, planted = load_stage(mistake.stage), _planted_module(mistake, runs.folder)
    argv = runs.options(mistake)
    data = load_data("auto", argv[argv.index("--data-dir") + 1], announce=False)
    _, test_loader = stage.make_loaders(data, stage_options(stage, argv))
    model = stage.Net(float(dict(zip(mistake.options[::2], mistake.options[1::2]))["--dropout"]))
    model.load_state_dict({name: torch.from_numpy(value) for name, value in program.params.items()})
    torch.manual_seed(0)
    accuracies = {}
    for key, evaluate in (("course", stage.evaluate), ("mistaken", planted.evaluate)):
        accuracies[key] = []
        for _ in range(tries):
            model.train()
            accuracies[key].append(round(evaluate(model, test_loader) / len(data.test_y), 4))
    return accuracies


def _planted_module(mistake: Mistake, folder: Path):
    from common.tools.exercises.framework import load_file

    path = folder / f"{mistake.slug}.py"
    path.write_text(planted_source(mistake))
    return load_file(path)


def repeated_order(program) -> float:
    """The share of epoch 2's batches that are the same batches, in the same place, as epoch 1's."""
    first = [b for b, e in zip(program.batches, program.epochs) if e == 1]
    second = [b for b, e in zip(program.batches, program.epochs) if e == 2]
    return sum(a == b for a, b in zip(first, second)) / max(len(second), 1)


def on_two_devices(mistake: Mistake, folder: Path, planted: bool) -> str:
    """The stage's own loop, the model on PyTorch's meta device (standing in for a GPU) and one
    batch on the CPU: what happens to the mistaken loop, and to the course's."""
    import torch

    from common.harness import driver, load_stage, sample_batches
    from common.weights import reference_params

    stage = _planted_module(mistake, folder) if planted else load_stage(mistake.stage)
    d = driver(stage)
    with warnings.catch_warnings():  # loading weights into meta tensors copies nothing, and says so
        warnings.simplefilter("ignore", UserWarning)
        model = d.build(reference_params(0), device="meta")
    [(x, y)] = sample_batches(1, BATCH, seed=0)
    batch = [(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y))]
    saved = stage.show_first_step
    stage.show_first_step = lambda loss, grad: None  # a meta tensor has no values to print
    try:
        d.train_one_epoch(model, batch, 0.01, 0.9, as_given=True, run=StepLog())
        return "ran"
    except RuntimeError as err:
        return one_line(f"RuntimeError: {err}", 200)
    finally:
        stage.show_first_step = saved


# A mistake's symptom in words, from the mistaken run's numbers and the correct run's.
SYMPTOMS: dict[str, Callable[[dict, dict], str]] = {
    "forgotten-zero-grad": lambda w, r: ".grad is never cleared, so every step adds its gradient to all the "
                                        "earlier ones and the steps grow until the loss climbs",
    "step-before-backward": lambda w, r: (
        f"the weights never move (their largest change: {w['largest_weight_change']['after_step_1']:.1e} after "
        f"step 1, {w['largest_weight_change']['after_the_run']:.1e} after the run; the correct run: "
        f"{r['largest_weight_change']['after_step_1']:.1e} and {r['largest_weight_change']['after_the_run']:.1e}), "
        "because optimizer.step() runs between zero_grad(), which empties .grad, and loss.backward(), which "
        "fills it: every step finds no gradient, and the loss stays near ln 10 = 2.30"),
    "update-outside-no-grad": lambda w, r: f"the run stops at step 1: {w.get('error')}",
    "eval-in-train-mode": lambda w, r: (
        "dropout stays on while testing: the same trained weights, evaluated three times, score "
        + ", ".join(f"{100 * a:.1f}%" for a in w["same_weights_evaluated"]) + " instead of "
        + ", ".join(f"{100 * a:.1f}%" for a in r["same_weights_evaluated"])
        + " (and the masks it draws change the random numbers training draws afterwards)"),
    "train-mode-never-restored": lambda w, r: (
        "dropout acts in epoch 1 only: evaluate() leaves the model in eval mode, so the later epochs train "
        "without it and their training loss drops at once"),
    "unshuffled-data": lambda w, r: ("each stretch of steps sees one class only, so the network forgets the "
                                     "others and ends predicting the last classes it saw"),
    "lr-ten-times": lambda w, r: "the loss falls at first, then the steps overshoot, the loss blows up and the "
                                 "network is left predicting one class",
    "softmax-before-loss": lambda w, r: (
        "the loss is given probabilities, which it softmaxes again: its gradients are tiny and the loss stays "
        "near 2.30"),
    "summed-loss": lambda w, r: (f"the loss and its gradient are {BATCH} times the mean's (the batch size), so "
                                 f"the step is {BATCH} times what the learning rate was chosen for"),
    "sampler-epoch-never-set": lambda w, r: (
        f"every epoch repeats the first one's order: {100 * w['repeated_order']:.0f}% of epoch 2's batches are "
        f"epoch 1's (correct run: {100 * r['repeated_order']:.0f}%); the loss need not show it"),
    "to-device-unassigned": lambda w, r: (
        f"on the CPU nothing shows (the losses differ by {w['loss_difference']:.1e}): x.to(cpu) is x itself; "
        f"on two devices (the model on the meta device, standing in for a GPU) the loop fails at its first "
        f"forward: {w['on_two_devices']} (the correct loop: {r['on_two_devices']})"),
}


def symptom(mistake: Mistake, wrong: dict, right: dict) -> str:
    """The symptom in words, from the measured numbers."""
    def loss_words(numbers):
        if numbers["diverged_at_step"]:
            return f"diverged (the loss became NaN or infinite) at step {numbers['diverged_at_step']}"
        return f"final loss {numbers['final_loss']}"

    def accuracy(numbers):
        return f"{100 * numbers['test_accuracy'][-1]:.1f}%" if numbers["test_accuracy"] else "none"

    special = SYMPTOMS[mistake.slug](wrong, right)
    if mistake.kind == "error":
        return special
    return (f"{special}. The mistaken run: {loss_words(wrong)}, test accuracy {accuracy(wrong)}; the correct "
            f"run: {loss_words(right)}, {accuracy(right)}")


def measure(mistake: Mistake, runs: Runs) -> dict:
    """One mistake run beside the correct run, and what tells them apart."""
    correct, wrong = runs.correct_run(mistake), runs.mistaken_run(mistake)
    right_numbers, wrong_numbers = measured(correct), measured(wrong)
    if mistake.slug == "step-before-backward":
        right_numbers["largest_weight_change"] = weights_moved(runs, mistake, _course_main(mistake))
        wrong_numbers["largest_weight_change"] = weights_moved(runs, mistake, mistaken_main(mistake, runs.folder))
    if mistake.slug == "eval-in-train-mode":
        tries = repeated_evaluations(runs, mistake, correct)
        right_numbers["same_weights_evaluated"], wrong_numbers["same_weights_evaluated"] = \
            tries["course"], tries["mistaken"]
    if mistake.kind == "order":
        right_numbers["repeated_order"], wrong_numbers["repeated_order"] = repeated_order(correct), repeated_order(wrong)
    if mistake.slug == "to-device-unassigned":
        import numpy as np

        wrong_numbers["loss_difference"] = float(np.max(np.abs(np.array(wrong.losses) - np.array(correct.losses))))
        right_numbers["on_two_devices"] = on_two_devices(mistake, runs.folder, planted=False)
        wrong_numbers["on_two_devices"] = on_two_devices(mistake, runs.folder, planted=True)
    return {"name": mistake.slug, "title": mistake.title, "stage": mistake.stage,
            "where": f"stages/{_stage_name(mistake.stage)}.py" + (f", {mistake.function}()" if mistake.function
                                                                  else ", the command line"),
            "right": mistake.shown_right, "wrong": mistake.shown_wrong, "kind": mistake.kind,
            "symptom": symptom(mistake, wrong_numbers, right_numbers),
            "numbers": {"mistaken": wrong_numbers, "correct": right_numbers},
            "headline": mistake.headline,
            "curves": {"mistaken": _rounded(wrong.losses), "correct": _rounded(correct.losses),
                       "mistaken_accuracy": wrong_numbers.get("same_weights_evaluated", wrong.accuracies),
                       "correct_accuracy": right_numbers.get("same_weights_evaluated", correct.accuracies),
                       "accuracy_of": "try" if mistake.slug == "eval-in-train-mode" else "epoch"}}


def _course_main(mistake: Mistake):
    from common.harness import load_stage

    return load_stage(mistake.stage).main


def _stage_name(stage: int) -> str:
    from common.harness import stage_file

    return stage_file(stage).stem


def _rounded(losses: list[float]) -> list:
    return [round(loss, 5) if math.isfinite(loss) else None for loss in losses]


# ---------------------------------------------------------------- the figure and the page
def plot(entries: list[dict], path: Path) -> None:
    """Each mistake's panel: its training loss (mean of 10 steps, log scale) beside the correct
    run's, or for a mistake of testing or of the data, the test accuracy."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from common.run import write_whole

    columns = 3
    rows = math.ceil(len(entries) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.3 * rows), squeeze=False)
    for ax, entry in zip(axes.flat, entries):
        curves = entry["curves"]
        if entry["kind"] == "accuracy":
            for key, colour, label in (("correct_accuracy", "tab:blue", "correct"),
                                       ("mistaken_accuracy", "tab:red", "mistaken")):
                values = [100 * a for a in curves[key]]
                ax.plot(range(1, len(values) + 1), values, marker="o", color=colour, label=label)
            ax.set(xlabel="evaluation of the same final weights" if curves["accuracy_of"] == "try" else "epoch",
                   ylabel="test accuracy (%)", ylim=(0, 100))
            ax.xaxis.get_major_locator().set_params(integer=True)
        else:
            for key, colour, label in (("correct", "tab:blue", "correct"), ("mistaken", "tab:red", "mistaken")):
                values = np.array([np.nan if v is None else v for v in curves[key]], dtype=float)
                if len(values) >= 10:
                    values = np.convolve(values, np.ones(10) / 10, mode="valid")
                if len(values):
                    ax.plot(np.arange(1, len(values) + 1), values, color=colour, label=label, alpha=0.9)
            ax.set(xlabel="step", ylabel="training loss (mean of 10 steps)", yscale="log", ylim=(0.1, 100))
        if entry["kind"] in ("error", "order"):
            ax.text(0.03, 0.05, "\n".join(_wrapped(entry["symptom"].split(". ")[0], 55)), transform=ax.transAxes, fontsize=7,
                    color="tab:red", va="bottom")
        ax.set_title(f"stage {entry['stage']}: {entry['title']}", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(entries):]:
        ax.axis("off")
    fig.suptitle("Classic mistakes beside the correct run (make mistakes)")
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, dpi=90)
    plt.close(fig)
    write_whole(path, lambda f: f.write(image.getvalue()))


def _wrapped(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)[:4]


def page(report: dict, figure: str) -> str:
    """The gallery as markdown: a table, then each mistake with its lines and numbers."""
    settings = report["settings"]
    lines = ["# A gallery of classic mistakes", "",
             "Each mistake is one line of a stage written wrong (or one option), run beside the correct run from "
             "the same seed on the same small synthetic data folder "
             f"({settings['train_images']} training and {settings['test_images']} test images, batches of "
             f"{settings['batch_size']}, {settings['epochs']} epochs, lr {settings['lr']}, one thread). "
             f"`make mistakes` measured every number below on {report['measured']} ({report['machine']}, torch "
             f"{report['torch']}), in {report.get('seconds', '?')} s for the {len(report['mistakes'])} mistakes and "
             "their correct runs. `make check` names the entry that matches a mistake it finds in your exercise.",
             "", f"![each mistake's curve beside the correct run's]({figure})", "",
             "| mistake | stage | symptom | mistaken run | correct run |", "|---|---|---|---|---|"]
    for entry in report["mistakes"]:
        wrong, right = entry["numbers"]["mistaken"], entry["numbers"]["correct"]
        lines.append(f"| [{entry['title']}](#{entry['name']}) | {entry['stage']} | {entry['headline']} "
                     f"| {_cell(wrong)} | {_cell(right)} |")
    for entry in report["mistakes"]:
        lines += ["", f'<a id="{entry["name"]}"></a>', "", f"## {entry['title']}", "",
                  f"Stage {entry['stage']}, {entry['where']}:", "", "```diff",
                  *(f"- {line}" for line in entry["right"]), *(f"+ {line}" for line in entry["wrong"]), "```", "",
                  entry["symptom"].rstrip(".") + "."]  # an error's own message may end the sentence
    return "\n".join(lines) + "\n"


def _cell(numbers: dict) -> str:
    if "same_weights_evaluated" in numbers:
        return "the same weights: " + ", ".join(f"{100 * a:.1f}%" for a in numbers["same_weights_evaluated"])
    if numbers.get("error") and numbers.get("steps", 0) == 0:
        return numbers["error"].split(":")[0] + " at step 1"
    loss = (f"diverged at step {numbers['diverged_at_step']}" if numbers.get("diverged_at_step")
            else f"loss {numbers['final_loss']}")
    accuracy = f", accuracy {100 * numbers['test_accuracy'][-1]:.1f}%" if numbers.get("test_accuracy") else ""
    return loss + accuracy


# ---------------------------------------------------------------- command line
def parse(argv) -> argparse.Namespace:
    from common.cli import OneLineParser

    parser = OneLineParser(prog="python -m common.tools.mistakes", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BY_SLUG), metavar="SLUG",
                        help=f"only these mistakes (default: all {len(GALLERY)}): " + ", ".join(BY_SLUG))
    parser.add_argument("--out", default="runs/mistakes", help="folder for mistakes.json, .png and .md")
    parser.add_argument("--docs", action="store_true", help=f"also write {GALLERY_PAGE} and its figure")
    return parser.parse_args(argv)


def run_gallery(mistakes, folder: Path, say=print) -> dict:
    from importlib.metadata import version

    runs = Runs(folder)
    entries = []
    for i, mistake in enumerate(mistakes, 1):
        start = time.perf_counter()
        entries.append(measure(mistake, runs))
        say(f"{i}/{len(mistakes)} {mistake.title} (stage {mistake.stage}): {mistake.headline} "
            f"[{time.perf_counter() - start:.0f}s]")
    return {"measured": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {platform.system()}",
            "torch": version("torch"),
            "settings": {"train_images": N_TRAIN, "test_images": N_TEST, "batch_size": BATCH, "epochs": EPOCHS,
                         "lr": float(LR), "seed": 0, "threads": 1},
            "mistakes": entries}


def write(report: dict, out: Path, docs: bool) -> list[Path]:
    from common.run import write_whole

    out.mkdir(parents=True, exist_ok=True)
    written = []
    targets = [(out, "mistakes.png")] + ([(ROOT / "docs", "figures/mistakes.png")] if docs else [])
    for folder, figure in targets:
        (folder / figure).parent.mkdir(parents=True, exist_ok=True)
        plot(report["mistakes"], folder / figure)
        name = "mistakes.md" if folder == out else Path(GALLERY_PAGE).name
        write_whole(folder / name, lambda f, figure=figure: f.write(page(report, figure).encode()))
        written += [folder / figure, folder / name]
    write_whole(out / "mistakes.json", lambda f: f.write((json.dumps(report, indent=1) + "\n").encode()))
    return [out / "mistakes.json", *written]


def interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    mistakes = [BY_SLUG[s] for s in args.only] if args.only else list(GALLERY)
    start = time.perf_counter()
    # SIGTERM and SIGHUP end it as a Ctrl-C does: one line, nothing half-written
    saved = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)  # before the runs: a folder that cannot be made is said at once
        with tempfile.TemporaryDirectory(prefix="mistakes-") as folder:
            report = run_gallery(mistakes, Path(folder))
        report["seconds"] = round(time.perf_counter() - start)
        written = write(report, Path(args.out), args.docs)
    except KeyboardInterrupt:
        print("mistakes: interrupted; nothing written", file=sys.stderr)
        return INTERRUPTED
    except CourseError as err:
        print(f"mistakes: {printable(str(err))}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        print(f"mistakes: cannot write {err.filename or args.out}: {err.strerror}", file=sys.stderr)
        return describe(err)[1]  # 4 for a write that failed midway, 2 for a folder that cannot be used
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    print(f"mistakes: {len(mistakes)} mistakes measured in {time.perf_counter() - start:.0f}s; wrote "
          + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
