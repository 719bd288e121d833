"""Fused, streaming computation of the Dice statistics and their gradient.

The loss depends on the volume only through the per-(sample, class) sums
``I = sum(m*p*g)`` and ``P = sum(m*p^k)`` (target sums carry no gradient). So for upstream
gradients ``a = dL/dI`` and ``b = dL/dP`` (``B x C``, from autograd on the tiny loss formula)::

    dL/dp_c = m * (a_c * g_c + b_c * k * p_c^(k-1))
    softmax:  dL/dx_c = p_c * (dL/dp_c - sum_j p_j * dL/dp_j)
    sigmoid:  dL/dx_c = dL/dp_c * p_c * (1 - p_c)

:class:`StreamingDiceStatistics` evaluates the sums in a forward pass and this closed-form
gradient in a backward pass, each streaming over the flattened volume in chunks of about
``CHUNK_ELEMENTS`` values: the activation is recomputed per chunk in float32 (float64 for float64
input) and the gradient is written straight into one buffer of the input's dtype. No one-hot,
``p*g`` or ``p^2`` volume ever exists; extra memory is O(chunk).

The chunk math (:func:`forward_chunk`, :func:`backward_chunk`) is the one reference; it runs
through a *backend*:

- ``"eager"``: plain PyTorch ops.
- ``"native"``: a hand-fused C kernel built on first use with the machine's C compiler
  (:mod:`monai_gdl.native_kernels`): each pass reads every logit once, in cache-sized tiles. The
  CPU default wherever it applies (float32/bfloat16/float16 contiguous logits, the usual target
  dtypes); it measured fastest on CPU, ahead of ``"compile"``.
- ``"compile"``: the chunk functions through ``torch.compile`` (one fused C++/Triton loop per
  pass); on CPU, ``"auto"`` uses it for inputs of at least ``COMPILE_MIN_ELEMENTS`` values that
  the native kernel does not cover (e.g. float64), when the compiler works, else eager, silently.
- ``"triton"``: one hand-written Triton kernel per pass over the whole volume
  (:mod:`monai_gdl.triton_kernels`), the default on CUDA when Triton is installed; with
  ``TRITON_INTERPRET=1`` it also runs on CPU tensors, which is how CI tests it.

``MONAI_GDL_BACKEND`` (or :func:`set_backend`) picks one; ``"auto"`` (default) chooses as above.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import torch

from monai_gdl.functional import DiceStatistics, statistics_dtype

__all__ = [
    "BACKENDS",
    "CHUNK_ELEMENTS",
    "StreamingDiceStatistics",
    "backward_chunk",
    "backward_chunk_into",
    "forward_chunk",
    "resolve_backend",
    "set_backend",
    "streaming_statistics",
]

logger = logging.getLogger(__name__)

#: Values (B x C x chunk) processed per step: 512 Ki float32 = 2 MiB, measured fastest on CPU
#: (8 MiB chunks ran up to 2x slower: their temporaries fall out of cache and glibc trims them).
CHUNK_ELEMENTS = int(os.environ.get("MONAI_GDL_CHUNK_ELEMENTS", 1 << 19))
#: ``"auto"`` compiles only for inputs this large (4 Mi values, e.g. 2 x 4 x 80^3): below it the
#: eager chunk loop is already fast and a compile (seconds) would not pay for itself.
COMPILE_MIN_ELEMENTS = 1 << 22
BACKENDS = ("auto", "eager", "native", "compile", "triton")
_backend = os.environ.get("MONAI_GDL_BACKEND", "auto")


def set_backend(name: str) -> None:
    """Select the chunk-math backend for this process: one of :data:`BACKENDS`."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r}; use one of {BACKENDS}.")
    _backend = name


def _activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "softmax":
        return torch.softmax(x, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(x)
    return x


def _target_chunk(target: torch.Tensor, num_classes: int, label_map: bool, acc: torch.dtype) -> torch.Tensor:
    """Dense ``B x C x L`` target values of a chunk; for a label map, a broadcast comparison that
    fuses into the reductions (labels outside 0..C-1, e.g. ``ignore_index``, match no class)."""
    if label_map:
        classes = torch.arange(num_classes, device=target.device)[None, :, None]
        return (target == classes).to(acc)
    return target.to(acc)


def forward_chunk(
    x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, activation: str, label_map: bool, squared: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Partial ``(I, P, G, V)`` sums (``B x C``) of one chunk ``x`` (``B x C x L``)."""
    acc = statistics_dtype(x.dtype)
    p = _activate(x.to(acc), activation)
    g = _target_chunk(target, x.shape[1], label_map, acc)
    if mask is not None:
        m = mask.to(acc)
        pm, gm = p * m, g * m
    else:
        pm, gm = p, g
    inter = (pm * g).sum(-1)
    pred = (pm * p).sum(-1) if squared else pm.sum(-1)
    tvol = gm.sum(-1)
    tsum = (gm * g).sum(-1) if squared and not label_map else tvol
    return inter, pred, tsum, tvol


def backward_chunk(
    x: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    grad_inter: torch.Tensor,
    grad_pred: torch.Tensor,
    activation: str,
    label_map: bool,
    squared: bool,
) -> torch.Tensor:
    """``dL/dx`` of one chunk from ``grad_inter = dL/dI`` and ``grad_pred = dL/dP`` (``B x C x 1``)."""
    acc = statistics_dtype(x.dtype)
    p = _activate(x.to(acc), activation)
    g = _target_chunk(target, x.shape[1], label_map, acc)
    du = grad_inter * g + (grad_pred * (2.0 * p) if squared else grad_pred)
    if mask is not None:
        du = du * mask.to(acc)
    if activation == "softmax":
        du = p * (du - (p * du).sum(dim=1, keepdim=True))
    elif activation == "sigmoid":
        du = du * (p * (1.0 - p))
    return du.to(x.dtype)


def backward_chunk_into(out: torch.Tensor, *args) -> None:
    """:func:`backward_chunk` written into ``out`` (a slice of the gradient buffer).

    Compiled, the store goes straight into the buffer: no chunk-sized result to allocate and copy.
    """
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


@functools.lru_cache(maxsize=None)
def _compiled_chunk_functions() -> tuple[Callable, Callable] | None:
    """``torch.compile`` versions of the chunk functions, or None where compiling fails here."""
    try:
        fwd = torch.compile(forward_chunk, dynamic=True)
        bwd = torch.compile(backward_chunk_into, dynamic=True)
        x = torch.randn(2, 3, 5)
        y = torch.randint(0, 3, (2, 1, 5))
        got = fwd(x, y, None, "softmax", True, True)
        want = forward_chunk(x, y, None, "softmax", True, True)
        if not all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, want)):
            raise RuntimeError("compiled chunk math disagrees with eager")
        return _eager_fallback(fwd, forward_chunk), _eager_fallback(bwd, backward_chunk_into)
    except Exception as err:  # no compiler, unsupported platform: eager is always correct
        logger.info("monai_gdl: torch.compile unavailable (%s); using eager chunk math", err)
        return None


def _triton_usable(x: torch.Tensor) -> bool:
    from monai_gdl import triton_kernels

    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return triton_kernels.available() and (x.is_cuda or interpreted) and x.dtype != torch.float64


def resolve_backend(
    x: torch.Tensor, target: torch.Tensor | None = None, mask: torch.Tensor | None = None, label_map: bool = True
) -> str:
    """The backend that runs for logits ``x`` (``B x C x N``) and ``target``: the explicit choice,
    or what ``"auto"`` picks."""
    from monai_gdl import native_kernels

    def native_usable() -> bool:  # only asked where it matters: it may build the library on first use
        return native_kernels.supports(x, target, mask, label_map) and native_kernels.available()

    if _backend == "triton":
        if not _triton_usable(x):
            raise RuntimeError(
                "MONAI_GDL_BACKEND=triton needs Triton, a non-float64 input, and a CUDA tensor "
                "(or TRITON_INTERPRET=1 for CPU tensors)."
            )
        return "triton"
    if _backend == "native":
        if not native_usable():
            got = f"logits {x.dtype} {x.device.type} contiguous={x.is_contiguous()}"
            if target is not None:
                got += f", target {target.dtype} contiguous={target.is_contiguous()}"
            raise RuntimeError(
                "MONAI_GDL_BACKEND=native needs a C compiler and contiguous (or channels-last) CPU tensors: "
                "float32/bfloat16/float16 logits and a label map of uint8/bool/int32/int64/float32 or a float32 "
                "one-hot/soft target "
                f"(got {got}); use 'auto' to fall back to the other backends."
            )
        return "native"
    if _backend in ("eager", "compile"):
        return _backend
    if x.is_cuda and _triton_usable(x):
        return "triton"
    if native_usable():
        return "native"
    if x.numel() < COMPILE_MIN_ELEMENTS:
        return "eager"
    return "compile" if _compiled_chunk_functions() is not None else "eager"


def _chunk_functions(backend: str) -> tuple[Callable, Callable]:
    if backend == "compile":
        compiled = _compiled_chunk_functions()
        if compiled is not None:
            return compiled
    return forward_chunk, backward_chunk_into


def finish_statistics_forward(ctx, saved: tuple, options: tuple, sums) -> tuple:
    """Common end of every backend's forward: keep what backward needs; target sums get no gradient."""
    ctx.save_for_backward(*saved)
    ctx.options = options
    ctx.mark_non_differentiable(sums[2], sums[3])
    return tuple(sums)


def upstream_gradients(
    x: torch.Tensor, grad_inter: torch.Tensor | None, grad_pred: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dL/dI`` and ``dL/dP`` (``B x C``, contiguous, in ``dtype``); zeros where autograd passed None."""
    zeros = torch.zeros(x.shape[:2], dtype=dtype, device=x.device)
    return tuple(zeros if g is None else g.to(dtype).contiguous() for g in (grad_inter, grad_pred))


def _chunk_bounds(n: int, rows: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(1, rows))
    return [(s, min(s + step, n)) for s in range(0, n, step)]


def _slice(t: torch.Tensor | None, s: int, e: int) -> torch.Tensor | None:
    return None if t is None else t[:, :, s:e]


class StreamingDiceStatistics(torch.autograd.Function):
    """Autograd function ``(x, target, mask) -> (I, P, G, V)``, all ``B x C`` in float32/float64.

    ``x``: ``B x C x N`` logits (probabilities for ``activation="none"``); ``target``: ``B x 1 x N``
    labels (``label_map=True``) or ``B x C x N`` one-hot/soft labels; ``mask``: ``B x 1 x N`` bool or
    None. Only ``I`` and ``P`` are differentiable.
    """

    @staticmethod
    def forward(ctx, x, target, mask, activation: str, label_map: bool, squared: bool, backend: str):  # type: ignore[override]
        b, c, n = x.shape
        fwd, _ = _chunk_functions(backend)
        sums = [torch.zeros(b, c, dtype=statistics_dtype(x.dtype), device=x.device) for _ in range(4)]
        for s, e in _chunk_bounds(n, b * c):
            for total, part in zip(sums, fwd(x[:, :, s:e], target[:, :, s:e], _slice(mask, s, e), activation, label_map, squared)):
                total += part
        return finish_statistics_forward(ctx, (x, target, mask), (activation, label_map, squared, backend), sums)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_inter, grad_pred, _grad_tsum, _grad_tvol):  # type: ignore[override]
        x, target, mask = ctx.saved_tensors
        activation, label_map, squared, backend = ctx.options
        _, bwd = _chunk_functions(backend)
        a, beta = upstream_gradients(x, grad_inter, grad_pred, statistics_dtype(x.dtype))
        grad_x = torch.empty_like(x)
        for s, e in _chunk_bounds(x.shape[2], x.shape[0] * x.shape[1]):
            bwd(
                grad_x[:, :, s:e], x[:, :, s:e], target[:, :, s:e], _slice(mask, s, e), a[..., None], beta[..., None],
                activation, label_map, squared,
            )
        return grad_x, None, None, None, None, None, None


@torch.compiler.disable  # a user's torch.compile of the training step runs this, already fused, as is
def streaming_statistics(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    activation: str,
    label_map: bool,
    squared: bool,
    mask: torch.Tensor | None = None,
) -> DiceStatistics:
    """Dice statistics of ``input`` (``B x C x spatial``) by the fused streaming pass, for all C channels."""
    b, c = input.shape[:2]
    # Plain tensors (a MONAI MetaTensor would drag its __torch_function__ into every chunk op).
    x = input.as_subclass(torch.Tensor).reshape(b, c, -1)
    t = target.as_subclass(torch.Tensor).reshape(b, target.shape[1], -1)
    m = None if mask is None else mask.as_subclass(torch.Tensor).reshape(b, 1, -1).bool()
    backend = resolve_backend(x, t, m, label_map)
    if backend == "triton":
        from monai_gdl.triton_kernels import TritonDiceStatistics

        return DiceStatistics(*TritonDiceStatistics.apply(x, t, m, activation, label_map, squared))
    if backend == "native":
        from monai_gdl.native_kernels import NativeDiceStatistics

        return DiceStatistics(*NativeDiceStatistics.apply(x, t, m, activation, label_map, squared))
    return DiceStatistics(*StreamingDiceStatistics.apply(x, t, m, activation, label_map, squared, backend))
