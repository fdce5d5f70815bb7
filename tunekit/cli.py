"""The command line around finetune.main: library noise kept off the first screen, bad input as one `error: ...` line
with exit status 2 (no traceback, nothing written by then), and a clean exit under torchrun."""
from __future__ import annotations

import logging
import os
import sys
import warnings

# Import-time messages of libraries that say nothing about this run: torchao (pulled in by peft when the GPTQ stack
# is installed) logs every optional kernel it cannot load on a CPU torch, and torch's pytree logs deprecations.
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_libraries() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", module="torchao")


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
