"""torchrun (torch.distributed.run), without its own traceback when a worker fails.

    python -m tunekit.torchrun --nproc_per_node N finetune.py ...      (what recipes/launch.sh runs)

When finetune.py stops on bad input it prints one `error: ...` line and exits 2; plain torchrun would then print a
ChildFailedError traceback of its own.  Here the launcher exits with the worker's status and one line saying which
rank stopped; everything else (arguments, rendezvous, elastic agent) is torchrun's, unchanged.
"""
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main

if __name__ == "__main__":
    try:
        main()
    except ChildFailedError as e:
        rank, failure = min(e.failures.items())
        print(f"torchrun: {e.name} stopped on rank {rank} with exit status {failure.exitcode} (its output is above)",
              file=sys.stderr)
        sys.exit(failure.exitcode if isinstance(failure.exitcode, int) and failure.exitcode > 0 else 1)
