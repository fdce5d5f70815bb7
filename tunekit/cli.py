"""The command line around finetune.main: library noise kept off the first screen, bad input as one `error: ...` line
with exit status 2 (no traceback, nothing written by then), and a clean exit under torchrun."""
from __future__ import annotations

import os
import sys

from .noise import quiet_libraries

quiet_libraries()  # at import: finetune.py imports this module first, before transformers pulls the libraries in


def run_cli(main, argv=None) -> int:
    """Runs main(argv); an ArgumentError becomes one `error: ...` line on stderr and exit status 2."""
    from .errors import ArgumentError

    try:
        main(argv)
    except ArgumentError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


def shutdown_distributed() -> None:
    """Under torchrun, leave the process group together before exit: a rank that exits while the other still runs
    its communication threads aborts with 'terminate called without an active exception'."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main_entry(main) -> None:
    """`python finetune.py ...`: run, leave the process group, exit with the status."""
    code = run_cli(main)
    shutdown_distributed()
    sys.exit(code)
