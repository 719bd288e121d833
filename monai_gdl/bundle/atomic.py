"""Atomic file writes: temporary file, fsync, rename, so a kill at any point leaves the previous complete
file; and the removal of the temporary files (``<name>.tmp-<pid>``) a killed writer left behind."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from collections.abc import Callable
from typing import IO

import torch

__all__ = ["atomic_save", "atomic_write", "remove_leftovers"]


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
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    sync_dir(path)


def atomic_save(obj: dict, path: str) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))
