"""The loss formulas on the statistics: small differentiable operations on ``N x C`` tensors.

Nothing here touches the volume; :mod:`monai_gdl.kernels` reduced it to a
:class:`~monai_gdl.kernels.DiceStatistics` already (``I, P, G, V``, each ``N x C``).
"""

from __future__ import annotations

import torch

from monai_gdl.kernels import DiceStatistics
from monai_gdl.losses.validation import check_gdl_options

__all__ = [
    "generalized_dice_from_statistics",
    "generalized_dice_weights",
    "reduce_loss",
    "vnet_dice_from_statistics",
]


def vnet_dice_from_statistics(
    stats: DiceStatistics, *, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5
) -> torch.Tensor:
    """``1 - (2*I + smooth_nr) / (P + G + smooth_dr)`` elementwise: an ``N x C`` loss in [0, 1]."""
    numerator = 2.0 * stats.intersection + smooth_nr
    denominator = stats.prediction + stats.target + smooth_dr
    return 1.0 - numerator / denominator


def generalized_dice_weights(
    target_volume: torch.Tensor,
    *,
    w_type: str = "square",
    absent_class: str = "max",
    all_absent: str = "uniform",
    normalize: bool = True,
) -> torch.Tensor:
    """GDL class weights ``w_c`` (``N x C``, no gradient) from the class volumes ``V_c = sum(g_c)``.

    ``square``: ``1/V^2`` (Sudre et al.), ``simple``: ``1/V``, ``uniform``: ``1``. An absent class
    (``V_c = 0``, weight ``1/0``) gets, per ``absent_class``: ``"max"`` the largest finite weight in
    its row (MONAI/NiftyNet: false positives of a class missing from the patch are penalised as much
    as the rarest present class) or ``"zero"`` (ignored). A row where every weight is then zero (every
    class absent) gets, per ``all_absent``: ``"uniform"`` weights, so false positives still receive a
    gradient, or ``"zero"`` (MONAI: the loss is the constant ``1 - smooth_nr/smooth_dr``).
    ``normalize`` divides each row by its sum: the loss is invariant to the weights' scale except
    through the smoothing terms, which then act in voxel units as in the V-Net Dice instead of
    swamping the ratio (with ``1/V^2`` for a 10^5-voxel class, ``w*I ~ 1e-5``, the size of
    ``smooth_nr``).
    """
    check_gdl_options(w_type=w_type, absent_class=absent_class, all_absent=all_absent)
    with torch.no_grad():
        v = target_volume.detach()
        if w_type == "uniform":
            w = torch.ones_like(v)
        else:
            w = torch.reciprocal(v * v if w_type == "square" else v)
        absent = torch.isinf(w)
        w = torch.where(absent, torch.zeros_like(w), w)
        if absent_class == "max":
            w = torch.where(absent, w.amax(dim=1, keepdim=True), w)
        if all_absent == "uniform":
            w = torch.where((w == 0).all(dim=1, keepdim=True), torch.ones_like(w), w)
        if normalize:
            total = w.sum(dim=1, keepdim=True)
            w = w / torch.where(total > 0, total, torch.ones_like(total))
    return w


def generalized_dice_from_statistics(
    stats: DiceStatistics,
    *,
    w_type: str = "square",
    absent_class: str = "max",
    all_absent: str = "uniform",
    normalize_weights: bool = True,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
) -> torch.Tensor:
    """``1 - (2*sum_c w_c*I_c + smooth_nr) / (sum_c w_c*(P_c + G_c) + smooth_dr)``: an ``N x 1`` loss in [0, 1]."""
    w = generalized_dice_weights(
        stats.target_volume, w_type=w_type, absent_class=absent_class, all_absent=all_absent,
        normalize=normalize_weights,
    ).to(stats.intersection.dtype)
    numerator = 2.0 * (w * stats.intersection).sum(dim=1, keepdim=True) + smooth_nr
    denominator = (w * (stats.prediction + stats.target)).sum(dim=1, keepdim=True) + smooth_dr
    return 1.0 - numerator / denominator


def reduce_loss(f: torch.Tensor, reduction: str, *, spatial_dims: int, batch: bool) -> torch.Tensor:
    """``"mean"``/``"sum"`` of the ``N x K`` loss, or for ``"none"`` MONAI's broadcastable shape:
    ``N x K x 1 x ... x 1`` (one 1 per spatial axis); with ``batch`` MONAI drops the batch axis,
    ``K x 1 x ... x 1`` (still broadcastable against ``B x C x spatial``)."""
    if reduction == "mean":
        return f.mean()
    if reduction == "sum":
        return f.sum()
    if batch:
        return f.reshape(f.shape[1], *([1] * spatial_dims))
    return f.reshape(f.shape[0], f.shape[1], *([1] * spatial_dims))
