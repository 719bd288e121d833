"""The ``eager`` and ``compile`` backends: the reference chunk math, streamed over the volume.

Each pass walks the flattened volume in chunks of about :data:`CHUNK_ELEMENTS` values: the
activation is recomputed per chunk in float32 (float64 for float64 input) and the gradient is
written straight into one buffer of the input's dtype, so extra memory is O(chunk). ``compile``
runs the same chunk functions through ``torch.compile`` (one fused loop per pass) and falls back
to eager, for good, if a variant ever fails to compile.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

from monai_gdl._env import env_int
from monai_gdl.kernels.contract import NUM_STATISTICS, accumulation_dtype
from monai_gdl.kernels.reference import backward_chunk, forward_chunk

__all__ = ["CHUNK_ELEMENTS", "backward", "compile_works", "compiled_backward", "compiled_forward", "forward"]

logger = logging.getLogger(__name__)

#: Values (B x C x chunk) processed per step: 512 Ki float32 = 2 MiB, measured fastest on CPU
#: (8 MiB chunks ran up to 2x slower: their temporaries fall out of cache and glibc trims them).
CHUNK_ELEMENTS = env_int("MONAI_GDL_CHUNK_ELEMENTS", 1 << 19, minimum=1)


def _backward_chunk_into(out: torch.Tensor, *args) -> None:
    """:func:`backward_chunk` written into ``out`` (a slice of the gradient buffer); compiled, the
    store goes straight into the buffer."""
    out.copy_(backward_chunk(*args))


def _eager_fallback(compiled: Callable, eager: Callable) -> Callable:
    """Run ``compiled``; if it ever fails (a dtype or variant the compiler rejects), use ``eager`` from then on."""
    state = {"broken": False}

    def run(*args):
        if not state["broken"]:
            try:
                return compiled(*args)
            except Exception as err:
                state["broken"] = True
                logger.warning("monai_gdl: compiled chunk math failed (%s); continuing with eager", err)
        return eager(*args)

    return run


@functools.cache
def _compiled_chunk_functions() -> tuple[Callable, Callable] | None:
    """``torch.compile`` versions of the chunk functions, or None where compiling fails here."""
    try:
        fwd = torch.compile(forward_chunk, dynamic=True)
        bwd = torch.compile(_backward_chunk_into, dynamic=True)
        x = torch.randn(2, 3, 5)
        y = torch.randint(0, 3, (2, 1, 5))
        got = fwd(x, y, None, "softmax", True, True, False, "softmax", 0.0)
        want = forward_chunk(x, y, None, "softmax", True, True, False, "softmax", 0.0)
        if not all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, want)):
            raise RuntimeError("compiled chunk math disagrees with eager")
        return _eager_fallback(fwd, forward_chunk), _eager_fallback(bwd, _backward_chunk_into)
    except Exception as err:  # no compiler, unsupported platform: eager is always correct
        logger.info("monai_gdl: torch.compile unavailable (%s); using eager chunk math", err)
        return None


def compile_works() -> bool:
    """Whether the ``compile`` backend compiles here (tried once, on a tiny case)."""
    return _compiled_chunk_functions() is not None


def _chunk_functions(compiled: bool) -> tuple[Callable, Callable]:
    if compiled:
        functions = _compiled_chunk_functions()
        if functions is not None:
            return functions
    return forward_chunk, _backward_chunk_into


def _chunk_bounds(n: int, rows: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(1, rows))
    return [(s, min(s + step, n)) for s in range(0, n, step)]


def _slice(t: torch.Tensor | None, s: int, e: int) -> torch.Tensor | None:
    return None if t is None else t[:, :, s:e]


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
    compiled: bool = False,
):
    """``8 x B x C`` statistics of ``x`` (``B x C x N``) against ``target``, chunk by chunk."""
    b, c, n = x.shape
    fwd, _ = _chunk_functions(compiled)
    sums = torch.zeros(NUM_STATISTICS, b, c, dtype=accumulation_dtype(x.dtype), device=x.device)
    for s, e in _chunk_bounds(n, b * c):
        parts = fwd(
            x[:, :, s:e],
            target[:, :, s:e],
            _slice(mask, s, e),
            activation,
            label_map,
            squared,
            soft,
            voxel_term,
            gamma,
            _slice(weight_map, s, e),
            map_labels,
        )
        for total, part in zip(sums, parts):
            total += part
    return sums


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
    compiled: bool = False,
):
    """``dL/dx`` from ``grad = (dL/dI, dL/dP, dL/dF, dL/dQ, dL/dW)`` (``5 x B x C``), chunk by chunk, into one
    buffer."""
    _, bwd = _chunk_functions(compiled)
    upstream = grad.to(accumulation_dtype(x.dtype)).unsqueeze(-1)
    grad_x = torch.empty_like(x)
    for s, e in _chunk_bounds(x.shape[2], x.shape[0] * x.shape[1]):
        bwd(
            grad_x[:, :, s:e],
            x[:, :, s:e],
            target[:, :, s:e],
            _slice(mask, s, e),
            upstream,
            activation,
            label_map,
            squared,
            soft,
            voxel_term,
            gamma,
            _slice(weight_map, s, e),
            map_labels,
        )
    return grad_x


#: :func:`forward` and :func:`backward` through ``torch.compile`` (eager where compiling fails here).
compiled_forward = functools.partial(forward, compiled=True)
compiled_backward = functools.partial(backward, compiled=True)
