"""torchrun (torch.distributed.run), quiet when a worker stops on bad input.

    python -m tunekit.torchrun --nproc_per_node N finetune.py ...      (what recipes/launch.sh runs for several processes)

When finetune.py stops on bad input it prints one `error: ...` line and exits 2; plain torchrun would then log its own
`failed (exitcode: 2)` line, SIGTERM lines for the other ranks and a ChildFailedError traceback.  Here the elastic
agent's log lines are held until the workers end: a worker that exits 2 leaves its `error:` line the last one printed
and the launcher exits 2; any other failure (a crash, a kill) gets the held lines and one line naming the rank that
stopped first; a run that succeeds gets the held lines.  Arguments, rendezvous and the agent are torchrun's, unchanged.
"""
import logging
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main

BAD_INPUT = 2  # tunekit's exit status for bad input: the worker has said why in one `error:` line


class Held(logging.Handler):
    """Keeps the records that would have been printed, to print or drop once the outcome is known."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def finish(self, print_them: bool) -> None:
        elastic = logging.getLogger("torch.distributed.elastic")
        elastic.removeHandler(self)
        elastic.propagate = True
        if print_them:
            for record in self.records:
                elastic.callHandlers(record)  # where they were going (torch's handler), in their order


def run() -> int:
    held = Held()
    elastic = logging.getLogger("torch.distributed.elastic")  # the agent's loggers are its children
    elastic.addHandler(held)
    elastic.propagate = False
    try:
        main()
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()  # the root cause; the other ranks were stopped because of it
        code = failure.exitcode
        if code == BAD_INPUT:
            held.finish(False)
            return BAD_INPUT
        held.finish(True)
        print(f"torchrun: {e.name} stopped on rank {rank} with exit status {code} (its output is above)",
              file=sys.stderr)
        return code if isinstance(code, int) and code > 0 else 1
    except BaseException:
        held.finish(True)
        raise
    held.finish(True)
    return 0


if __name__ == "__main__":
    sys.exit(run())
