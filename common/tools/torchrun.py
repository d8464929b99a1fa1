"""torchrun, ending as the course's programs end: one line and an exit code, never a traceback.

    python -m common.tools.torchrun --standalone --nproc-per-node 2 -m stages.stage11_distributed

runs torchrun itself (`torch.distributed.run.main`) in this process, with torchrun's own options.
Plain `torchrun` answers Ctrl-C, or a process that failed, with its own traceback and a failure
report; here Ctrl-C or SIGTERM (which torchrun passes on to every process) ends with one line
and 130, and a process that failed with one line naming it, after that process's own line.
"""
from __future__ import annotations

import logging
import signal
import sys
import types

from common.cli import OneLineParser
from common.errors import INTERRUPTED
from common.tools.program import run_program


def main(argv=None) -> int:
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    torchrun.get_args_parser = one_line(torchrun.get_args_parser)
    for logger in ("torch.distributed.elastic", "torch.distributed.run"):  # they restate the ending
        logging.getLogger(logger).setLevel(logging.CRITICAL)
    try:
        torchrun.main(sys.argv[1:] if argv is None else argv)
    except SignalException as err:
        quiet_from_now_on()
        print(f"torchrun: stopped by {err.sigval.name}, which it passed on to every process",
              file=sys.stderr)
        return INTERRUPTED
    except ChildFailedError as err:
        quiet_from_now_on()
        rank, first = err.get_first_failure()  # the earliest: the others may have failed because of it
        how = f"exit code {first.exitcode}" if first.exitcode > 0 else f"signal {-first.exitcode}"
        print(f"torchrun: process {rank} failed first ({how}); torchrun stopped the others",
              file=sys.stderr)
        return first.exitcode if 0 < first.exitcode < 256 else 1
    return 0


def quiet_from_now_on() -> None:
    """torchrun's own handlers would raise again at a second signal while this process ends."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def one_line(get_args_parser):
    """torchrun's own parser, whose errors are one line naming the nearest option, as the course's are."""
    def parser():
        made = get_args_parser()
        made.prog = "python -m common.tools.torchrun"
        made.error = types.MethodType(OneLineParser.error, made)
        made._nearest = types.MethodType(OneLineParser._nearest, made)
        return made
    return parser


if __name__ == "__main__":
    run_program(main)  # one line and an exit code for every other ending (common/tools/program.py)
