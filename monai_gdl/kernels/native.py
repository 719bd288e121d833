"""The ``native`` backend: a hand-fused C kernel for the Dice statistics on CPU (``native.c``).

Same math as :func:`monai_gdl.kernels.reference.forward_chunk` / ``backward_chunk`` (the reference
in the tests), but each pass reads every logit from memory once: the C source walks the volume
in tiles whose ``C x T`` probabilities stay in cache. Passes are split by voxel range over
``torch.get_num_threads()`` Python threads (the C calls run without the GIL).

Build (why not ``torch.utils.cpp_extension``: see the README's design note): on first use, with
the machine's C compiler (``$CC``, else ``cc``/``gcc``/``clang``; ``-O3 -march=native``, about 7 s
on 2 cores, stopped after ``$MONAI_GDL_BUILD_TIMEOUT_S``), into a cache folder. The file name is a
hash of everything the binary depends on (source, compiler path and version, flags, CPU features)
plus the checksum of the built file, verified before every load (a truncated or corrupt copy is
removed and rebuilt, with a warning); the build goes to a private temporary file, synced and
renamed into place (atomic: concurrent DDP ranks or test workers never see half a file; a killed
build's leftovers are removed later), and a cache folder is only used if it belongs to this user
and nobody else can write to it (else the build goes to a private folder of this process); a cached
file others can write is rebuilt. The loaded library is then checked against the reference on a
small case. Any failure leaves :func:`available` False with :func:`unavailable_reason` saying why,
and the other backends in charge.

The gradient buffer is the one large allocation of the backward; page-faulting 4 KiB pages into
it costs as much as the kernel itself, so on Linux it is advised onto transparent huge pages
where the system allows. ``MONAI_GDL_HUGE_PAGES=0`` turns that off.
"""

from __future__ import annotations

import contextlib
import ctypes
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from monai_gdl._env import env_choice, env_int
from monai_gdl.kernels.contract import NUM_STATISTICS
from monai_gdl.kernels.reference import backward_chunk, forward_chunk

__all__ = ["available", "backward", "forward", "library_path", "supports", "unavailable_reason"]

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("native.c")
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-fPIC", "-shared")
_ACTIVATION_CODES = {"none": 0, "softmax": 1, "sigmoid": 2}
_X_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_DENSE_CODES = {torch.float32: 0}
_LABEL_CODES = {torch.uint8: 1, torch.bool: 1, torch.int32: 2, torch.int64: 3, torch.float32: 4}
_OPT_SQUARED, _OPT_SOFT = 1, 2
_TERM_OPTIONS = {"none": 0, "softmax": 4, "sigmoid": 8}
#: Below this many values a pass runs on one thread (thread hand-off would cost more than it saves).
PARALLEL_MIN_ELEMENTS = 1 << 20
#: Gradient buffers at least this large are advised onto huge pages.
HUGE_PAGE_MIN_BYTES = 8 << 20
#: Default seconds a compiler may take before the build is abandoned (and the other backends used);
#: the build takes about 7 s on 2 cores.
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
    candidates = [Path(explicit)] if explicit else [
        (Path(xdg) if xdg else Path.home() / ".cache") / "monai_gdl",
        Path(tempfile.gettempdir()) / f"monai_gdl-{user}",
    ]
    for folder in candidates:
        if _usable_cache(folder):
            return folder
    logger.warning("monai_gdl: no private cache folder for the native kernel among %s (each must belong to you and "
                   "be writable by nobody else); building into a temporary folder of this process.",
                   [str(c) for c in candidates])
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
        recorded = candidate.name[len(f"native-{key}-"):-len(".so")]
        try:
            private = _private(candidate.stat())
            ok = private and _digest(candidate) == recorded
        except OSError:
            private, ok = True, False
        if ok:
            return candidate
        if private:
            logger.warning("monai_gdl: the cached native kernel %s does not match the checksum recorded when it was "
                           "built (truncated or corrupt); removing it and building again.", candidate)
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
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=build_timeout_s(),
                             check=False).stdout
    key = hashlib.sha256(
        "\0".join([_SOURCE.read_text(), cc, version, " ".join(_FLAGS), _cpu_signature()]).encode()
    ).hexdigest()[:16]
    folder = _cache_dir()
    found = _verified(folder, key)
    if found is not None:
        return found
    _remove_stale_builds(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".build-{key}-", suffix=".so")
    os.close(fd)
    try:
        subprocess.run([cc, *_FLAGS, "-o", tmp, str(_SOURCE)], check=True, capture_output=True, text=True,
                       timeout=build_timeout_s())
        os.chmod(tmp, 0o700)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        target = folder / f"native-{key}-{_digest(Path(tmp))}.so"
        os.replace(tmp, target)  # atomic: concurrent builders (test workers, DDP ranks) never see half a file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


_reason: list[str] = []


@functools.cache
def _library() -> ctypes.CDLL | None:
    _reason.clear()
    try:
        path = library_path()
        if path is None:
            raise RuntimeError("no C compiler found ($CC, cc, gcc or clang)")
        lib = ctypes.CDLL(str(path))
        ptr, i32, i64, f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
        common = [ptr, i32, ptr, i32, ptr, i64, i64, i64, i64, i64, i32, i32, f32, i32]
        lib.mgdl_forward.argtypes = [*common, ptr]
        lib.mgdl_backward.argtypes = [*common, ptr, ptr]
        lib.mgdl_forward.restype = lib.mgdl_backward.restype = i32
        lib.mgdl_prefer_huge_pages.argtypes = [ptr, i64]
        _self_check(lib)
        return lib
    except subprocess.CalledProcessError as err:
        tail = " ".join((err.stderr or "").strip().splitlines()[-3:])
        _reason.append(f"the C compiler failed on the kernel source ({tail}); set CC to another compiler")
    except subprocess.TimeoutExpired:
        _reason.append(f"the C compiler took over {build_timeout_s()} s and was stopped; set CC to another compiler "
                       "or raise MONAI_GDL_BUILD_TIMEOUT_S")
    except Exception as err:  # no compiler, a failed load or check: the other backends are always correct
        _reason.append(f"{err}")
    return None


def unavailable_reason() -> str | None:
    """Why the kernel cannot run here (None when it can): no compiler, a failed build or check."""
    return None if _library() is not None else (_reason[0] if _reason else "unknown")


def _float16_supported() -> bool:
    """float16 logits need a compiler with ``_Float16`` (GCC >= 12, recent Clang)."""
    lib = _library()
    return lib is not None and bool(lib.mgdl_has_float16())


def _self_check(lib: ctypes.CDLL) -> None:
    """The built library against the reference chunk math on a small case with every code path."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 77, generator=g)
    labels = torch.randint(0, 6, (2, 1, 77), generator=g)
    mask = torch.rand(2, 1, 77, generator=g) > 0.3
    soft = torch.rand(2, 5, 77, generator=g)
    grad = torch.randn(4, 2, 5, generator=g)
    cases = [("none", labels, True, False, False, "sigmoid", 2.0), ("softmax", soft, False, True, False, "none", 0.0),
             ("sigmoid", labels, True, False, False, "none", 0.0), ("softmax", soft, False, False, True, "softmax", 0.0),
             ("softmax", labels, True, False, False, "softmax", 2.0), ("softmax", soft, False, False, True, "sigmoid", 0.0)]
    for activation, target, label_map, squared, soft_form, voxel_term, gamma in cases:
        options = (activation, label_map, squared, soft_form, voxel_term, gamma)
        got = _forward(lib, x, target, mask, *options)
        want = forward_chunk(x, target, mask, *options)
        got_grad = _backward(lib, grad, x, target, mask, *options)
        want_grad = backward_chunk(x, target, mask, grad[..., None], *options)
        if not all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(got, want)) or not torch.allclose(
            got_grad, want_grad, rtol=1e-4, atol=1e-6
        ):
            raise RuntimeError(f"the built kernel disagrees with the reference ({options})")


def available() -> bool:
    """Whether the C kernel is built (or buildable) and checked on this machine."""
    return _library() is not None


def _channels_last(t: torch.Tensor) -> bool:
    """``B x C x N`` stored as ``B x N x C`` (a channels-last network output, a permuted one-hot)."""
    return not t.is_contiguous() and t.transpose(1, 2).is_contiguous()


def unsupported(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, label_map: bool) -> str | None:
    """Why the C kernel does not take these tensors (None when it does): device, dtype or layout."""
    if x.device.type != "cpu":
        return f"logits on {x.device.type}"
    if x.dtype not in _X_CODES:
        return f"logits of dtype {x.dtype} (it takes float32, bfloat16, float16)"
    if not (x.is_contiguous() or _channels_last(x)):
        return "logits that are neither contiguous nor channels-last"
    codes = _LABEL_CODES if label_map else _DENSE_CODES
    if target.dtype not in codes:
        kind = "label map" if label_map else "one-hot/soft target"
        return f"a {kind} of dtype {target.dtype} (it takes {', '.join(str(d) for d in codes)})"
    if not (target.is_contiguous() or (not label_map and _channels_last(target))):
        return "a target that is neither contiguous nor (one-hot) channels-last"
    if mask is not None and not mask.is_contiguous():
        return "a mask that is not contiguous"
    return None


def supports(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, label_map: bool) -> bool:
    """Whether the C kernel takes these tensors (float16 also needs a compiler with ``_Float16``)."""
    return unsupported(x, target, mask, label_map) is None and (x.dtype != torch.float16 or _float16_supported())


@functools.cache
def _pool(workers: int, pid: int) -> ThreadPoolExecutor:
    """One pool per thread count and process (a forked DataLoader worker gets its own)."""
    return ThreadPoolExecutor(workers, thread_name_prefix="monai_gdl")


def _run_split(fn, n: int, values: int, arguments) -> None:
    """``fn(*arguments(i, n0, n1))`` over voxel ranges ``i = 0, 1, ...``, one per thread (at most
    ``torch.get_num_threads()``), each a multiple of 16 voxels."""
    workers = max(1, torch.get_num_threads()) if values >= PARALLEL_MIN_ELEMENTS else 1
    if n == 0:
        return
    step = -(-n // workers)
    step = -(-step // 16) * 16
    bounds = [(s, min(n, s + step)) for s in range(0, n, step)]
    if len(bounds) == 1:
        codes = [fn(*arguments(0, 0, n))]
    else:
        pool = _pool(workers, os.getpid())
        codes = [f.result() for f in [pool.submit(fn, *arguments(i, s, e)) for i, (s, e) in enumerate(bounds)]]
    if any(code != 0 for code in codes):
        raise MemoryError("monai_gdl native kernel: could not allocate its tile buffers")


def _arguments(x, target, mask, activation, label_map, squared, soft, voxel_term, gamma):
    b, c, n = x.shape
    t_code = (_LABEL_CODES if label_map else _DENSE_CODES)[target.dtype]
    mask_ptr = None if mask is None else mask.data_ptr()
    layout = int(_channels_last(x)) | (2 if not label_map and _channels_last(target) else 0)
    # the kernel applies soft to dense targets only
    options = (_OPT_SQUARED if squared else 0) | (_OPT_SOFT if soft else 0) | _TERM_OPTIONS[voxel_term]

    def args(n0: int, n1: int) -> list:
        return [x.data_ptr(), _X_CODES[x.dtype], target.data_ptr(), t_code, mask_ptr, b, c, n, n0, n1,
                _ACTIVATION_CODES[activation], options, float(gamma), layout]

    return args


def _as_bytes(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else mask.contiguous().view(torch.uint8)


def _forward(lib, x, target, mask, activation, label_map, squared, soft, voxel_term, gamma) -> torch.Tensor:
    b, c, n = x.shape
    workers = max(1, torch.get_num_threads())
    stats = torch.zeros(workers, NUM_STATISTICS, b, c, dtype=torch.float64)
    mask = _as_bytes(mask)
    args = _arguments(x, target, mask, activation, label_map, squared, soft, voxel_term, gamma)
    _run_split(lib.mgdl_forward, n, x.numel(), lambda i, n0, n1: [*args(n0, n1), stats[i].data_ptr()])
    return stats.sum(0).to(torch.float32)


def _backward(lib, grad, x, target, mask, activation, label_map, squared, soft, voxel_term, gamma) -> torch.Tensor:
    """``dL/dx`` from ``grad = (dL/dI, dL/dP, dL/dF, dL/dQ)`` (``4 x B x C``)."""
    upstream = grad.to(torch.float32).contiguous()
    mask = _as_bytes(mask)
    grad_x = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype)  # the logits' layout, as the kernel writes it
    if grad_x.nbytes >= HUGE_PAGE_MIN_BYTES and env_choice("MONAI_GDL_HUGE_PAGES", "1", ("0", "1")) == "1":
        lib.mgdl_prefer_huge_pages(grad_x.data_ptr(), grad_x.nbytes)
    args = _arguments(x, target, mask, activation, label_map, squared, soft, voxel_term, gamma)
    _run_split(
        lib.mgdl_backward, x.shape[2], x.numel(),
        lambda _i, n0, n1: [*args(n0, n1), upstream.data_ptr(), grad_x.data_ptr()],
    )
    return grad_x


def forward(x, target, mask, activation: str, label_map: bool, squared: bool, soft: bool, voxel_term: str,
            gamma: float) -> torch.Tensor:
    """``6 x B x C`` float32 statistics of ``x`` (``B x C x N``): one C pass."""
    return _forward(_library(), x, target, mask, activation, label_map, squared, soft, voxel_term, gamma)


def backward(grad, x, target, mask, activation: str, label_map: bool, squared: bool, soft: bool, voxel_term: str,
             gamma: float) -> torch.Tensor:
    """``dL/dx`` in ``x``'s dtype and layout from ``grad = (dL/dI, dL/dP, dL/dF, dL/dQ)``: one C pass."""
    return _backward(_library(), grad, x, target, mask, activation, label_map, squared, soft, voxel_term, gamma)
