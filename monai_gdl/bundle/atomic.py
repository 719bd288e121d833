"""Atomic file writes: temporary file, fsync, rename, so a kill at any point leaves the previous complete
file; and the removal of the temporary files (``<name>.tmp-<pid>``) a killed writer left behind. A write
that fails (a full disk above all) is a :class:`WriteError` naming the file, the cause and the fix."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
from collections.abc import Callable
from typing import IO

import torch

__all__ = ["WriteError", "atomic_save", "atomic_write", "disk_full", "disk_full_message", "remove_leftovers"]

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class WriteError(OSError):
    """A bundle output that could not be written; the previous complete file is still there."""


def disk_full(err: BaseException) -> OSError | None:
    """The "no space left" (or quota) error in ``err``'s chain, if any."""
    seen: list[BaseException] = []
    cause: BaseException | None = err
    while cause is not None and cause not in seen:
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL:
            return cause
        seen.append(cause)
        cause = cause.__cause__ or cause.__context__
    return None


def disk_full_message(path: str) -> str:
    """What a full disk under ``path`` means for the run, and the fix."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = f" ({shutil.disk_usage(folder).free / 2**20:.0f} MiB free in {folder})"
    except OSError:
        free = ""
    return (
        f"could not write {path}: no space left on device{free}. Nothing was damaged: checkpoints and history.csv "
        "are only ever replaced whole. Free space on that disk (or pass --output_dir on another one) and run the same "
        "command again: training resumes from the last complete checkpoint."
    )


def _write_error(path: str, err: Exception) -> WriteError:
    if disk_full(err) is not None:
        return WriteError(disk_full_message(path))
    return WriteError(f"could not write {path} ({type(err).__name__}: {err}); the previous file is intact.")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_leftovers(output_dir: str) -> None:
    """Temporary files (``<name>.tmp-<pid>``) of writers that no longer run, in ``output_dir`` and its
    folders (``models/``, ``logs/``): what a kill leaves."""
    root = glob.escape(output_dir)
    for path in glob.glob(os.path.join(root, "*.tmp-*")) + glob.glob(os.path.join(root, "*", "*.tmp-*")):
        pid = path.rsplit(".tmp-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(path)


def sync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str, write: Callable[[IO[bytes]], object]) -> None:
    """``write(file)`` into ``path.tmp-<pid>``, fsync, rename over ``path``: a kill at any point leaves the
    previous complete ``path``."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(err, Exception) and not isinstance(err, WriteError):
            raise _write_error(path, err) from err
        raise
    sync_dir(path)


def atomic_save(obj: dict, path: str) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))
