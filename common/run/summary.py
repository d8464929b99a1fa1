"""The end of a finished run: per_class_accuracy.csv, summary.json and curves.png, and the lines
that say how it went."""
from __future__ import annotations

from common.data import CHANCE
from common.run import streams
from common.run.progress import Progress
from common.run.record import Record


def finish(record: Record, progress: Progress, summary: dict, classes: tuple, per_class: list,
           max_steps: int | None) -> None:
    stage, accuracy = summary["stage"], summary["test_accuracy"]
    if per_class:
        record.write_text("per_class_accuracy.csv", "class,test_accuracy\n"
                          + "".join(f"{c},{a:.6f}\n" for c, a in zip(classes, per_class)))
        progress.say("test accuracy per class: " + ", ".join(f"{c} {100 * a:.1f}%" for c, a in zip(classes, per_class)))
    summary["output"] = streams.trouble()  # a stdout or stderr that broke or was closed (empty: none)
    record.write_json("summary.json", summary)
    from common.run import plots  # matplotlib loads only once a run has finished

    plots.plot_run_or_say_why(record.folder)
    print(f"{stage}: final training loss {summary['final_loss']:.4f} "
          f"(mean of the last {len(progress.recent_losses)} steps), "
          f"test accuracy {100 * accuracy:.2f}%, time {summary['seconds']:.1f}s, record {record.folder}")
    if max_steps is not None and summary["steps"] == max_steps and accuracy < 2 * CHANCE:
        print(f"{stage}: {summary['steps']} steps were too few to learn: the test accuracy, {100 * accuracy:.2f}%, "
              f"is below twice chance ({200 * CHANCE:.0f}%). At the tutorial's lr 0.001 the loss stays near ln 10 "
              "for the first few hundred steps on CIFAR-10; drop --max-steps to train whole epochs")
    if streams.trouble() != summary["output"]:  # a stream broke on the last lines: the record says so too
        summary["output"] = streams.trouble()
        record.write_json("summary.json", summary)
