"""The course: one training program per stage, each differing from the previous by one idea."""
import sys

# `python -m stages.stageNN_<name>` imports this package before the stage's own imports, while
# sys.argv[0] is still "-m": from here to its end the program is inside the signal window, so that a
# Ctrl-C (or SIGTERM, SIGHUP) while torch imports is one line, not a traceback (common/run/signals.py).
if sys.argv[0] == "-m" and "-m" in sys.orig_argv[:-1]:
    from common.run import signals

    signals.guard_program("stage", sys.orig_argv[sys.orig_argv.index("-m") + 1].rpartition(".")[2])
