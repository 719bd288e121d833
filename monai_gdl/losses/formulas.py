"""The loss formulas on the statistics: small differentiable operations on ``N x C`` tensors.

Nothing here touches the volume; :mod:`monai_gdl.kernels` reduced it to a
:class:`~monai_gdl.kernels.DiceStatistics` already (``I, P, G, V``, each ``N x C``) and, for the
compound losses, to the voxel term's sums :class:`~monai_gdl.kernels.VoxelTermSums` (``F, Q``).
"""

from __future__ import annotations

from typing import get_args

import torch

from monai_gdl.kernels import DiceStatistics, VoxelTermSums, WeightMapSums
from monai_gdl.losses.options import AbsentClass, AllAbsent, WType, check_choice

__all__ = [
    "boundary_from_sums",
    "cross_entropy_from_sums",
    "focal_from_sums",
    "softmax_focal_from_sums",
    "generalized_dice_from_statistics",
    "generalized_dice_weights",
    "reduce_loss",
    "skeleton_recall_from_sums",
    "tversky_from_statistics",
    "vnet_dice_from_statistics",
]

# The choices as tuples once: inside a compiled step, torch < 2.5's dynamo cannot trace ``typing.get_args``.
_W_TYPES, _ABSENT_CLASS, _ALL_ABSENT = get_args(WType), get_args(AbsentClass), get_args(AllAbsent)


def _one_minus_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``1 - numerator / denominator``, 0 (with a zero gradient) where the denominator is 0, or below the dtype's
    smallest normal number: there ``1 / denominator`` overflows, and ``inf * 0`` turned the whole gradient to NaN (a
    class neither present nor predicted whose probabilities square to a subnormal, ``smooth_dr=0``)."""
    empty = denominator.abs() < torch.finfo(denominator.dtype).tiny
    ratio = numerator / torch.where(empty, torch.ones_like(denominator), denominator)
    return torch.where(empty, torch.zeros_like(ratio), 1.0 - ratio)


def vnet_dice_from_statistics(
    stats: DiceStatistics, *, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, jaccard: bool = False
) -> torch.Tensor:
    """``1 - (2*I + smooth_nr) / (P + G + smooth_dr)`` elementwise: an ``N x C`` loss in [0, 1].

    ``jaccard`` (MONAI's ``DiceLoss(jaccard=True)``): the denominator ``2 (P + G - I) + smooth_dr``, i.e.
    ``1 - IoU`` with ``IoU = I / (P + G - I)`` (soft: ``sum min(p, g) / sum max(p, g)``, 1 only at ``p == g``).

    Example:
        >>> import torch
        >>> from monai_gdl import DiceStatistics, vnet_dice_from_statistics
        >>> stats = DiceStatistics(*(torch.tensor([[x]]) for x in (3.0, 4.0, 4.0, 4.0)))  # I, P, G, V
        >>> vnet_dice_from_statistics(stats, smooth_nr=0.0, smooth_dr=0.0)  # 1 - 6 / 8
        tensor([[0.2500]])


    With ``smooth_dr = 0`` a class neither present nor predicted (``P = G = 0``, e.g. probabilities that
    underflow to 0) would be ``0/0``; it scores 0, the limit of ``smooth_nr = smooth_dr -> 0`` (two empty
    sets match), with a zero gradient instead of NaN."""
    numerator = 2.0 * stats.intersection + smooth_nr
    union = stats.prediction + stats.target
    if jaccard:
        union = 2.0 * (union - stats.intersection)
    return _one_minus_ratio(numerator, union + smooth_dr)


def focal_power(f: torch.Tensor, gamma: float) -> torch.Tensor:
    """``f^gamma`` for a loss ``f >= 0`` with a finite gradient everywhere: at ``f = 0`` (a perfect class) the
    value and gradient are 0, where ``gamma < 1`` would otherwise give ``inf * 0 = NaN``. ``gamma = 1`` is ``f``."""
    if gamma == 1.0:
        return f
    positive = f > 0
    safe = torch.where(positive, f, torch.ones_like(f))
    return torch.where(positive, safe.pow(gamma), torch.zeros_like(f))


def tversky_from_statistics(
    stats: DiceStatistics,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    gamma: float = 1.0,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
) -> torch.Tensor:
    """Tversky loss ``(1 - TI)^gamma`` elementwise (``N x C``), ``gamma = 1`` Salehi et al. 2017, otherwise the
    focal Tversky loss of Abraham and Khan 2019::

        TI = (I + smooth_nr) / (I + alpha * (P - I) + beta * (G - I) + smooth_dr)

    with ``P - I = sum(p (1 - g))`` the soft false positives and ``G - I = sum((1 - p) g)`` the false
    negatives (MONAI's ``TverskyLoss``; with the soft-label intersection ``I = sum min(p, g)`` they are
    ``sum max(p - g, 0)`` and ``sum max(g - p, 0)``, so ``TI = 1`` exactly at ``p == g``). ``alpha = beta = 0.5``
    is the Dice loss, ``alpha = beta = 1`` the Jaccard loss; ``beta > alpha`` weighs misses above false alarms
    (recall). A class neither present nor predicted with ``smooth_dr = 0`` scores 0 (as
    :func:`vnet_dice_from_statistics`).

    Example:
        >>> import torch
        >>> from monai_gdl import DiceStatistics
        >>> from monai_gdl.losses.formulas import tversky_from_statistics
        >>> stats = DiceStatistics(*(torch.tensor([[x]]) for x in (3.0, 4.0, 6.0, 6.0)))  # I, P, G, V: FP 1, FN 3
        >>> tversky_from_statistics(stats, alpha=0.3, beta=0.7, smooth_nr=0.0, smooth_dr=0.0)  # 1 - 3 / 5.4
        tensor([[0.4444]])
    """
    i = stats.intersection
    denominator = i + alpha * (stats.prediction - i) + beta * (stats.target - i) + smooth_dr
    return focal_power(_one_minus_ratio(i + smooth_nr, denominator), gamma)


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

    Example:
        >>> import torch
        >>> from monai_gdl import generalized_dice_weights
        >>> generalized_dice_weights(torch.tensor([[10.0, 0.0, 5.0]]))  # 1/100, absent -> max 1/25, 1/25; normalised
        tensor([[0.1111, 0.4444, 0.4444]])
    """
    check_choice("w_type", w_type, _W_TYPES)
    check_choice("absent_class", absent_class, _ABSENT_CLASS)
    check_choice("all_absent", all_absent, _ALL_ABSENT)
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
    """``1 - (2*sum_c w_c*I_c + smooth_nr) / (sum_c w_c*(P_c + G_c) + smooth_dr)``: an ``N x 1`` loss in [0, 1].

    Example:
        >>> import torch
        >>> from monai_gdl import DiceStatistics, generalized_dice_from_statistics
        >>> i, p, v = torch.tensor([[8.0, 1.0]]), torch.tensor([[10.0, 2.0]]), torch.tensor([[10.0, 2.0]])
        >>> generalized_dice_from_statistics(DiceStatistics(i, p, v, v), w_type="simple", smooth_nr=0, smooth_dr=0)
        tensor([[0.3500]])
    """
    w = generalized_dice_weights(
        stats.target_volume,
        w_type=w_type,
        absent_class=absent_class,
        all_absent=all_absent,
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


def _safe_divide(numerator: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``numerator / count``, 0 where nothing was counted (every voxel ignored) instead of NaN."""
    return numerator / torch.clamp(count, min=torch.finfo(numerator.dtype).tiny)


def cross_entropy_from_sums(
    sums: VoxelTermSums,
    target_volume: torch.Tensor,
    voxel_count: torch.Tensor,
    *,
    label_map: bool,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """PyTorch's ``cross_entropy`` (softmax, all ``C`` classes) from the softmax term's sums at ``gamma = 0``.

    ``F[b, c] = sum(m * g_c * -log p_c)``, ``F + Q = sum(m * -log p_c)`` (every voxel), so with class
    weights ``w`` (1 if None) and smoothing ``eps``::

        total = (1 - eps) * sum_bc w_c F[b, c] + eps / C * sum_bc w_c (F + Q)[b, c]
        mean  = total / sum_bc w_c V[b, c]     (label map: PyTorch's class-index target, weighted count)
              = total / sum_b voxel_count[b]   (one-hot/soft target: PyTorch's probability target)
        sum   = total

    ``V`` (``B x C``, all classes) counts the labelled voxels; ``voxel_count`` (``B``) the counted ones.
    Ignored voxels are in neither, as with PyTorch's ``ignore_index``.
    """
    w = torch.ones_like(sums.on_target[0]) if weight is None else weight.to(sums.on_target)
    on_target = (sums.on_target * w).sum()
    total = (1.0 - label_smoothing) * on_target
    if label_smoothing:
        every_class = ((sums.on_target + sums.off_target) * w).sum()
        total = total + label_smoothing / sums.on_target.shape[1] * every_class
    if reduction == "sum":
        return total
    count = (target_volume.to(w) * w).sum() if label_map else voxel_count.to(w).sum()
    return _safe_divide(total, count)


def focal_from_sums(
    sums: VoxelTermSums,
    voxel_count: torch.Tensor,
    *,
    alpha: float | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """MONAI's ``FocalLoss`` (sigmoid, ``use_softmax=False``) from the sigmoid term's sums (BCE at ``gamma = 0``).

    The element ``alpha_t * s^gamma * bce`` with ``alpha_t = alpha g + (1 - alpha)(1 - g)`` sums to
    ``T[b, c] = alpha F + (1 - alpha) Q`` (``F + Q`` without ``alpha``); with class weights ``w``::

        mean = sum_bc w_c T[b, c] / (C' * sum_b voxel_count[b])     (mean over every element, as MONAI)
        sum  = sum_bc w_c T[b, c] / voxel_count[b]                  (MONAI: mean over space, sum over B, C)

    ``C'`` is the number of scored channels in ``sums``.
    """
    per_class = (
        sums.on_target + sums.off_target
        if alpha is None
        else (alpha * sums.on_target + (1.0 - alpha) * sums.off_target)
    )
    if weight is not None:
        per_class = per_class * weight.to(per_class)
    count = voxel_count.to(per_class)
    if reduction == "sum":
        return _safe_divide(per_class.sum(dim=1), count).sum()
    return _safe_divide(per_class.sum(), count.sum() * per_class.shape[1])


def softmax_focal_from_sums(
    sums: VoxelTermSums,
    voxel_count: torch.Tensor,
    *,
    include_background: bool,
    alpha: float | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """MONAI's ``FocalLoss(use_softmax=True)`` from the softmax term's sums of all ``C`` classes: only the
    target class's element ``(1 - p_c)^gamma * -log p_c`` is nonzero, ``F``; ``alpha`` weighs class 0 by
    ``1 - alpha`` and the others by ``alpha``. The softmax always spans every class; without background
    class 0's column is dropped afterwards. Reductions as :func:`focal_from_sums` (``C'`` elements per voxel)."""
    per_class = sums.on_target
    if alpha is not None:
        factor = torch.full_like(per_class[0], alpha)
        factor[0] = 1.0 - alpha
        per_class = per_class * factor
    if not include_background:
        per_class = per_class[:, 1:]
    return focal_from_sums(
        VoxelTermSums(per_class, torch.zeros_like(per_class)), voxel_count, weight=weight, reduction=reduction
    )


def skeleton_recall_from_sums(
    sums: WeightMapSums,
    *,
    batch: bool = False,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    reduction: str = "mean",
) -> torch.Tensor:
    """Skeleton Recall (Kirchhoff et al. 2024) from the skeleton map's sums: per foreground class
    ``c >= 1`` (the background has no skeleton) ``R_c = (W_c + smooth_nr) / (S_c + smooth_dr)`` with
    ``W_c = sum(m p_c s_c)``, ``S_c = sum(m s_c)``, ``s`` the tubed skeleton; the loss is ``1 - R_c`` (the
    paper's ``-R_c`` plus 1: same gradient, in [0, 1]), pooled over the batch first with ``batch``, then
    averaged (``"mean"``) or summed (``"sum"``) over samples and classes. A class without skeleton voxels
    scores ``1 - smooth_nr / smooth_dr`` (0 by default) and gets no gradient, as in the authors' code.

    Example:
        >>> import torch
        >>> from monai_gdl.kernels import WeightMapSums
        >>> from monai_gdl.losses.formulas import skeleton_recall_from_sums
        >>> w, s = torch.tensor([[0.0, 3.0, 0.0]]), torch.tensor([[0.0, 4.0, 0.0]])  # class 2 has no skeleton
        >>> skeleton_recall_from_sums(WeightMapSums(w, s), smooth_nr=0.0, smooth_dr=0.0)  # (1/4 + 0) / 2
        tensor(0.1250)
    """
    overlap, volume = sums.overlap[:, 1:], sums.volume[:, 1:]
    if batch:
        overlap, volume = overlap.sum(dim=0, keepdim=True), volume.sum(dim=0, keepdim=True)
    f = _one_minus_ratio(overlap + smooth_nr, volume + smooth_dr)
    return f.sum() if reduction == "sum" else f.mean()


def boundary_from_sums(
    sums: WeightMapSums, voxel_count: torch.Tensor, *, include_background: bool, reduction: str = "mean"
) -> torch.Tensor:
    """Boundary loss (Kervadec et al. 2019) from the distance map's sums ``W_c = sum(m p_c phi_c)``: the mean
    over samples, scored classes and counted voxels of ``p_c * phi_c`` (``"mean"``), or per (sample, class)
    the mean over voxels, summed (``"sum"``), as MONAI's ``BoundaryLoss``.

    Example:
        >>> import torch
        >>> from monai_gdl.kernels import WeightMapSums
        >>> from monai_gdl.losses.formulas import boundary_from_sums
        >>> w = torch.tensor([[-2.0, 6.0]])  # sum(p phi) of 2 classes over 4 voxels
        >>> boundary_from_sums(WeightMapSums(w, torch.zeros_like(w)), torch.tensor([4.0]), include_background=True)
        tensor(0.5000)
    """
    overlap = sums.overlap if include_background else sums.overlap[:, 1:]
    count = voxel_count.to(overlap)
    if reduction == "sum":
        return _safe_divide(overlap, count[:, None]).sum()
    return _safe_divide(overlap.sum(), count.sum() * overlap.shape[1])
