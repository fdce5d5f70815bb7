"""The project's error types, and the one way every command ends.  An ArgumentError (or a subclass) is bad input: the
command prints its message as one `error: ...` line and exits 2.  The message says what, where (file, record, key)
and how to fix it."""
import argparse
import sys


class ArgumentError(ValueError):
    """A bad argument, file or combination."""


class DataError(ArgumentError):
    """A bad data file or record."""


class ConversionError(ArgumentError):
    """A checkpoint that cannot be converted exactly."""


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became inf or NaN during training."""


class EmptyAdapterError(RuntimeError):
    """A saved adapter that is missing tensors, holds empty ones, or never trained."""


# ---------------------------------------------------------------- the one way every command ends

class Parser(argparse.ArgumentParser):
    """argparse for the commands: a usage mistake is one `error:` line (exit 2) like any other bad input."""

    def __init__(self, doc: str | None = None, **kw):
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    def error(self, message):
        raise ArgumentError(f"{message} (see {self.prog} --help)")


def run_cli(main, argv=None) -> int:
    """Runs main(argv) with library noise off; an ArgumentError becomes one `error: ...` line on stderr, status 2, a
    run that fails its own checks (a non-finite loss, an adapter that did not train) one line, status 1."""
    from .noise import quiet_libraries

    quiet_libraries()
    try:
        main(argv)
    except (ArgumentError, NonFiniteLossError, EmptyAdapterError) as e:  # bad input, or a run that failed its checks
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2 if isinstance(e, ArgumentError) else 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0


def main_entry(main, argv=None) -> None:
    """A command's process (`tunekit <command>`, finetune.py): run; under torchrun leave the process group together
    (a rank that exits while another still communicates aborts with 'terminate called without an active exception')."""
    code = run_cli(main, argv)
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    sys.exit(code)
