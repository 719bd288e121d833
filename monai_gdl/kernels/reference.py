"""The reference math in plain PyTorch: whole-volume statistics through autograd, and the chunk
formulas (statistics and closed-form gradient) that every fused backend reproduces.

Closed-form gradient, for upstream gradients ``a = dL/dI`` and ``b = dL/dP`` (``B x C``)::

    dL/dp_c = m * (a_c * dI/dp_c + b_c * k * p_c^(k-1))
        dI/dp = g                       (product intersection)
        dI/dp = [p < g] + [p == g] / 2  (soft-label intersection min(p, g); the half at a tie is
                                         the gradient of (p + g - |p - g|) / 2, as in MONAI)
    softmax:  dL/dx_c = p_c * (dL/dp_c - sum_j p_j * dL/dp_j)
    sigmoid:  dL/dx_c = dL/dp_c * p_c * (1 - p_c)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from monai_gdl.kernels.contract import DiceStatistics, statistics_dtype

__all__ = ["activate", "backward_chunk", "forward_chunk", "reference_statistics", "voxel_mask"]


def activate(
    input: torch.Tensor, *, softmax: bool = False, sigmoid: bool = False, other_act: Callable | None = None
) -> torch.Tensor:
    """Probabilities from the network output, computed in at least float32."""
    x = input.to(statistics_dtype(input.dtype))
    if softmax:
        return torch.softmax(x, dim=1)
    if sigmoid:
        return torch.sigmoid(x)
    if other_act is not None:
        return other_act(x)
    return x


def voxel_mask(
    target: torch.Tensor, *, label_map: bool, ignore_index: int | None, mask: torch.Tensor | None
) -> torch.Tensor | None:
    """``B x 1 x N`` bool mask combining ``ignore_index`` and ``mask`` (None when every voxel counts)."""
    keep = None
    if label_map and ignore_index is not None:
        keep = target.reshape(target.shape[0], 1, -1) != ignore_index
    if mask is not None:
        given = mask.reshape(mask.shape[0], 1, -1) != 0
        keep = given if keep is None else keep & given
    return keep


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

    ``mask`` is the ``B x 1 x N`` bool of :func:`voxel_mask`. A label map (``B x 1 x spatial``) is
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
        labels = target.reshape(b, -1)
        valid = (labels >= 0) & (labels < c) & (labels == labels.round() if labels.is_floating_point() else True)
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
    with torch.no_grad():
        g_masked = g if mf is None else g * mf
        volume = g_masked.sum(-1)
        target_sum = (g_masked * g).sum(-1) if squared else volume
    return DiceStatistics(intersection, prediction, target_sum, volume)


def _activate_chunk(x: torch.Tensor, activation: str) -> torch.Tensor:
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
    x: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    activation: str,
    label_map: bool,
    squared: bool,
    soft: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Partial ``(I, P, G, V)`` sums (``B x C``) of one chunk ``x`` (``B x C x L``)."""
    acc = statistics_dtype(x.dtype)
    p = _activate_chunk(x.to(acc), activation)
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
    soft: bool = False,
) -> torch.Tensor:
    """``dL/dx`` of one chunk from ``grad_inter = dL/dI`` and ``grad_pred = dL/dP`` (``B x C x 1``)."""
    acc = statistics_dtype(x.dtype)
    p = _activate_chunk(x.to(acc), activation)
    g = _target_chunk(target, x.shape[1], label_map, acc)
    if soft and not label_map:
        g = (p < g).to(acc) + 0.5 * (p == g).to(acc)  # dI/dp of min(p, g)
    du = grad_inter * g + (grad_pred * (2.0 * p) if squared else grad_pred)
    if mask is not None:
        du = du * mask.to(acc)
    if activation == "softmax":
        du = p * (du - (p * du).sum(dim=1, keepdim=True))
    elif activation == "sigmoid":
        du = du * (p * (1.0 - p))
    return du.to(x.dtype)
