"""`python -m tunekit.torchrun ...` (recipes/launch.sh, several processes): torchrun, quiet when a worker stops on bad
input.  The elastic agent's log lines are held until the workers end: a worker that exits 2 leaves its `error:` line
the last one printed (no `failed (exitcode: 2)`, SIGTERM or ChildFailedError lines); any other failure gets the held
lines and one line naming the rank that stopped first.  Arguments, rendezvous and the agent are torchrun's."""
import logging
import logging.handlers
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main

BAD_INPUT = 2  # tunekit's exit status for bad input: the worker has said why in one `error:` line


def run() -> int:
    elastic = logging.getLogger("torch.distributed.elastic")  # the agent's loggers are its children
    held = logging.handlers.BufferingHandler(sys.maxsize)  # never flushes by itself
    elastic.addHandler(held)
    elastic.propagate = False

    def finish(print_them: bool) -> None:
        elastic.removeHandler(held)
        elastic.propagate = True
        for record in held.buffer if print_them else ():
            elastic.callHandlers(record)  # where they were going (torch's handler), in their order

    try:
        main()
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()  # the root cause; the other ranks were stopped because of it
        code = failure.exitcode
        finish(code != BAD_INPUT)
        if code == BAD_INPUT:
            return BAD_INPUT
        print(f"torchrun: {e.name} stopped on rank {rank} with exit status {code} (its output is above)",
              file=sys.stderr)
        return code if isinstance(code, int) and code > 0 else 1
    except BaseException:
        finish(True)
        raise
    finish(True)
    return 0


if __name__ == "__main__":
    sys.exit(run())
