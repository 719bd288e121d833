"""The reference math in plain PyTorch: whole-volume statistics through autograd, and the chunk
formulas (statistics and closed-form gradient) that every fused backend reproduces.

Closed-form gradient, for upstream gradients ``a = dL/dI`` and ``b = dL/dP`` (``B x C``)::

    dL/dp_c = m * (a_c * dI/dp_c + b_c * k * p_c^(k-1))
        dI/dp = g                       (product intersection)
        dI/dp = [p < g] + [p == g] / 2  (soft-label intersection min(p, g); the half at a tie is
                                         the gradient of (p + g - |p - g|) / 2, as in MONAI)
    softmax:  dL/dx_c = p_c * (dL/dp_c - sum_j p_j * dL/dp_j)
    sigmoid:  dL/dx_c = dL/dp_c * p_c * (1 - p_c)

The voxel-wise term ``l`` of a compound loss (:mod:`monai_gdl.kernels.contract`), for upstream
``f = dL/dF``, ``q = dL/dQ`` and ``w = m * (f * g + q * (1 - g))``:

    softmax:  e_c += w_c * (1 - p_c)^gamma * (gamma * p_c * t_c - 1),  t = log(p) / (1 - p) (-1 at p = 1),
              added to e_c = p_c * dL/dp_c before the softmax chain dL/dx_c = e_c - p_c * sum_j e_j
              (at gamma 0: w_c * (p_c - [c == y]) summed, the cross-entropy gradient);
    sigmoid:  dL/dx_c += w_c * (s^gamma * (sigmoid(x_c) - g_c) - gamma * (2 g_c - 1) * s^gamma * (1 - s) * bce_c),
              after the Dice term's own chain (at gamma 0: w_c * (sigmoid(x_c) - g_c)).

A structure term's map ``a`` (``W = sum(m a p)``) adds ``m * (dL/dW)_c * a_c`` to ``dL/dp_c``, before the
activation's chain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from monai_gdl.kernels.contract import DiceStatistics, VoxelTermSums, WeightMapSums, accumulation_dtype

__all__ = [
    "rounded_labels",
    "backward_chunk",
    "forward_chunk",
    "reference_statistics",
    "reference_voxel_term",
    "reference_weight_map_sums",
    "voxel_term_elements",
]


def rounded_labels(labels: torch.Tensor) -> torch.Tensor:
    """A label map as class indices: float labels rounded to the nearest integer (halves up), as every backend
    reads them, so a label stored one float step off an integer (1.0000001) is still its class; integer
    labels as they are."""
    return torch.floor(labels + 0.5) if labels.is_floating_point() else labels


def reference_statistics(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    label_map: bool,
    squared: bool,
    soft: bool = False,
    mask: torch.Tensor | None = None,
) -> DiceStatistics:
    """Plain PyTorch sums, differentiable through autograd: the reference the fused kernels are tested against.

    ``mask`` is a ``B x 1 x N`` bool (voxels to count) or None. A label map (``B x 1 x spatial``) is
    never expanded to a float one-hot: the intersection gathers ``p`` at the labelled class and
    scatters it into ``B x C`` sums (labels outside ``0..C-1`` match no class). ``soft`` uses
    ``min(p, g)`` as the intersection of a dense target.
    """
    b, c = probs.shape[:2]
    p = probs.reshape(b, c, -1)
    mf = None if mask is None else mask.reshape(b, 1, -1).to(p.dtype)
    p_masked = p if mf is None else p * mf
    prediction = (p_masked * p).sum(-1) if squared else p_masked.sum(-1)
    if label_map:
        labels = rounded_labels(target.reshape(b, -1))
        valid = (labels >= 0) & (labels < c)  # NaN fails both
        if mask is not None:
            valid = valid & mask.reshape(b, -1)
        index = torch.where(valid, labels, torch.zeros_like(labels)).long()
        at_label = p.gather(1, index[:, None])[:, 0] * valid.to(p.dtype)
        intersection = p.new_zeros(b, c).scatter_add(1, index, at_label)
        with torch.no_grad():
            volume = p.new_zeros(b, c).scatter_add(1, index, valid.to(p.dtype))
        return DiceStatistics(intersection, prediction, volume, volume)
    g = target.reshape(b, c, -1).to(p.dtype)
    overlap = torch.minimum(p, g) if soft else p * g
    intersection = (overlap if mf is None else overlap * mf).sum(-1)
    g_masked = g if mf is None else g * mf  # differentiable for a soft target that requires grad
    volume = g_masked.sum(-1)
    target_sum = (g_masked * g).sum(-1) if squared else volume
    return DiceStatistics(intersection, prediction, target_sum, volume)


def voxel_term_elements(x: torch.Tensor, g: torch.Tensor, voxel_term: str, gamma: float) -> torch.Tensor:
    """The voxel-wise term ``l`` (``B x C x N``) of logits ``x`` against the dense target ``g``, both in
    the accumulation dtype, differentiable through autograd (the formula of :mod:`~monai_gdl.kernels.contract`)."""
    if voxel_term == "softmax":
        log_p = torch.log_softmax(x, dim=1)
        nll = -log_p
        return nll if gamma == 0 else (1.0 - log_p.exp()).pow(gamma) * nll
    if voxel_term != "sigmoid":
        raise ValueError(f"voxel_term={voxel_term!r}; use 'softmax' or 'sigmoid' (or no voxel term).")
    bce = F.softplus(x) - x * g
    return bce if gamma == 0 else torch.exp(gamma * F.logsigmoid(-x * (2.0 * g - 1.0))) * bce


def reference_voxel_term(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    label_map: bool,
    voxel_term: str,
    gamma: float,
    mask: torch.Tensor | None = None,
) -> VoxelTermSums:
    """``F`` and ``Q`` in plain PyTorch (autograd), the reference for the fused kernels. A label map
    is expanded here to a one-hot by comparison: this path is for checking, not for speed."""
    b, c = input.shape[:2]
    x = input.to(accumulation_dtype(input.dtype)).reshape(b, c, -1)
    g = _target_chunk(target.reshape(b, target.shape[1], -1), c, label_map, x.dtype)
    elements = voxel_term_elements(x, g, voxel_term, gamma)
    if mask is not None:
        elements = elements * mask.reshape(b, 1, -1).to(x.dtype)
    return VoxelTermSums((elements * g).sum(-1), (elements * (1.0 - g)).sum(-1))


def reference_weight_map_sums(
    probs: torch.Tensor, weight_map: torch.Tensor, *, map_labels: bool, mask: torch.Tensor | None = None
) -> WeightMapSums:
    """``W = sum(m a p)`` (through autograd) and ``S = sum(m a)`` in plain PyTorch: the reference for the fused
    kernels. A label map is compared with each class (labels outside ``0..C-1`` match none)."""
    b, c = probs.shape[:2]
    p = probs.reshape(b, c, -1)
    a = _target_chunk(weight_map.reshape(b, weight_map.shape[1], -1), c, map_labels, p.dtype).detach()
    if mask is not None:
        a = a * mask.reshape(b, 1, -1).to(p.dtype)
    return WeightMapSums((a * p).sum(-1), a.sum(-1))


def _activate_chunk(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "softmax":
        return torch.softmax(x, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(x)
    if activation != "none":
        raise ValueError(f"activation={activation!r}; use 'softmax', 'sigmoid' or 'none'.")
    return x


def _target_chunk(target: torch.Tensor, num_classes: int, label_map: bool, acc: torch.dtype) -> torch.Tensor:
    """Dense ``B x C x L`` target values of a chunk; for a label map, a broadcast comparison that
    fuses into the reductions (labels outside 0..C-1, e.g. ``ignore_index``, match no class)."""
    if label_map:
        classes = torch.arange(num_classes, device=target.device)[None, :, None]
        return (rounded_labels(target) == classes).to(acc)
    return target.to(acc)


def forward_chunk(
    x: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    activation: str,
    label_map: bool,
    squared: bool,
    soft: bool = False,
    voxel_term: str = "none",
    gamma: float = 0.0,
    weight_map: torch.Tensor | None = None,
    map_labels: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Partial ``(I, P, G, V, F, Q, W, S)`` sums (``B x C``) of one chunk ``x`` (``B x C x L``)."""
    acc = accumulation_dtype(x.dtype)
    xa = x.to(acc)
    p = _activate_chunk(xa, activation)
    g = _target_chunk(target, x.shape[1], label_map, acc)
    overlap = torch.minimum(p, g) if soft and not label_map else p * g
    if mask is not None:
        m = mask.to(acc)
        overlap, pm, gm = overlap * m, p * m, g * m
    else:
        pm, gm = p, g
    inter = overlap.sum(-1)
    pred = (pm * p).sum(-1) if squared else pm.sum(-1)
    tvol = gm.sum(-1)
    tsum = (gm * g).sum(-1) if squared and not label_map else tvol
    zero = torch.zeros_like(inter)
    on_target = off_target = map_overlap = map_volume = zero
    if voxel_term != "none":
        elements = voxel_term_elements(xa, g, voxel_term, gamma)
        if mask is not None:
            elements = elements * m
        on_target, off_target = (elements * g).sum(-1), (elements * (1.0 - g)).sum(-1)
    if weight_map is not None:
        a = _target_chunk(weight_map, x.shape[1], map_labels, acc)
        if mask is not None:
            a = a * m
        map_overlap, map_volume = (a * p).sum(-1), a.sum(-1)
    return inter, pred, tsum, tvol, on_target, off_target, map_overlap, map_volume


def _voxel_term_gradient(
    xa: torch.Tensor, p: torch.Tensor, g: torch.Tensor, w: torch.Tensor, voxel_term: str, gamma: float
) -> torch.Tensor:
    """The voxel term's share: ``e`` to add before the softmax chain (``"softmax"``), or ``dL/dx`` (``"sigmoid"``)."""
    if voxel_term == "softmax":
        if gamma == 0:
            return -w
        one_minus = 1.0 - p
        log_p = torch.log_softmax(xa, dim=1)
        t = torch.where(one_minus > 0, log_p / torch.where(one_minus > 0, one_minus, 1.0), -1.0)
        return w * one_minus.pow(gamma) * (gamma * p * t - 1.0)
    sig = torch.sigmoid(xa)
    if gamma == 0:
        return w * (sig - g)
    sign = 2.0 * g - 1.0
    s = torch.sigmoid(-xa * sign)
    s_gamma = torch.exp(gamma * F.logsigmoid(-xa * sign))
    bce = F.softplus(xa) - xa * g
    return w * (s_gamma * (sig - g) - gamma * sign * s_gamma * (1.0 - s) * bce)


def backward_chunk(
    x: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    grad: torch.Tensor,
    activation: str,
    label_map: bool,
    squared: bool,
    soft: bool = False,
    voxel_term: str = "none",
    gamma: float = 0.0,
    weight_map: torch.Tensor | None = None,
    map_labels: bool = False,
) -> torch.Tensor:
    """``dL/dx`` of one chunk from ``grad = (dL/dI, dL/dP, dL/dF, dL/dQ, dL/dW)`` (``5 x B x C x 1``)."""
    acc = accumulation_dtype(x.dtype)
    grad_inter, grad_pred, grad_on, grad_off, grad_map = grad.to(acc).unbind(0)
    xa = x.to(acc)
    p = _activate_chunk(xa, activation)
    g = _target_chunk(target, x.shape[1], label_map, acc)
    di_dp = (p < g).to(acc) + 0.5 * (p == g).to(acc) if soft and not label_map else g  # dI/dp of min(p, g)
    du = grad_inter * di_dp + (grad_pred * (2.0 * p) if squared else grad_pred)
    if weight_map is not None:
        du = du + grad_map * _target_chunk(weight_map, x.shape[1], map_labels, acc)
    m = None if mask is None else mask.to(acc)
    if m is not None:
        du = du * m
    w = None
    if voxel_term != "none":
        w = grad_on * g + grad_off * (1.0 - g)
        w = w if m is None else w * m
    if activation == "softmax":
        e = p * du
        if w is not None and voxel_term == "softmax":
            e = e + _voxel_term_gradient(xa, p, g, w, voxel_term, gamma)
        du = e - p * e.sum(dim=1, keepdim=True)
    elif activation == "sigmoid":
        du = du * (p * (1.0 - p))
    if w is not None and voxel_term == "sigmoid":
        du = du + _voxel_term_gradient(xa, p, g, w, voxel_term, gamma)
    return du.to(x.dtype)
