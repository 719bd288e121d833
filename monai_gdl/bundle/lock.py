"""One training at a time per output folder: an exclusive lock that the operating system releases when its
process ends, however it ends (a killed run never leaves it stuck).

Two trainings writing one ``--output_dir`` would mix their ``history.csv`` rows and overwrite each other's
``model.pt``; the second is refused before it loads any data, naming the folder and the process that holds
it. In multi-process training only rank 0 takes the lock (the ranks of one run share the folder). Where the
platform has no ``fcntl`` (Windows) there is no lock.
"""

from __future__ import annotations

import os
import time

from monai_gdl.bundle.ranks import rank

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "OutputDirInUseError", "hold_output_dir"]

LOCK_FILE = ".monai_gdl.lock"
_held: dict[str, int] = {}


class OutputDirInUseError(RuntimeError):
    """Another process is training into the same output folder."""


def hold_output_dir(output_dir: str) -> str:
    """Lock ``output_dir`` for this process (rank 0) until it exits; refuse if another process holds it.
    Returns ``output_dir``."""
    if fcntl is None or rank() != 0:
        return output_dir
    path = os.path.join(output_dir, LOCK_FILE)
    key = os.path.realpath(path)
    if key in _held:
        return output_dir
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise OutputDirInUseError(
            f"output_dir={output_dir!r} is in use by another training ({holder}); two runs in one folder would mix "
            "their history.csv and overwrite each other's model.pt. Wait for it to finish, stop it, or pass another "
            "--output_dir."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
    _held[key] = fd  # kept open: the lock lasts as long as this process
    return output_dir
