"""Folders and files written whole or not at all: build beside the target, then swap it into place.  What a killed
process left beside a target (its temporary copy, a 7B merge is 13 GB) is removed by the next write of that target."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:  # PermissionError: another user's process, alive
        return not isinstance(e, ProcessLookupError)
    return True


def _temporary(out: Path) -> str:
    """The prefix of this process's temporary siblings of `out` (.NAME.tmp-PID-...), once those of dead writers are
    removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        pid = tmp.name.removeprefix(f".{out.name}.tmp-").split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    return f".{out.name}.tmp-{os.getpid()}-"


def _as_created(tmp: Path, mode: int) -> None:
    """mkdtemp and mkstemp make what only the owner may read: give it the mode open() or mkdir would have."""
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(mode & ~umask)


@contextmanager
def atomic_folder(out: Path):
    """Yields a fresh temporary folder next to `out`.  When the block ends normally it replaces `out` (an old `out` is
    moved aside first and deleted only after the swap); when the block raises, `out` is untouched and the temporary
    folder is deleted."""
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary(out), dir=out.parent))
    _as_created(tmp, 0o777)
    try:
        yield tmp
        aside = Path(tempfile.mkdtemp(prefix=_temporary(out), dir=out.parent))
        if out.exists():
            out.rename(aside / "old")
        tmp.rename(out)
        shutil.rmtree(aside)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(out):
    """Yields a text file open next to `out`, renamed onto `out` when the block ends normally."""
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=_temporary(out), dir=out.parent)
    _as_created(Path(tmp), 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
