"""torchrun, ending as the course's programs end: one line and an exit code, never a traceback.

    python -m common.tools.torchrun --nproc-per-node 2 -m stages.stage11_distributed --epochs 1

takes torchrun's own arguments and runs torchrun itself (`torch.distributed.run.main`) in this
process. Plain `torchrun` answers Ctrl-C, and any process that exits with an error, with
its own traceback and a failure report; here Ctrl-C (which reaches torchrun; torchrun starts
each worker in a session of its own and passes the signal on, and the workers agree to stop
after the same step, see common/run/) ends with one line and code 130, and a process that failed (bad input, say) with its own one-line message,
printed once by that process, and its exit code.
"""
from __future__ import annotations

import logging
import sys
import types

from common.cli import OneLineParser
from common.errors import INTERRUPTED
from common.run import signals
from common.run.program import run_program


def main(argv=None) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed import run as torchrun_module
    from torch.distributed.run import main as torchrun

    torchrun_module.get_args_parser = one_line(torchrun_module.get_args_parser)
    for logger in ("torch.distributed.elastic", "torch.distributed.run"):  # warnings that restate the ending
        logging.getLogger(logger).setLevel(logging.ERROR)
    try:
        torchrun(sys.argv[1:] if argv is None else argv)
    except SignalException as err:
        signals.reclaim()  # torchrun's own handlers would raise again during the exit
        print(f"torchrun: stopped by {err.sigval.name}, which it passed on to every process", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except ChildFailedError as err:
        signals.reclaim()
        rank, first = err.get_first_failure()  # the earliest: the others may have failed because of it
        code = first.exitcode if 0 < first.exitcode < 256 else 1  # a negative code is a signal's number
        print(f"torchrun: {len(err.failures)} process(es) failed; rank {rank} failed first, "
              f"with exit code {first.exitcode}", file=sys.stderr)
        sys.exit(code)
    except KeyboardInterrupt:  # a signal before torchrun installed its own handlers
        print(f"torchrun: stopped by {signals.name(signals.pending())} before the processes started", file=sys.stderr)
        sys.exit(INTERRUPTED)


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
    run_program(main)  # one line and an exit code for every other ending (common/run/program.py)
