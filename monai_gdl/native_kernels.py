"""Hand-fused C kernel for the streaming Dice statistics on CPU (``native_kernels.c``).

Same math as :func:`monai_gdl.kernels.forward_chunk` / ``backward_chunk`` (the reference in the
tests), but each pass reads every logit from memory once: the C source walks the volume in tiles
whose ``C x T`` probabilities stay in cache, where the ``torch.compile`` backend re-reads a chunk
four times. It is built on first use with the machine's C compiler (``$CC``, else ``cc``/``gcc``,
``-O3 -march=native``, about a second) into a cache folder keyed by source, compiler and CPU,
then checked against the reference on a small case; any failure leaves :func:`available` False and
the other backends in charge. Passes are split by voxel range over ``torch.get_num_threads()``
Python threads (the C calls run without the GIL).

The gradient buffer is the one large allocation of the backward; page-faulting 4 KiB pages into
it costs as much as the kernel itself, so on Linux it is advised onto transparent huge pages where
the system allows (``/sys/kernel/mm/transparent_hugepage/enabled`` = ``madvise`` or ``always``).
``MONAI_GDL_HUGE_PAGES=0`` turns that off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from monai_gdl.kernels import (
    backward_chunk,
    finish_statistics_forward,
    forward_chunk,
    upstream_gradients,
)

__all__ = ["NativeDiceStatistics", "available", "library_path", "supports"]

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("native_kernels.c")
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-fPIC", "-shared")
_ACTIVATION_CODES = {"none": 0, "softmax": 1, "sigmoid": 2}
_X_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_DENSE_CODES = {torch.float32: 0}
_LABEL_CODES = {torch.uint8: 1, torch.bool: 1, torch.int32: 2, torch.int64: 3, torch.float32: 4}
#: Below this many values a pass runs on one thread (thread hand-off would cost more than it saves).
PARALLEL_MIN_ELEMENTS = 1 << 20
#: Gradient buffers at least this large are advised onto huge pages.
HUGE_PAGE_MIN_BYTES = 8 << 20


def _cache_dir() -> Path:
    """``$MONAI_GDL_CACHE_DIR``, else ``$XDG_CACHE_HOME/monai_gdl`` or ``~/.cache/monai_gdl``; a
    per-user temporary folder where that cannot be written (read-only home in a container)."""
    root = os.environ.get("MONAI_GDL_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    preferred = (Path(xdg) if xdg else Path.home() / ".cache") / "monai_gdl"
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    user = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    return Path(tempfile.gettempdir()) / f"monai_gdl-{user}"


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


def library_path() -> Path | None:
    """The compiled library, built into the cache folder if it is not there yet; None if no compiler."""
    cc = _compiler()
    if cc is None:
        return None
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60, check=False).stdout
    key = hashlib.sha256(
        "\0".join([_SOURCE.read_text(), cc, version, " ".join(_FLAGS), _cpu_signature()]).encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"native_kernels-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so")
    os.close(fd)
    try:
        subprocess.run(
            [cc, *_FLAGS, "-o", tmp, str(_SOURCE)], check=True, capture_output=True, text=True, timeout=300
        )
        os.replace(tmp, target)  # atomic: concurrent builders (test workers, DDP ranks) never see half a file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


@functools.cache
def _library() -> ctypes.CDLL | None:
    try:
        path = library_path()
        if path is None:
            raise RuntimeError("no C compiler found ($CC, cc, gcc or clang)")
        lib = ctypes.CDLL(str(path))
        ptr, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
        common = [ptr, i32, ptr, i32, ptr, i64, i64, i64, i64, i64, i32, i32, i32]
        lib.mgdl_forward.argtypes = [*common, ptr]
        lib.mgdl_backward.argtypes = [*common, ptr, ptr, ptr]
        lib.mgdl_forward.restype = lib.mgdl_backward.restype = i32
        lib.mgdl_prefer_huge_pages.argtypes = [ptr, i64]
        _self_check(lib)
        return lib
    except subprocess.CalledProcessError as err:  # a compiler that fails on our source is worth a word
        tail = " ".join((err.stderr or "").strip().splitlines()[-3:])
        logger.warning("monai_gdl: the native CPU kernel did not build (%s); using the slower compile/eager "
                       "backends. Set CC to another compiler to retry.", tail)
        return None
    except Exception as err:  # no compiler, a failed load or check: the other backends are always correct
        logger.info("monai_gdl: native CPU kernel unavailable (%s)", err)
        return None


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
    ga, gb = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    for activation, (target, label_map), squared in zip(
        _ACTIVATION_CODES, [(labels, True), (soft, False), (labels, True)], (True, True, False)
    ):
        options = (activation, label_map, squared)
        got = _forward(lib, x, target, mask, *options)
        want = forward_chunk(x, target, mask, *options)
        grad = _backward(lib, x, target, mask, ga, gb, *options)
        want_grad = backward_chunk(x, target, mask, ga[..., None], gb[..., None], *options)
        if not all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(got, want)) or not torch.allclose(
            grad, want_grad, rtol=1e-4, atol=1e-6
        ):
            raise RuntimeError(f"native kernel disagrees with the reference ({options})")


def available() -> bool:
    """Whether the C kernel is built (or buildable) and checked on this machine."""
    return _library() is not None


def _channels_last(t: torch.Tensor) -> bool:
    """``B x C x N`` stored as ``B x N x C`` (a channels-last network output, a permuted one-hot)."""
    return not t.is_contiguous() and t.transpose(1, 2).is_contiguous()


def supports(
    x: torch.Tensor, target: torch.Tensor | None = None, mask: torch.Tensor | None = None, label_map: bool = True
) -> bool:
    """Whether the C kernel covers these tensors: CPU, the dtypes it was written for, logits and a
    dense target contiguous or channels-last, a label map and mask contiguous."""
    codes = _LABEL_CODES if label_map else _DENSE_CODES
    target_ok = target is None or (
        target.dtype in codes and (target.is_contiguous() or (not label_map and _channels_last(target)))
    )
    return (
        x.device.type == "cpu"
        and x.dtype in _X_CODES
        and (x.dtype != torch.float16 or _float16_supported())
        and (x.is_contiguous() or _channels_last(x))
        and target_ok
        and (mask is None or mask.is_contiguous())
    )


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


def _arguments(x, target, mask, activation, label_map, squared):
    b, c, n = x.shape
    t_code = (_LABEL_CODES if label_map else _DENSE_CODES)[target.dtype]
    mask_ptr = None if mask is None else mask.data_ptr()
    layout = int(_channels_last(x)) | (2 if not label_map and _channels_last(target) else 0)

    def args(n0: int, n1: int) -> list:
        return [x.data_ptr(), _X_CODES[x.dtype], target.data_ptr(), t_code, mask_ptr, b, c, n, n0, n1,
                _ACTIVATION_CODES[activation], int(squared), layout]

    return args


def _forward(lib, x, target, mask, activation, label_map, squared) -> tuple[torch.Tensor, ...]:
    b, c, n = x.shape
    workers = max(1, torch.get_num_threads())
    stats = torch.zeros(workers, 4, b, c, dtype=torch.float64)
    args = _arguments(x, target, mask, activation, label_map, squared)
    _run_split(lib.mgdl_forward, n, x.numel(), lambda i, n0, n1: [*args(n0, n1), stats[i].data_ptr()])
    return tuple(stats.sum(0).to(torch.float32).unbind(0))


def _backward(lib, x, target, mask, grad_inter, grad_pred, activation, label_map, squared) -> torch.Tensor:
    """``dL/dx`` from ``grad_inter = dL/dI`` and ``grad_pred = dL/dP`` (``B x C``, None = zeros)."""
    ga, gb = upstream_gradients(x, grad_inter, grad_pred, torch.float32)
    grad_x = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype)  # the logits' layout, as the kernel writes it
    if grad_x.nbytes >= HUGE_PAGE_MIN_BYTES and os.environ.get("MONAI_GDL_HUGE_PAGES", "1") != "0":
        lib.mgdl_prefer_huge_pages(grad_x.data_ptr(), grad_x.nbytes)
    args = _arguments(x, target, mask, activation, label_map, squared)
    _run_split(
        lib.mgdl_backward, x.shape[2], x.numel(),
        lambda _i, n0, n1: [*args(n0, n1), ga.data_ptr(), gb.data_ptr(), grad_x.data_ptr()],
    )
    return grad_x


class NativeDiceStatistics(torch.autograd.Function):
    """Same contract as :class:`monai_gdl.kernels.StreamingDiceStatistics`, one C pass each way."""

    @staticmethod
    def forward(ctx, x, target, mask, activation: str, label_map: bool, squared: bool):  # type: ignore[override]
        lib = _library()
        mask_u8 = None if mask is None else mask.view(torch.uint8)
        sums = _forward(lib, x, target, mask_u8, activation, label_map, squared)
        return finish_statistics_forward(ctx, (x, target, mask_u8), (activation, label_map, squared), sums)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_inter, grad_pred, _grad_tsum, _grad_tvol):  # type: ignore[override]
        x, target, mask = ctx.saved_tensors
        grad_x = _backward(_library(), x, target, mask, grad_inter, grad_pred, *ctx.options)
        return grad_x, None, None, None, None, None
