"""The ``native`` backend: a hand-fused C kernel for the Dice statistics on CPU (``native.c``).

Same math as :func:`monai_gdl.kernels.reference.forward_chunk` / ``backward_chunk`` (the reference
in the tests), but each pass reads every logit from memory once: the C source walks the volume
in tiles whose ``C x T`` probabilities stay in cache. Passes are split by voxel range over
``torch.get_num_threads()`` Python threads (the C calls run without the GIL).

The library comes from :mod:`~monai_gdl.kernels.native_build` (built once per machine, cached) and
is checked against the reference on a small case when loaded; :func:`load` returns it with the
reason it is missing, if it is.

The gradient buffer is the one large allocation of the backward; page-faulting 4 KiB pages into
it costs as much as the kernel itself, so on Linux it is advised onto transparent huge pages
where the system allows. ``MONAI_GDL_HUGE_PAGES=0`` turns that off.
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from monai_gdl._env import env_choice
from monai_gdl.kernels.contract import LOGIT_ROWS, NUM_STATISTICS
from monai_gdl.kernels.native_build import build_timeout_s, library_path
from monai_gdl.kernels.reference import backward_chunk, forward_chunk

__all__ = ["available", "backward", "forward", "load", "unavailable_reason", "why_not"]

_ACTIVATION_CODES = {"none": 0, "softmax": 1, "sigmoid": 2}
_X_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
#: Dense structure maps; dense targets also come as bool / uint8 0-1 (nnU-Net's region targets).
_DENSE_CODES = {torch.float32: 0}
_DENSE_TARGET_CODES = {torch.float32: 0, torch.bool: 7, torch.uint8: 7}
_LABEL_CODES = {
    torch.uint8: 1,
    torch.bool: 1,
    torch.int8: 6,
    torch.int16: 5,
    torch.int32: 2,
    torch.int64: 3,
    torch.float32: 4,
}
_OPT_SQUARED, _OPT_SOFT = 1, 2
_TERM_OPTIONS = {"none": 0, "softmax": 4, "sigmoid": 8}
#: Below this many values a pass runs on one thread (thread hand-off would cost more than it saves).
PARALLEL_MIN_ELEMENTS = 1 << 20
#: Gradient buffers at least this large are advised onto huge pages.
HUGE_PAGE_MIN_BYTES = 8 << 20


@functools.cache
def load() -> tuple[ctypes.CDLL | None, str | None]:
    """The built and checked library, or None with the reason (no compiler, a failed build, load or check)."""
    try:
        path = library_path()
        if path is None:
            return None, "no C compiler found ($CC, cc, gcc or clang)"
        lib = ctypes.CDLL(str(path))
        ptr, i32, i64, f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
        common: list[Any] = [ptr, i32, ptr, i32, ptr, i64, i64, i64, i64, i64, i32, i32, f32, i32, i64, ptr, i32, i64]
        lib.mgdl_forward.argtypes = [*common, ptr]
        lib.mgdl_backward.argtypes = [*common, ptr, ptr]
        lib.mgdl_forward.restype = lib.mgdl_backward.restype = i32
        lib.mgdl_prefer_huge_pages.argtypes = [ptr, i64]
        _self_check(lib)
        return lib, None
    except subprocess.CalledProcessError as err:
        tail = " ".join((err.stderr or "").strip().splitlines()[-3:])
        return None, f"the C compiler failed on the kernel source ({tail}); set CC to another compiler"
    except subprocess.TimeoutExpired:
        return None, (
            f"the C compiler took over {build_timeout_s()} s and was stopped; set CC to another compiler "
            "or raise MONAI_GDL_BUILD_TIMEOUT_S"
        )
    except Exception as err:  # a failed load or check: the other backends are always correct
        return None, f"{err}"


def unavailable_reason() -> str | None:
    """Why the kernel cannot run here (None when it can): no compiler, a failed build or check."""
    return load()[1]


def available() -> bool:
    """Whether the C kernel is built (or buildable) and checked on this machine."""
    return load()[0] is not None


def _float16_supported() -> bool:
    """float16 logits need a compiler with ``_Float16`` (GCC >= 12, recent Clang)."""
    lib = load()[0]
    return lib is not None and bool(lib.mgdl_has_float16())


def _self_check(lib: ctypes.CDLL) -> None:
    """The built library against the reference chunk math on a small case with every code path."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 77, generator=g)
    labels = torch.randint(0, 6, (2, 1, 77), generator=g)
    mask = torch.rand(2, 1, 77, generator=g) > 0.3
    soft = torch.rand(2, 5, 77, generator=g)
    skeleton = torch.randint(0, 5, (2, 1, 77), generator=g, dtype=torch.uint8)
    distance = torch.randn(2, 5, 77, generator=g)
    grad = torch.randn(len(LOGIT_ROWS), 2, 5, generator=g)
    cases = [
        ("none", labels, True, False, False, "sigmoid", 2.0, None, False),
        ("softmax", soft, False, True, False, "none", 0.0, None, False),
        ("sigmoid", labels, True, False, False, "none", 0.0, distance, False),
        ("softmax", soft, False, False, True, "softmax", 0.0, skeleton, True),
        ("softmax", labels, True, False, False, "softmax", 2.0, None, False),
        ("softmax", labels, True, False, False, "sigmoid", 2.0, None, False),
        ("softmax", soft, False, False, True, "sigmoid", 0.0, None, False),
        ("softmax", labels, True, False, False, "softmax", 0.0, skeleton, True),
    ]
    for activation, target, label_map, squared, soft_form, voxel_term, gamma, weight_map, map_labels in cases:
        options = (activation, label_map, squared, soft_form, voxel_term, gamma, weight_map, map_labels)
        got = _forward(lib, x, target, mask, *options)
        want = forward_chunk(x, target, mask, *options)
        got_grad = _backward(lib, grad, x, target, mask, *options)
        want_grad = backward_chunk(x, target, mask, grad[..., None], *options)
        if not all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(got, want)) or not torch.allclose(
            got_grad, want_grad, rtol=1e-4, atol=1e-6
        ):
            raise RuntimeError(f"the built kernel disagrees with the reference ({options})")


def _channels_last(t: torch.Tensor) -> bool:
    """``B x C x N`` stored as ``B x N x C`` (a channels-last network output, a permuted one-hot)."""
    return not t.is_contiguous() and t.transpose(1, 2).is_contiguous()


def _sample_contiguous(t: torch.Tensor) -> bool:
    """Each sample of ``B x C x N`` stored contiguously (any batch stride: a channel slice of a packed target)."""
    return t.shape[0] == 0 or t[0].is_contiguous()


def why_not(
    x: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    label_map: bool,
    weight_map: torch.Tensor | None = None,
    map_labels: bool = False,
) -> str | None:
    """Why the C kernel cannot run these tensors (None when it can): device, dtype or layout, then the
    library itself (not built here), then float16 without ``_Float16``. Each reason says the fix."""
    if x.device.type != "cpu":
        return f"it does not take logits on {x.device.type}"
    if x.dtype == torch.float64:
        return (
            "it does not take float64 logits: float64 is for checking (tests, gradcheck), not for training; train "
            "in float32 (or bfloat16 autocast), which the native kernel runs"
        )
    if x.dtype not in _X_CODES:
        return f"it does not take logits of dtype {x.dtype} (it takes float32, bfloat16, float16)"
    if not (x.is_contiguous() or _channels_last(x)):
        return "it does not take logits that are neither contiguous nor channels-last (pass x.contiguous())"
    codes = _LABEL_CODES if label_map else _DENSE_TARGET_CODES
    if target.dtype not in codes:
        kind = "label map" if label_map else "one-hot/soft target"
        return f"it does not take a {kind} of dtype {target.dtype} (it takes {', '.join(str(d) for d in codes)})"
    if not (_sample_contiguous(target) or (not label_map and _channels_last(target))):
        return "it does not take a target that is neither contiguous per sample nor (one-hot) channels-last"
    if mask is not None and not mask.is_contiguous():
        return "it does not take a mask that is not contiguous"
    if weight_map is not None:
        codes = _LABEL_CODES if map_labels else _DENSE_CODES
        if weight_map.dtype not in codes:
            return (
                f"it does not take a structure map of dtype {weight_map.dtype} (it takes {', '.join(map(str, codes))})"
            )
        if not _sample_contiguous(weight_map):
            return "it does not take a structure map that is not contiguous per sample"
    reason = unavailable_reason()
    if reason is not None:
        return f"it could not be built here ({reason}; install a C compiler such as gcc, or set CC)"
    if x.dtype == torch.float16 and not _float16_supported():
        return "this C compiler has no _Float16 for float16 logits (use bfloat16 autocast or GCC >= 12)"
    return None


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


def _arguments(x, target, mask, activation, label_map, squared, soft, voxel_term, gamma, weight_map, map_labels):
    b, c, n = x.shape
    t_code = (_LABEL_CODES if label_map else _DENSE_TARGET_CODES)[target.dtype]
    mask_ptr = None if mask is None else mask.data_ptr()
    layout = int(_channels_last(x)) | (2 if not label_map and _channels_last(target) else 0)
    # the kernel applies soft to dense targets only
    options = (_OPT_SQUARED if squared else 0) | (_OPT_SOFT if soft else 0) | _TERM_OPTIONS[voxel_term]

    def args(n0: int, n1: int) -> list:
        return [
            x.data_ptr(),
            _X_CODES[x.dtype],
            target.data_ptr(),
            t_code,
            mask_ptr,
            b,
            c,
            n,
            n0,
            n1,
            _ACTIVATION_CODES[activation],
            options,
            float(gamma),
            layout,
            target.stride(0),
            None if weight_map is None else weight_map.data_ptr(),
            -1 if weight_map is None else (_LABEL_CODES if map_labels else _DENSE_CODES)[weight_map.dtype],
            0 if weight_map is None else weight_map.stride(0),
        ]

    return args


def _as_bytes(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else mask.contiguous().view(torch.uint8)


def _forward(
    lib, x, target, mask, activation, label_map, squared, soft, voxel_term, gamma, weight_map=None, map_labels=False
) -> torch.Tensor:
    b, c, n = x.shape
    workers = max(1, torch.get_num_threads())
    stats = torch.zeros(workers, NUM_STATISTICS, b, c, dtype=torch.float64)
    mask = _as_bytes(mask)
    args = _arguments(x, target, mask, activation, label_map, squared, soft, voxel_term, gamma, weight_map, map_labels)
    _run_split(lib.mgdl_forward, n, x.numel(), lambda i, n0, n1: [*args(n0, n1), stats[i].data_ptr()])
    return stats.sum(0).to(torch.float32)


def _backward(
    lib,
    grad,
    x,
    target,
    mask,
    activation,
    label_map,
    squared,
    soft,
    voxel_term,
    gamma,
    weight_map=None,
    map_labels=False,
) -> torch.Tensor:
    """``dL/dx`` from ``grad = (dL/dI, dL/dP, dL/dF, dL/dQ, dL/dW)`` (``5 x B x C``)."""
    upstream = grad.to(torch.float32).contiguous()
    mask = _as_bytes(mask)
    grad_x = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype)  # the logits' layout, as the kernel writes it
    if grad_x.nbytes >= HUGE_PAGE_MIN_BYTES and env_choice("MONAI_GDL_HUGE_PAGES", "1", ("0", "1")) == "1":
        lib.mgdl_prefer_huge_pages(grad_x.data_ptr(), grad_x.nbytes)
    args = _arguments(x, target, mask, activation, label_map, squared, soft, voxel_term, gamma, weight_map, map_labels)
    _run_split(
        lib.mgdl_backward,
        x.shape[2],
        x.numel(),
        lambda _i, n0, n1: [*args(n0, n1), upstream.data_ptr(), grad_x.data_ptr()],
    )
    return grad_x


def forward(
    x,
    target,
    mask,
    activation: str,
    label_map: bool,
    squared: bool,
    soft: bool,
    voxel_term: str,
    gamma: float,
    weight_map=None,
    map_labels: bool = False,
) -> torch.Tensor:
    """``8 x B x C`` float32 statistics of ``x`` (``B x C x N``): one C pass."""
    options = (activation, label_map, squared, soft, voxel_term, gamma, weight_map, map_labels)
    return _forward(load()[0], x, target, mask, *options)


def backward(
    grad,
    x,
    target,
    mask,
    activation: str,
    label_map: bool,
    squared: bool,
    soft: bool,
    voxel_term: str,
    gamma: float,
    weight_map=None,
    map_labels: bool = False,
) -> torch.Tensor:
    """``dL/dx`` in ``x``'s dtype and layout from ``grad = (dL/dI, dL/dP, dL/dF, dL/dQ, dL/dW)``: one C pass."""
    options = (activation, label_map, squared, soft, voxel_term, gamma, weight_map, map_labels)
    return _backward(load()[0], grad, x, target, mask, *options)
