"""The ``triton`` backend: one Triton kernel launch per pass over the whole volume (CUDA).

Each program takes ``BLOCK`` voxels of one sample with all classes (``C`` padded to a power of
two), computes the activation in float32 in registers, and either atomically adds its partial
``(I, P, G, V)`` sums into the ``B x C`` statistics (forward) or writes ``dL/dx`` for its voxels
(backward). Same math as :func:`monai_gdl.kernels.reference.forward_chunk` / ``backward_chunk``,
which are the reference in the tests. Runs on CUDA, or on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch

import os

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: the chunked PyTorch path covers every case
    triton = None

__all__ = ["available", "backward", "forward", "usable"]

_ACTIVATION_CODES = {"none": 0, "softmax": 1, "sigmoid": 2}


def available() -> bool:
    """Whether Triton is importable here."""
    return triton is not None


def usable(x: torch.Tensor) -> bool:
    """Triton runs CUDA tensors (CPU ones under ``TRITON_INTERPRET=1``), not float64."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return available() and (x.is_cuda or interpreted) and x.dtype != torch.float64


if triton is not None:

    @triton.jit
    def _load_tile(x_ptr, t_ptr, m_ptr, b, n0, C, N, T_CHANNELS, C_PAD: tl.constexpr, BLOCK: tl.constexpr,
                   ACTIVATION: tl.constexpr, LABEL_MAP: tl.constexpr, HAS_MASK: tl.constexpr):
        """Probabilities, target and voxel weight of one C_PAD x BLOCK tile (padding contributes 0)."""
        cls = tl.arange(0, C_PAD)
        vox = n0 + tl.arange(0, BLOCK)
        cls_ok = cls < C
        vox_ok = vox < N
        tile_ok = cls_ok[:, None] & vox_ok[None, :]
        x = tl.load(x_ptr + b * C * N + cls[:, None] * N + vox[None, :], mask=tile_ok, other=0.0).to(tl.float32)
        if ACTIVATION == 1:
            x = tl.where(cls_ok[:, None], x, float("-inf"))
            e = tl.exp(x - tl.max(x, axis=0)[None, :])
            p = e / tl.sum(e, axis=0)[None, :]
        elif ACTIVATION == 2:
            p = 1.0 / (1.0 + tl.exp(-x))
        else:
            p = x
        p = tl.where(tile_ok, p, 0.0)
        if LABEL_MAP:
            y = tl.load(t_ptr + b * N + vox, mask=vox_ok, other=-1).to(tl.int32)
            g = tl.where(cls[:, None] == y[None, :], 1.0, 0.0)
        else:
            g = tl.load(t_ptr + b * T_CHANNELS * N + cls[:, None] * N + vox[None, :], mask=tile_ok, other=0.0)
            g = g.to(tl.float32)
        m = tl.where(vox_ok, 1.0, 0.0)
        if HAS_MASK:
            m = m * tl.load(m_ptr + b * N + vox, mask=vox_ok, other=0).to(tl.float32)
        return p, g, m, cls, cls_ok, vox, tile_ok

    @triton.jit
    def _forward_kernel(x_ptr, t_ptr, m_ptr, stats_ptr, C, N, T_CHANNELS, C_PAD: tl.constexpr,
                        BLOCK: tl.constexpr, ACTIVATION: tl.constexpr, LABEL_MAP: tl.constexpr,
                        HAS_MASK: tl.constexpr, SQUARED: tl.constexpr, SOFT: tl.constexpr):
        b = tl.program_id(1).to(tl.int64)
        p, g, m, cls, cls_ok, vox, tile_ok = _load_tile(
            x_ptr, t_ptr, m_ptr, b, tl.program_id(0) * BLOCK, C, N, T_CHANNELS, C_PAD, BLOCK, ACTIVATION,
            LABEL_MAP, HAS_MASK)
        pm = p * m[None, :]
        gm = g * m[None, :]
        if SOFT:
            inter = tl.sum(tl.minimum(p, g) * m[None, :], axis=1)
        else:
            inter = tl.sum(pm * g, axis=1)
        if SQUARED:
            pred = tl.sum(pm * p, axis=1)
            tsum = tl.sum(gm * g, axis=1)
        else:
            pred = tl.sum(pm, axis=1)
            tsum = tl.sum(gm, axis=1)
        tvol = tl.sum(gm, axis=1)
        base = stats_ptr + b * C + cls
        stride = tl.num_programs(1) * C
        tl.atomic_add(base, inter, mask=cls_ok)
        tl.atomic_add(base + stride, pred, mask=cls_ok)
        tl.atomic_add(base + 2 * stride, tsum, mask=cls_ok)
        tl.atomic_add(base + 3 * stride, tvol, mask=cls_ok)

    @triton.jit
    def _backward_kernel(x_ptr, t_ptr, m_ptr, ga_ptr, gb_ptr, out_ptr, C, N, T_CHANNELS, C_PAD: tl.constexpr,
                         BLOCK: tl.constexpr, ACTIVATION: tl.constexpr, LABEL_MAP: tl.constexpr,
                         HAS_MASK: tl.constexpr, SQUARED: tl.constexpr, SOFT: tl.constexpr):
        b = tl.program_id(1).to(tl.int64)
        p, g, m, cls, cls_ok, vox, tile_ok = _load_tile(
            x_ptr, t_ptr, m_ptr, b, tl.program_id(0) * BLOCK, C, N, T_CHANNELS, C_PAD, BLOCK, ACTIVATION,
            LABEL_MAP, HAS_MASK)
        if SOFT:  # dI/dp of min(p, g): 1 below the target, 1/2 at a tie
            g = tl.where(p < g, 1.0, tl.where(p == g, 0.5, 0.0))
        a = tl.load(ga_ptr + b * C + cls, mask=cls_ok, other=0.0)
        beta = tl.load(gb_ptr + b * C + cls, mask=cls_ok, other=0.0)
        if SQUARED:
            du = a[:, None] * g + beta[:, None] * 2.0 * p
        else:
            du = a[:, None] * g + beta[:, None]
        du = du * m[None, :]
        if ACTIVATION == 1:
            du = p * (du - tl.sum(p * du, axis=0)[None, :])
        elif ACTIVATION == 2:
            du = du * p * (1.0 - p)
        ptrs = out_ptr + b * C * N + cls[:, None] * N + vox[None, :]
        tl.store(ptrs, du.to(out_ptr.dtype.element_ty), mask=tile_ok)


def _launch_shape(c: int, n: int) -> tuple[int, int]:
    """(C_PAD, BLOCK): about 4096 values a program, at least 16 voxels."""
    c_pad = triton.next_power_of_2(c)
    block = max(16, min(1024, 4096 // c_pad))
    return c_pad, block


def _prepared(x, target, mask):
    x, target = x.contiguous(), target.contiguous()
    if target.dtype == torch.bool:
        target = target.to(torch.uint8)
    mask_arg = x if mask is None else mask.contiguous().to(torch.uint8)  # any pointer when HAS_MASK is off
    return x, target, mask_arg


def forward(x, target, mask, activation: str, label_map: bool, squared: bool, soft: bool) -> torch.Tensor:
    """``4 x B x C`` float32 statistics of ``x`` (``B x C x N``): one kernel launch."""
    b, c, n = x.shape
    x, target, mask_arg = _prepared(x, target, mask)
    c_pad, block = _launch_shape(c, n)
    stats = torch.zeros(4, b, c, dtype=torch.float32, device=x.device)
    _forward_kernel[(triton.cdiv(n, block), b)](
        x, target, mask_arg, stats, c, n, target.shape[1], C_PAD=c_pad, BLOCK=block,
        ACTIVATION=_ACTIVATION_CODES[activation], LABEL_MAP=label_map, HAS_MASK=mask is not None,
        SQUARED=squared, SOFT=soft and not label_map,
    )
    return stats


def backward(grad, x, target, mask, activation: str, label_map: bool, squared: bool, soft: bool) -> torch.Tensor:
    """``dL/dx`` in ``x``'s dtype from ``grad = (dL/dI, dL/dP)`` (``2 x B x C``): one kernel launch."""
    b, c, n = x.shape
    x, target, mask_arg = _prepared(x, target, mask)
    ga, gb = (g.contiguous() for g in grad.to(torch.float32).unbind(0))
    grad_x = torch.empty_like(x)
    c_pad, block = _launch_shape(c, n)
    _backward_kernel[(triton.cdiv(n, block), b)](
        x, target, mask_arg, ga, gb, grad_x, c, n, target.shape[1], C_PAD=c_pad,
        BLOCK=block, ACTIVATION=_ACTIVATION_CODES[activation], LABEL_MAP=label_map,
        HAS_MASK=mask is not None, SQUARED=squared, SOFT=soft and not label_map,
    )
    return grad_x
