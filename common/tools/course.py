"""Run the course: every stage (or the ones named) in order, then a summary table and figure.

Options other than --stages go to every stage unchanged, e.g.
  python -m common.tools.course --epochs 1
  python -m common.tools.course --stages 1 3 --max-steps 20 --data synthetic

The summary goes beside the stages' records (--out, default runs/), under a name that says
what kind of run it was, so that a short or partial run never replaces the summary of a full one:
  course-summary.json, .png                    every stage, no --max-steps (`make run`)
  course-summary-smoke.json, .png              every stage, cut short by --max-steps (`make smoke`)
  course-summary-stages-3.json, .png           some stages only (`make run STAGE=3`)
  course-summary-stages-1-3-smoke.json, .png   some stages, cut short
The JSON holds how the course was run and, per stage, its summary and its record folder
(relative to the JSON's folder); `make site` shows each stage's figure from the full run.

Exit codes: 2, with one line, for an unknown stage or a bad option; 4 for a summary that cannot be
written (the previous one stays whole); a stage that fails stops the course with that stage's own
exit code.
"""
from __future__ import annotations

import difflib
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from common.cli import OneLineParser
from common.data import CHANCE, SYNTHETIC_NAME, data_name, on_data
from common.errors import BAD_INPUT, WRITE_FAILED, CourseError
from common.harness import ROOT, load_stage, stage_names
from common.tools.figures import save_figure, write_whole
from common.tools.program import run_program
from common.tools.exercises.catalog import EXERCISES

COINCIDE = 0.005  # curves closer than this fraction of the loss axis's range share a colour and a legend entry


def parse(argv):
    parser = OneLineParser(prog="python -m common.tools.course", description=__doc__.splitlines()[0],
                           epilog="Any other option is passed to every stage (see a stage's --help).")
    parser.add_argument("--stages", type=int, nargs="+", default=None,
                        help="stage numbers to run (default: all, in order)")
    args, stage_argv = parser.parse_known_args(argv)
    for word in stage_argv:  # the stages' parser would suggest one of its own options for a misspelt --stages
        if word.startswith("--") and difflib.get_close_matches(word.split("=")[0], ["--stages"], cutoff=0.8):
            parser.error(f"unrecognized arguments: {word}")
    try:
        names = stage_names() if args.stages is None else [load_stage(n).__name__ for n in args.stages]
    except ValueError as err:  # an unknown stage number: say so before anything runs
        parser.exit(BAD_INPUT, f"{parser.prog}: error: {err}\n")
    return names, stage_argv


def stage_number(name: str) -> int:
    """"stages.stage03_autograd" or "stage03_autograd" -> 3."""
    return int(name.rpartition(".")[2][5:7])


def summary_name(numbers: list[int], all_numbers: list[int], max_steps: int | None) -> str:
    """The file name (without suffix) of a course summary: only a full run gets the plain name."""
    name = "course-summary"
    if sorted(set(numbers)) != sorted(all_numbers):
        name += "-stages-" + "-".join(str(n) for n in sorted(set(numbers)))
    if max_steps is not None:
        name += "-smoke"
    return name


def format_duration(seconds: float) -> str:
    """42.0s under a minute, 3m 05s above."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m {seconds:02d}s"


# ---------------------------------------------------------------- the summary table
def data_of(summaries: list[dict]) -> str:
    """What the stages trained on, in the words of the figures: one name, or each of them."""
    names = dict.fromkeys(data_name(s.get("data", {}).get("source")) for s in summaries)
    return " and ".join(names)


def format_summary(summaries: list[dict]) -> str:
    """The table, under a line naming the data, and the notes that explain its numbers."""
    lines = [f"test accuracy on {data_of(summaries)}:",
             f"{'stage':<24}{'steps':>8}{'final loss':>12}{'test accuracy':>15}{'seconds':>10}", "-" * 69]
    for s in summaries:
        lines.append(f"{s['stage']:<24}{s['steps']:>8}{s['final_loss']:>12.4f}"
                     f"{100 * s['test_accuracy']:>14.2f}%{s['seconds']:>10.1f}")
    lines += [textwrap.fill(note, 100, initial_indent="note: ", subsequent_indent="      ")
              for note in notes(summaries)]
    return "\n".join(lines)


SYNTHETIC_NOTE = ("synthetic shapes, not CIFAR-10: each class is one shape in one colour, so one epoch reaches "
                  "about 95 %; on CIFAR-10's photographs the tutorial's network reaches 53-56 % "
                  "(docs/running.md, the built-in synthetic set)")


def notes(summaries: list[dict]) -> list[str]:
    """Why the numbers are what they are: the synthetic set is easy, and the stages that draw
    their batches through a DistributedSampler see them in another order than the others."""
    found = []
    if any(data_name(s.get("data", {}).get("source")) == SYNTHETIC_NAME for s in summaries):
        found.append(SYNTHETIC_NOTE)
    sampled = [i for i, s in enumerate(summaries) if uses_a_distributed_sampler(s["stage"])]
    if sampled and len(sampled) < len(summaries):
        first = stage_number(summaries[sampled[0]]["stage"])
        found.append(f"{group_label(summaries, sampled)} take{'s' if len(sampled) == 1 else ''} the batches from "
                     "a DistributedSampler, which shuffles in another order than the stages before them; one "
                     f"epoch's accuracy moves by a few points with the order alone, so stage {first}'s gap to the "
                     "stages before it is the data order, not a cost of DDP (docs/stages/stage11_distributed.md)")
    return found


def uses_a_distributed_sampler(stem: str) -> bool:
    name = f"stages.{stem}"
    return name in stage_names() and "DistributedSampler" in vars(load_stage(name))


def next_steps(names: list[str], smoke: bool) -> list[str]:
    """What to do after this run, as commands: the last lines `make run` prints."""
    numbers = [stage_number(n) for n in names]
    if smoke:
        return ["next: make run trains every stage for a whole epoch, and make site shows the result"]
    if len(numbers) > 1:
        first = names[0].rpartition(".")[2]
        yourself = f", and do it yourself: make exercise STAGE={numbers[0]}" if numbers[0] in EXERCISES else ""
        return ["next: make site, then open site/index.html: each stage's figure, its lesson and its diff",
                f"      begin with the first lesson, {lesson_page(first)}{yourself}"]
    [n], stem = numbers, names[0].rpartition(".")[2]
    lines = [f"next: read {lesson_page(stem)}" + (f", see the lesson's code: make diff FROM={n - 1} TO={n}"
                                                   if n > 1 else "")]
    if n in EXERCISES:
        lines.append(f"      do it yourself: make exercise STAGE={n}, then make check STAGE={n}")
    later = [m for m in (stage_number(x) for x in stage_names()) if m > n]
    if later:
        lines.append(f"      then the next stage: make run STAGE={later[0]}")
    return lines


def lesson_page(stem: str) -> str:
    """The stage's lesson page, or its docstring where the course has no page for it."""
    page = Path("docs", "stages", f"{stem}.md")
    return page.as_posix() if (ROOT / page).exists() else f"the docstring of stages/{stem}.py"


def main(argv=None) -> list[dict]:
    names, stage_argv = parse(sys.argv[1:] if argv is None else argv)
    started, start = time.strftime("%Y-%m-%d %H:%M:%S"), time.perf_counter()
    summaries = []
    for k, name in enumerate(names, start=1):
        so_far = format_duration(time.perf_counter() - start)
        print(f"\n=== stage {k} of {len(names)}: {name.partition('.')[2]} ({so_far} so far) ===", flush=True)
        summaries.append(load_stage(name).main(stage_argv))  # a failing stage exits with its own code
    seconds = time.perf_counter() - start
    print("\n" + format_summary(summaries))
    json_path, png_path, course = write_summary(summaries, names, stage_argv, started, seconds)
    print(f"summary: {json_path}, figure: {png_path}")
    print(f"total time: {format_duration(seconds)} for {len(names)} stage{'s' if len(names) > 1 else ''}")
    print("\n".join(next_steps(names, smoke=course["max_steps"] is not None)))
    return summaries


def write_summary(summaries: list[dict], names: list[str], stage_argv: list[str], started: str,
                  seconds: float) -> tuple[Path, Path, dict]:
    """course-summary*.json and .png beside the records, named after the kind of run; and what the JSON holds."""
    from common.tools.figures import plt  # matplotlib loads only once the stages have finished

    records = [Path(s["record"]) for s in summaries]
    out = records[0].parent.parent  # runs/<stage>/<timestamp> -> runs
    options = json.loads((records[0] / "options.json").read_text())  # as the stages parsed them
    numbers, all_numbers = [stage_number(n) for n in names], [stage_number(n) for n in stage_names()]
    name = summary_name(numbers, all_numbers, options["max_steps"])
    course = {
        "full": name == "course-summary",  # every stage, no --max-steps: what `make site` shows
        "all_stages": sorted(set(numbers)) == sorted(all_numbers), "stages": numbers,
        "epochs": options["epochs"], "max_steps": options["max_steps"], "argv": stage_argv,
        "started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(seconds, 1),
        "summaries": [dict(s, record=Path(os.path.relpath(r, out)).as_posix()) for s, r in zip(summaries, records)],
    }
    fig = draw_course(summaries, describe(course))
    try:  # each to a temporary name, renamed: a failed write leaves the previous summary whole
        save_figure(fig, out / f"{name}.png", dpi=100)  # the figure first: the JSON never describes a missing one
        write_whole(out / f"{name}.json", lambda f: f.write((json.dumps(course, indent=2) + "\n").encode()))
    except OSError as err:
        raise CourseError(f"cannot write the summary to {out}: {err.strerror or err}; "
                          "the previous summary and figure are unchanged", WRITE_FAILED) from None
    finally:
        plt.close(fig)  # pyplot keeps every figure it made until it is closed
    return out / f"{name}.json", out / f"{name}.png", course


def describe(course: dict) -> str:
    """The figure's title: which run this was, in the learner's words."""
    stages = [str(n) for n in course["stages"]]
    if course["all_stages"]:
        what = f"all {len(stages)} stages"
    else:
        what = f"stage {stages[0]}" if len(stages) == 1 else f"stages {', '.join(stages[:-1])} and {stages[-1]}"
    what += f", {course['epochs']} epoch{'s' if course['epochs'] > 1 else ''}{' each' if len(stages) > 1 else ''}"
    if course["full"]:
        what = "the full course: " + what
    if course["max_steps"] is not None:
        what = f"a smoke run: {what}, stopped at --max-steps {course['max_steps']}"
    data = data_of(course.get("summaries", []))
    return f"{what}{f', on {data}' if data else ''} (finished {course['finished'][:16]})"


# ---------------------------------------------------------------- the summary figure
def draw_course(summaries: list[dict], title: str):
    """Every stage's smoothed training loss on one axis, its test accuracy beside it; stages whose
    curves coincide share one colour and one legend entry, and the figure says they coincide."""
    from common.tools.figures import plt, read_csv, smoothing_window, trailing_mean

    losses = [read_csv(Path(s["record"]) / "losses.csv") for s in summaries]
    window = smoothing_window(min((len(l["loss"]) for l in losses if l), default=0))
    curves = [trailing_mean(l["step"], l["loss"], window) if l else (np.array([]), np.array([])) for l in losses]
    groups, gaps = coinciding_groups(curves)
    colors = [plt.cm.viridis(g / max(len(groups) - 1, 1)) for g in range(len(groups))]
    color_of = {i: colors[g] for g, members in enumerate(groups) for i in members}

    explained = notes(summaries)
    fig = plt.figure(figsize=(13, 5.5 + 0.5 * len(explained)), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[2, 1], height_ratios=[5.5, 0.5 * len(explained) or 0.01])
    ax_loss, ax_acc = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    if explained:  # under both panels: why the accuracies are what they are
        write_notes(fig.add_subplot(grid[1, :]), explained)
    for g, (members, gap) in enumerate(zip(groups, gaps)):
        label = group_label(summaries, members)
        if len(members) > 1:  # one visible line for several stages: say so where the line is named
            label += ": identical curves" if gap == 0 else f": curves coincide (largest gap {gap:.1g})"
        for i in members:
            x, y = curves[i]
            ax_loss.plot(x, y, color=colors[g], lw=1.2, marker="o" if len(x) < 2 else None,
                         label=label if i == members[0] else None)
    what = "loss per step" if window == 1 else f"trailing mean of {window} steps"
    ax_loss.set(xlabel="training step", ylabel=f"cross-entropy loss ({what})", title="training loss per stage")
    ax_loss.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    fig.legend(loc="outside lower left", ncol=2, fontsize=8, frameon=False)  # below the axes: never over a curve
    draw_accuracy(ax_acc, summaries, [color_of[i] for i in range(len(summaries))])
    fig.suptitle(title)
    return fig


def draw_accuracy(ax, summaries: list[dict], colors: list) -> None:
    """One bar per stage with its value written beside it, and chance for scale."""
    accuracy = [100 * s["test_accuracy"] for s in summaries]
    labels = [s["stage"] for s in summaries]
    bars = ax.barh(labels, np.nan_to_num(accuracy), color=colors)
    ax.bar_label(bars, labels=["no test" if np.isnan(a) else f"{a:.2f}%" for a in accuracy], padding=3, fontsize=8)
    ax.axvline(100 * CHANCE, color="0.5", ls="--", lw=1)
    ax.set(xlabel=f"test accuracy (%); dashed: chance ({100 * CHANCE:.0f}%)",
           title=f"test accuracy at the end\n{on_data(data_of(summaries))}",
           xlim=(0, 118), xticks=range(0, 101, 20))  # room beyond 100 for the values
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8)


def write_notes(ax, explained: list[str]) -> None:
    """The notes of the summary table, one paragraph each, on an axes without axis lines."""
    ax.axis("off")
    text = "\n".join(textwrap.fill(note[0].upper() + note[1:] + ".", 170) for note in explained)
    ax.text(0, 1, text, transform=ax.transAxes, va="top", fontsize=9, color="0.2")


def coinciding_groups(curves: list[tuple]) -> tuple[list[list[int]], list[float]]:
    """Stages whose curves lie within COINCIDE of the axis range of each other, and each group's
    largest gap (to its first member): the figure draws them in one colour and says so."""
    values = [y for _, y in curves if len(y)]
    span = (max(v.max() for v in values) - min(v.min() for v in values)) if values else 0.0
    groups, gaps = [], []
    for i, (x, y) in enumerate(curves):
        for g, members in enumerate(groups):
            first = curves[members[0]]
            if len(y) and np.array_equal(first[0], x) and np.abs(first[1] - y).max() <= COINCIDE * span:
                members.append(i)
                gaps[g] = max(gaps[g], float(np.abs(first[1] - y).max()))
                break
        else:
            groups.append([i])
            gaps.append(0.0)
    return groups, gaps


def group_label(summaries: list[dict], members: list[int]) -> str:
    """"stage 3" or "stages 1-6, 8": numbers, with consecutive runs shortened."""
    numbers = sorted(stage_number(summaries[i]["stage"]) for i in members)
    runs, start = [], numbers[0]
    for a, b in zip(numbers, numbers[1:] + [None]):
        if b != a + 1:
            runs.append(str(start) if start == a else f"{start}–{a}")
            start = b
    return f"stage{'s' if len(numbers) > 1 else ''} {', '.join(runs)}"


if __name__ == "__main__":
    run_program(main)  # one line and an exit code for every ending (common/tools/program.py)
