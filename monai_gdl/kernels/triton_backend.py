"""The ``triton`` backend: one Triton kernel launch per pass over the whole volume (CUDA).

Each program takes ``BLOCK`` voxels of one sample with all classes (``C`` padded to a power of
two), computes the activation in float32 in registers, and either atomically adds its partial
``(I, P, G, V, F, Q, W, S)`` sums into the ``B x C`` statistics (forward) or writes ``dL/dx`` for its
voxels (backward); the voxel term of a compound loss (``TERM``: 1 softmax, 2 sigmoid) is computed
from the same registers, and a structure term's map (``HAS_MAP``: labels or dense rows) is read once.
Same math as :func:`monai_gdl.kernels.reference.forward_chunk` / ``backward_chunk``,
which are the reference in the tests. Runs on CUDA, or on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os
import re

import torch

from monai_gdl.kernels.contract import NUM_STATISTICS

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: the chunked PyTorch path covers every case
    triton = None

__all__ = ["MIN_TRITON", "backward", "forward", "unusable_reason", "why_not"]

#: The oldest Triton these kernels run on: 3.0 (torch 2.4's) rejects a block size passed on to a helper as the
#: bound of ``tl.arange``; 3.2 (torch 2.6's) and later run them (``.ci/floors`` and CI).
MIN_TRITON = (3, 2)

_ACTIVATION_CODES = {"none": 0, "softmax": 1, "sigmoid": 2}
_TERM_CODES = {"none": 0, "softmax": 1, "sigmoid": 2}


def unusable_reason() -> str | None:
    """Why no Triton kernel can run here at all (None when Triton is installed and new enough)."""
    if triton is None:
        return "Triton is not installed (pip install 'triton>=3.2')"
    found = tuple(int(part) for part in re.findall(r"\d+", triton.__version__)[:2])
    if found < MIN_TRITON:
        wanted = ".".join(map(str, MIN_TRITON))
        return (
            f"Triton {triton.__version__} is older than the {wanted} these kernels need "
            f"(pip install 'triton>={wanted}', or torch >= 2.6, which brings it)"
        )
    return None


def why_not(
    x: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    label_map: bool,
    weight_map: torch.Tensor | None = None,
    map_labels: bool = False,
) -> str | None:
    """Why the Triton kernels cannot run these tensors (None when they can): Triton installed and new enough,
    CUDA tensors (CPU ones under ``TRITON_INTERPRET=1``), not float64."""
    reason = unusable_reason()
    if reason is not None:
        return reason
    if not (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return f"it runs CUDA tensors (or CPU ones under TRITON_INTERPRET=1), not {x.device.type} ones"
    if x.dtype == torch.float64:
        return "it does not take float64 logits"
    return None


if triton is not None:

    @triton.jit
    def _load_tile(
        x_ptr,
        t_ptr,
        m_ptr,
        b,
        n0,
        C,
        N,
        T_BSTRIDE,
        C_PAD: tl.constexpr,
        BLOCK: tl.constexpr,
        ACTIVATION: tl.constexpr,
        LABEL_MAP: tl.constexpr,
        HAS_MASK: tl.constexpr,
    ):
        """Probabilities, target and voxel weight of one C_PAD x BLOCK tile (padding contributes 0)."""
        cls = tl.arange(0, C_PAD)
        vox = n0 + tl.arange(0, BLOCK)
        cls_ok = cls < C
        vox_ok = vox < N
        tile_ok = cls_ok[:, None] & vox_ok[None, :]
        x = tl.load(x_ptr + b * C * N + cls[:, None] * N + vox[None, :], mask=tile_ok, other=0.0).to(tl.float32)
        lse = tl.zeros((BLOCK,), dtype=tl.float32)
        if ACTIVATION == 1:
            xs = tl.where(cls_ok[:, None], x, float("-inf"))
            mx = tl.max(xs, axis=0)
            e = tl.exp(xs - mx[None, :])
            total = tl.sum(e, axis=0)
            p = e / total[None, :]
            lse = mx + tl.log(total)
        elif ACTIVATION == 2:
            p = 1.0 / (1.0 + tl.exp(-x))
        else:
            p = x
        p = tl.where(tile_ok, p, 0.0)
        if LABEL_MAP:
            g = _label_rows(t_ptr, b * T_BSTRIDE, cls, vox, vox_ok)
        else:
            g = tl.load(t_ptr + b * T_BSTRIDE + cls[:, None] * N + vox[None, :], mask=tile_ok, other=0.0)
            g = g.to(tl.float32)
        m = tl.where(vox_ok, 1.0, 0.0)
        if HAS_MASK:
            m = m * tl.load(m_ptr + b * N + vox, mask=vox_ok, other=0).to(tl.float32)
        return p, g, m, x, lse, cls, cls_ok, vox, tile_ok

    @triton.jit
    def _label_rows(ptr, offset, cls, vox, vox_ok):
        """A label map's tile as C_PAD x BLOCK rows ``[label == c]`` (float labels rounded, halves up; NaN: none)."""
        y = tl.load(ptr + offset + vox, mask=vox_ok, other=-1)
        if ptr.dtype.element_ty.is_floating():
            y = tl.where(y == y, tl.floor(y.to(tl.float32) + 0.5), -1.0)
        y = y.to(tl.int32)
        return tl.where(cls[:, None] == y[None, :], 1.0, 0.0)

    @triton.jit
    def _map_rows(w_ptr, b, cls, vox, vox_ok, tile_ok, N, W_BSTRIDE, MAP_LABELS: tl.constexpr):
        """The structure map's tile ``a`` (C_PAD x BLOCK): label rows, or dense float rows."""
        if MAP_LABELS:
            return _label_rows(w_ptr, b * W_BSTRIDE, cls, vox, vox_ok)
        return tl.load(w_ptr + b * W_BSTRIDE + cls[:, None] * N + vox[None, :], mask=tile_ok, other=0.0).to(tl.float32)

    @triton.jit
    def _softplus(x):
        return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))

    @triton.jit
    def _term_element(x, p, g, lse, gamma, TERM: tl.constexpr):
        """The voxel term l (contract.py): softmax (1 - p)^gamma (lse - x); sigmoid s^gamma (softplus(x) - x g)."""
        if TERM == 1:
            nll = lse[None, :] - x
            return tl.where(gamma == 0.0, nll, tl.exp(gamma * tl.log(tl.maximum(1.0 - p, 1e-38))) * nll)
        bce = _softplus(x) - x * g
        return tl.where(gamma == 0.0, bce, tl.exp(-gamma * _softplus(x * (2.0 * g - 1.0))) * bce)

    @triton.jit
    def _forward_kernel(
        x_ptr,
        t_ptr,
        m_ptr,
        w_ptr,
        stats_ptr,
        C,
        N,
        T_BSTRIDE,
        W_BSTRIDE,
        C_PAD: tl.constexpr,
        BLOCK: tl.constexpr,
        ACTIVATION: tl.constexpr,
        LABEL_MAP: tl.constexpr,
        HAS_MASK: tl.constexpr,
        SQUARED: tl.constexpr,
        SOFT: tl.constexpr,
        TERM: tl.constexpr,
        HAS_MAP: tl.constexpr,
        MAP_LABELS: tl.constexpr,
        gamma,
    ):
        b = tl.program_id(1).to(tl.int64)
        p, g, m, x, lse, cls, cls_ok, vox, tile_ok = _load_tile(
            x_ptr,
            t_ptr,
            m_ptr,
            b,
            tl.program_id(0) * BLOCK,
            C,
            N,
            T_BSTRIDE,
            C_PAD,
            BLOCK,
            ACTIVATION,
            LABEL_MAP,
            HAS_MASK,
        )
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
        if TERM != 0:
            el = tl.where(tile_ok, _term_element(x, p, g, lse, gamma, TERM), 0.0) * m[None, :]
            tl.atomic_add(base + 4 * stride, tl.sum(el * g, axis=1), mask=cls_ok)
            tl.atomic_add(base + 5 * stride, tl.sum(el * (1.0 - g), axis=1), mask=cls_ok)
        if HAS_MAP:
            am = _map_rows(w_ptr, b, cls, vox, vox < N, tile_ok, N, W_BSTRIDE, MAP_LABELS) * m[None, :]
            tl.atomic_add(base + 6 * stride, tl.sum(am * p, axis=1), mask=cls_ok)
            tl.atomic_add(base + 7 * stride, tl.sum(am, axis=1), mask=cls_ok)

    @triton.jit
    def _backward_kernel(
        x_ptr,
        t_ptr,
        m_ptr,
        w_ptr,
        grad_ptr,
        out_ptr,
        B,
        C,
        N,
        T_BSTRIDE,
        W_BSTRIDE,
        C_PAD: tl.constexpr,
        BLOCK: tl.constexpr,
        ACTIVATION: tl.constexpr,
        LABEL_MAP: tl.constexpr,
        HAS_MASK: tl.constexpr,
        SQUARED: tl.constexpr,
        SOFT: tl.constexpr,
        TERM: tl.constexpr,
        HAS_MAP: tl.constexpr,
        MAP_LABELS: tl.constexpr,
        gamma,
    ):
        b = tl.program_id(1).to(tl.int64)
        p, g, m, x, lse, cls, cls_ok, vox, tile_ok = _load_tile(
            x_ptr,
            t_ptr,
            m_ptr,
            b,
            tl.program_id(0) * BLOCK,
            C,
            N,
            T_BSTRIDE,
            C_PAD,
            BLOCK,
            ACTIVATION,
            LABEL_MAP,
            HAS_MASK,
        )
        if SOFT:  # dI/dp of min(p, g): 1 below the target, 1/2 at a tie
            di = tl.where(p < g, 1.0, tl.where(p == g, 0.5, 0.0))
        else:
            di = g
        rows = grad_ptr + b * C + cls
        a = tl.load(rows, mask=cls_ok, other=0.0)
        beta = tl.load(rows + B * C, mask=cls_ok, other=0.0)
        f = tl.load(rows + 2 * B * C, mask=cls_ok, other=0.0)
        q = tl.load(rows + 3 * B * C, mask=cls_ok, other=0.0)
        if SQUARED:
            du = a[:, None] * di + beta[:, None] * 2.0 * p
        else:
            du = a[:, None] * di + beta[:, None]
        if HAS_MAP:
            gw = tl.load(rows + 4 * B * C, mask=cls_ok, other=0.0)
            du += gw[:, None] * _map_rows(w_ptr, b, cls, vox, vox < N, tile_ok, N, W_BSTRIDE, MAP_LABELS)
        du = du * m[None, :]
        w = tl.where(tile_ok, (f[:, None] * g + q[:, None] * (1.0 - g)) * m[None, :], 0.0)
        if ACTIVATION == 1:
            e = p * du
            if TERM == 1:  # w (1 - p)^gamma (gamma p t - 1), t = log(p) / (1 - p)
                one_minus = 1.0 - p
                t = tl.where(one_minus > 0.0, (x - lse[None, :]) / tl.where(one_minus > 0.0, one_minus, 1.0), -1.0)
                factor = tl.where(gamma == 0.0, 1.0, tl.exp(gamma * tl.log(tl.maximum(one_minus, 1e-38))))
                e += tl.where(tile_ok, w * factor * (gamma * p * t - 1.0), 0.0)
            du = e - p * tl.sum(e, axis=0)[None, :]
        elif ACTIVATION == 2:
            du = du * p * (1.0 - p)
        if TERM == 2:
            sign = 2.0 * g - 1.0
            sig = 1.0 / (1.0 + tl.exp(-x))
            s_gamma = tl.exp(-gamma * _softplus(x * sign))
            s = 1.0 - 1.0 / (1.0 + tl.exp(-x * sign))
            bce = _softplus(x) - x * g
            du += w * (s_gamma * (sig - g) - gamma * sign * s_gamma * (1.0 - s) * bce)
        ptrs = out_ptr + b * C * N + cls[:, None] * N + vox[None, :]
        tl.store(ptrs, du.to(out_ptr.dtype.element_ty), mask=tile_ok)


def _launch_shape(c: int, n: int) -> tuple[int, int]:
    """(C_PAD, BLOCK): about 4096 values a program, at least 16 voxels."""
    c_pad = triton.next_power_of_2(c)
    block = max(16, min(1024, 4096 // c_pad))
    return c_pad, block


def _per_sample(t: torch.Tensor) -> torch.Tensor:
    """``t`` with each sample contiguous (any batch stride, e.g. a channel of a packed target); bool as uint8."""
    t = t if t.shape[0] == 0 or t[0].is_contiguous() else t.contiguous()
    return t.to(torch.uint8) if t.dtype == torch.bool else t


def _prepared(x, target, mask, weight_map):
    x, target = x.contiguous(), _per_sample(target)
    mask_arg = x if mask is None else mask.contiguous().to(torch.uint8)  # any pointer when HAS_MASK is off
    map_arg = x if weight_map is None else _per_sample(weight_map)  # any pointer when HAS_MAP is off
    return x, target, mask_arg, map_arg


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
    """``8 x B x C`` float32 statistics of ``x`` (``B x C x N``): one kernel launch."""
    b, c, n = x.shape
    x, target, mask_arg, map_arg = _prepared(x, target, mask, weight_map)
    c_pad, block = _launch_shape(c, n)
    stats = torch.zeros(NUM_STATISTICS, b, c, dtype=torch.float32, device=x.device)
    _forward_kernel[(triton.cdiv(n, block), b)](
        x,
        target,
        mask_arg,
        map_arg,
        stats,
        c,
        n,
        target.stride(0),
        map_arg.stride(0),
        C_PAD=c_pad,
        BLOCK=block,
        ACTIVATION=_ACTIVATION_CODES[activation],
        LABEL_MAP=label_map,
        HAS_MASK=mask is not None,
        SQUARED=squared,
        SOFT=soft and not label_map,
        TERM=_TERM_CODES[voxel_term],
        HAS_MAP=weight_map is not None,
        MAP_LABELS=map_labels,
        gamma=float(gamma),
    )
    return stats


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
    """``dL/dx`` in ``x``'s dtype from ``grad = (dL/dI, dL/dP, dL/dF, dL/dQ, dL/dW)`` (``5 x B x C``): one kernel
    launch."""
    b, c, n = x.shape
    x, target, mask_arg, map_arg = _prepared(x, target, mask, weight_map)
    upstream = grad.to(torch.float32).contiguous()
    grad_x = torch.empty_like(x)
    c_pad, block = _launch_shape(c, n)
    _backward_kernel[(triton.cdiv(n, block), b)](
        x,
        target,
        mask_arg,
        map_arg,
        upstream,
        grad_x,
        b,
        c,
        n,
        target.stride(0),
        map_arg.stride(0),
        C_PAD=c_pad,
        BLOCK=block,
        ACTIVATION=_ACTIVATION_CODES[activation],
        LABEL_MAP=label_map,
        HAS_MASK=mask is not None,
        SQUARED=squared,
        SOFT=soft and not label_map,
        TERM=_TERM_CODES[voxel_term],
        HAS_MAP=weight_map is not None,
        MAP_LABELS=map_labels,
        gamma=float(gamma),
    )
    return grad_x
