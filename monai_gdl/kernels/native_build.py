"""The native kernel's build cache: compile ``native.c`` once per machine and keep the result safely.

On first use the machine's C compiler (``$CC``, else ``cc``/``gcc``/``clang``; ``-O3 -march=native``,
a few seconds, stopped after ``$MONAI_GDL_BUILD_TIMEOUT_S``) builds the library into a cache
folder. Its file name is a hash of everything the binary depends on (source, compiler path and
version, flags, CPU features) plus the checksum of the built file, verified before every load (a
truncated or corrupt copy is removed and rebuilt, with a warning). The build goes to a private
temporary file, synced and renamed into place (atomic: concurrent DDP ranks or test workers never
see half a file; a killed build's leftovers are removed later), and a cache folder is only used if
it belongs to this user and nobody else can write to it (else the build goes to a private folder of
this process); a cached file others can write is rebuilt.

Why not ``torch.utils.cpp_extension``: see the README's design note.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from monai_gdl._env import env_int

__all__ = ["BUILD_TIMEOUT_S", "SOURCE", "build_timeout_s", "library_path"]

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native.c")
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-fPIC", "-shared")
#: Default seconds a compiler may take before the build is abandoned (and the other backends used).
BUILD_TIMEOUT_S = 45
_BUILD_TIMEOUT_S = env_int("MONAI_GDL_BUILD_TIMEOUT_S", BUILD_TIMEOUT_S, minimum=1)


def _private(info: os.stat_result) -> bool:
    """Owned by this user and writable by nobody else: what is found there was put there by us."""
    owned = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    return owned and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _private_folder(folder: Path) -> bool:
    try:
        info = folder.stat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and _private(info)


def _usable_cache(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return False
    return _private_folder(folder) and os.access(folder, os.W_OK)


def _cache_dir() -> Path:
    """``$MONAI_GDL_CACHE_DIR``, else ``$XDG_CACHE_HOME/monai_gdl`` or ``~/.cache/monai_gdl``, else a
    per-user folder in the temporary directory; the first that is private to this user. Where none
    is (a shared or foreign folder), a new private folder of this process: built again, never trusted."""
    explicit = os.environ.get("MONAI_GDL_CACHE_DIR")
    xdg = os.environ.get("XDG_CACHE_HOME")
    user = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    candidates = (
        [Path(explicit)]
        if explicit
        else [
            (Path(xdg) if xdg else Path.home() / ".cache") / "monai_gdl",
            Path(tempfile.gettempdir()) / f"monai_gdl-{user}",
        ]
    )
    for folder in candidates:
        if _usable_cache(folder):
            return folder
    logger.warning(
        "monai_gdl: no private cache folder for the native kernel among %s (each must belong to you and "
        "be writable by nobody else); building into a temporary folder of this process.",
        [str(c) for c in candidates],
    )
    return _process_folder()


@functools.cache
def _process_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="monai_gdl-build-"))


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags (Linux), else the platform."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _verified(folder: Path, key: str) -> Path | None:
    """A cached library for ``key`` whose content still has the checksum its name records (written at build
    time); a truncated or corrupt one (disk full, a killed copy, a shared cache) is removed, with a warning."""
    for candidate in sorted(folder.glob(f"native-{key}-*.so")):
        recorded = candidate.name[len(f"native-{key}-") : -len(".so")]
        try:
            private = _private(candidate.stat())
            ok = private and _digest(candidate) == recorded
        except OSError:
            private, ok = True, False
        if ok:
            return candidate
        if private:
            logger.warning(
                "monai_gdl: the cached native kernel %s does not match the checksum recorded when it was "
                "built (truncated or corrupt); removing it and building again.",
                candidate,
            )
        with contextlib.suppress(OSError):
            candidate.unlink()
    return None


def _remove_stale_builds(folder: Path) -> None:
    """Temporary files of builds that were killed: no live build is older than the build timeout."""
    limit = time.time() - 2 * build_timeout_s()
    for leftover in folder.glob(".build-*"):
        with contextlib.suppress(OSError):
            if leftover.stat().st_mtime < limit:
                leftover.unlink()


def build_timeout_s() -> int:
    """Seconds a compiler may take before the build is abandoned, with a warning, and the other backends
    used (``$MONAI_GDL_BUILD_TIMEOUT_S``, read at import, default 45): a hanging compiler never stalls
    the first loss call long."""
    return _BUILD_TIMEOUT_S


def library_path() -> Path | None:
    """The compiled library, built into the cache folder if no verified copy is there yet; None if no compiler.

    The file is ``native-<key>-<checksum>.so``: ``key`` hashes what the binary depends on, ``checksum``
    its own content, checked before every load."""
    cc = _compiler()
    if cc is None:
        return None
    version = subprocess.run(
        [cc, "--version"], capture_output=True, text=True, timeout=build_timeout_s(), check=False
    ).stdout
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), cc, version, " ".join(_FLAGS), _cpu_signature()]).encode()
    ).hexdigest()[:16]
    folder = _cache_dir()
    found = _verified(folder, key)
    if found is not None:
        return found
    _remove_stale_builds(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".build-{key}-", suffix=".so")
    os.close(fd)
    try:
        subprocess.run(
            [cc, *_FLAGS, "-o", tmp, str(SOURCE)], check=True, capture_output=True, text=True, timeout=build_timeout_s()
        )
        os.chmod(tmp, 0o700)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        target = folder / f"native-{key}-{_digest(Path(tmp))}.so"
        os.replace(tmp, target)  # atomic: concurrent builders (test workers, DDP ranks) never see half a file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target
