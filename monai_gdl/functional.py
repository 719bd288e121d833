"""Functional core of the Dice-family losses.

Every loss is computed in two steps that never mix:

1. :func:`dice_statistics` reduces the volume to per-(sample, class) sums, a
   :class:`DiceStatistics` of ``B x C`` tensors. This is the only step that touches the volume; it
   runs either the fused streaming kernel (:mod:`monai_gdl.kernels`, the default) or the plain
   PyTorch reference (:func:`reference_statistics`). Multi-process training all-reduces exactly
   these sums (:func:`all_reduce_statistics`).
2. :func:`vnet_dice_from_statistics` / :func:`generalized_dice_from_statistics` turn the sums into
   the loss with differentiable operations on ``B x C`` tensors.

Notation: ``p`` probabilities after the activation, ``g`` target (one-hot, soft, or a label map
expanded implicitly), ``m`` voxel mask (``ignore_index`` / ``mask``), ``k = 2`` when the
denominator is squared, else ``1``. Sums run over the spatial axes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from monai_gdl.validation import (
    ABSENT_CLASS_POLICIES,
    W_TYPES,
    LossInputError,
    check_gdl_options,
    check_loss_inputs,
    check_loss_options,
    check_statistics_finite,
)

__all__ = [
    "ABSENT_CLASS_POLICIES",
    "W_TYPES",
    "DiceStatistics",
    "activate",
    "all_reduce_statistics",
    "dice_statistics",
    "generalized_dice_from_statistics",
    "generalized_dice_loss",
    "reference_statistics",
    "vnet_dice_from_statistics",
    "vnet_dice_loss",
]

IMPLEMENTATIONS = ("auto", "fused", "reference")


class DiceStatistics(NamedTuple):
    """Per-(sample, class) sums, each ``B x C`` (``1 x C`` once pooled over the batch).

    ``intersection = sum(m*p*g)``, ``prediction = sum(m*p^k)``, ``target = sum(m*g^k)``,
    ``target_volume = sum(m*g)`` (the class volume GDL weights use; equals ``target`` for hard
    labels). Target sums carry no gradient.
    """

    intersection: torch.Tensor
    prediction: torch.Tensor
    target: torch.Tensor
    target_volume: torch.Tensor

    def select_classes(self, include_background: bool) -> DiceStatistics:
        """Drop class 0 (after the activation saw it) when ``include_background`` is False."""
        if include_background:
            return self
        return DiceStatistics(*(s[:, 1:] for s in self))

    def pooled(self, batch: bool) -> DiceStatistics:
        """Sum over the batch before the Dice ratio (``batch=True``): a ``1 x C`` result."""
        if not batch:
            return self
        return DiceStatistics(*(s.sum(dim=0, keepdim=True) for s in self))


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in float32 for half inputs (AMP), float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    """``B x 1 x N`` float mask combining ``ignore_index`` and ``mask`` (None when every voxel counts)."""
    parts = []
    if label_map and ignore_index is not None:
        parts.append(target.reshape(target.shape[0], 1, -1) != ignore_index)
    if mask is not None:
        parts.append(mask.reshape(mask.shape[0], 1, -1) != 0)
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out = out & p
    return out


def reference_statistics(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    label_map: bool,
    squared: bool,
    ignore_index: int | None = None,
    mask: torch.Tensor | None = None,
) -> DiceStatistics:
    """Plain PyTorch sums, differentiable through autograd: the reference the fused kernel is tested against.

    A label map (``B x 1 x spatial``) is never expanded to a float one-hot: the intersection gathers
    ``p`` at the labelled class and scatters it into ``B x C`` sums.
    """
    b, c = probs.shape[:2]
    p = probs.reshape(b, c, -1)
    m = voxel_mask(target, label_map=label_map, ignore_index=ignore_index, mask=mask)
    mf = None if m is None else m.to(p.dtype)
    p_masked = p if mf is None else p * mf
    prediction = (p_masked * p).sum(-1) if squared else p_masked.sum(-1)
    if label_map:
        labels = target.reshape(b, -1).long()
        if m is not None:
            labels = torch.where(m[:, 0], labels, torch.zeros_like(labels))
        at_label = p_masked.gather(1, labels[:, None])[:, 0]
        intersection = p.new_zeros(b, c).scatter_add(1, labels, at_label)
        with torch.no_grad():
            ones = torch.ones_like(at_label) if mf is None else mf[:, 0]
            volume = p.new_zeros(b, c).scatter_add(1, labels, ones)
        return DiceStatistics(intersection, prediction, volume, volume)
    g = target.reshape(b, c, -1).to(p.dtype)
    intersection = (p_masked * g).sum(-1)
    with torch.no_grad():
        g_masked = g if mf is None else g * mf
        volume = g_masked.sum(-1)
        target_sum = (g_masked * g).sum(-1) if squared else volume
    return DiceStatistics(intersection, prediction, target_sum, volume)


def dice_statistics(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    to_onehot_y: bool = False,
    softmax: bool = False,
    sigmoid: bool = False,
    other_act: Callable | None = None,
    squared: bool = False,
    ignore_index: int | None = None,
    mask: torch.Tensor | None = None,
    implementation: str = "auto",
) -> DiceStatistics:
    """Per-(sample, class) sums of the activated ``input`` against ``target``, for all C channels.

    ``implementation``: ``"auto"`` runs the fused streaming kernel wherever it applies (softmax,
    sigmoid or no activation; any target kind), else the reference; ``"fused"`` requires the
    kernel; ``"reference"`` forces :func:`reference_statistics`.
    """
    if implementation not in IMPLEMENTATIONS:
        raise LossInputError(f"implementation={implementation!r}; use one of {IMPLEMENTATIONS}.")
    from monai_gdl import kernels

    fused_ok = other_act is None
    if implementation == "fused" and not fused_ok:
        raise LossInputError("implementation='fused' does not support other_act; use implementation='reference'.")
    if fused_ok and implementation != "reference":
        activation = "softmax" if softmax else "sigmoid" if sigmoid else "none"
        return kernels.streaming_statistics(
            input,
            target,
            activation=activation,
            label_map=to_onehot_y,
            squared=squared,
            mask=voxel_mask(target, label_map=to_onehot_y, ignore_index=ignore_index, mask=mask),
        )
    probs = activate(input, softmax=softmax, sigmoid=sigmoid, other_act=other_act)
    return reference_statistics(
        probs, target, label_map=to_onehot_y, squared=squared, ignore_index=ignore_index, mask=mask
    )


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; its gradient is again the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = t.clone()
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


def all_reduce_statistics(stats: DiceStatistics) -> DiceStatistics:
    """Sum the statistics over all processes of the default group, keeping autograd.

    Makes ``batch=True`` Dice a true global-batch Dice under DistributedDataParallel: every rank
    computes the same loss from the global sums; the gradient of the all-reduce is itself an
    all-reduce, so after DDP averages gradients each rank's parameters get the exact gradient.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stats
    stacked = torch.stack(
        [stats.intersection, stats.prediction, stats.target.detach(), stats.target_volume.detach()]
    )
    summed = _AllReduceSum.apply(stacked)
    return DiceStatistics(summed[0], summed[1], summed[2].detach(), summed[3].detach())


def vnet_dice_from_statistics(
    stats: DiceStatistics, *, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5
) -> torch.Tensor:
    """``1 - (2*I + smooth_nr) / (P + G + smooth_dr)`` elementwise: an ``N x C`` loss in [0, 1]."""
    numerator = 2.0 * stats.intersection + smooth_nr
    denominator = stats.prediction + stats.target + smooth_dr
    return 1.0 - numerator / denominator


def generalized_dice_weights(
    target_volume: torch.Tensor, *, w_type: str = "square", absent_class: str = "max", normalize: bool = True
) -> torch.Tensor:
    """GDL class weights ``w_c`` (``N x C``, no gradient) from the class volumes ``V_c = sum(g_c)``.

    ``square``: ``1/V^2`` (Sudre et al.), ``simple``: ``1/V``, ``uniform``: ``1``. An absent class
    (``V_c = 0``, weight ``1/0``) gets, per ``absent_class``: ``"max"`` the largest finite weight in
    its row (MONAI/NiftyNet: false positives of a class missing from the patch are penalised as much
    as the rarest present class) or ``"zero"`` (ignored). A row where every class is absent falls back
    to uniform weights so false positives still receive a gradient (MONAI returns 0 there).
    ``normalize`` divides each row by its sum: the loss is invariant to the weights' scale except
    through the smoothing terms, which then act in voxel units as in the V-Net Dice instead of
    swamping the ratio (with ``1/V^2`` for a 10^5-voxel class, ``w*I ~ 1e-5``, the size of
    ``smooth_nr``).
    """
    check_gdl_options(w_type=w_type, absent_class=absent_class)
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
        all_zero = (w == 0).all(dim=1, keepdim=True)
        w = torch.where(all_zero, torch.ones_like(w), w)
        if normalize:
            w = w / w.sum(dim=1, keepdim=True)
    return w


def generalized_dice_from_statistics(
    stats: DiceStatistics,
    *,
    w_type: str = "square",
    absent_class: str = "max",
    normalize_weights: bool = True,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
) -> torch.Tensor:
    """``1 - (2*sum_c w_c*I_c + smooth_nr) / (sum_c w_c*(P_c + G_c) + smooth_dr)``: an ``N x 1`` loss in [0, 1]."""
    w = generalized_dice_weights(
        stats.target_volume, w_type=w_type, absent_class=absent_class, normalize=normalize_weights
    ).to(stats.intersection.dtype)
    numerator = 2.0 * (w * stats.intersection).sum(dim=1, keepdim=True) + smooth_nr
    denominator = (w * (stats.prediction + stats.target)).sum(dim=1, keepdim=True) + smooth_dr
    return 1.0 - numerator / denominator


def _reduce(f: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return f.mean()
    if reduction == "sum":
        return f.sum()
    return f


def _class_weight(weight: Sequence[float] | torch.Tensor, num_scored: int, like: torch.Tensor) -> torch.Tensor:
    """Per-class weights rescaled to average 1, so ``mean`` stays a weighted average in [0, 1]."""
    w = torch.as_tensor(weight, dtype=like.dtype, device=like.device).flatten()
    w = w.expand(num_scored) if w.numel() == 1 else w
    return w * (num_scored / w.sum())


def _statistics_for_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    include_background: bool,
    to_onehot_y: bool,
    softmax: bool,
    sigmoid: bool,
    other_act: Callable | None,
    squared_pred: bool,
    batch: bool,
    reduction: str,
    smooth_nr: float,
    smooth_dr: float,
    ignore_index: int | None,
    mask: torch.Tensor | None,
    validate: bool,
    implementation: str,
    distributed: bool,
    weight: Sequence[float] | torch.Tensor | None = None,
    **_formula_options: object,
) -> DiceStatistics:
    """Validate, reduce the volume to statistics, select classes and pool: shared by both losses."""
    if validate:
        check_loss_options(
            softmax=softmax,
            sigmoid=sigmoid,
            other_act=other_act,
            reduction=reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
        )
        check_loss_inputs(
            input,
            target,
            to_onehot_y=to_onehot_y,
            softmax=softmax,
            sigmoid=sigmoid,
            other_act=other_act,
            ignore_index=ignore_index,
            mask=mask,
            weight=weight,
            include_background=include_background,
        )
    stats = dice_statistics(
        input,
        target,
        to_onehot_y=to_onehot_y,
        softmax=softmax,
        sigmoid=sigmoid,
        other_act=other_act,
        squared=squared_pred,
        ignore_index=ignore_index,
        mask=mask,
        implementation=implementation,
    )
    if validate:
        check_statistics_finite(input, stats)
    stats = stats.select_classes(include_background)
    if batch and distributed:
        stats = all_reduce_statistics(stats)
    return stats.pooled(batch)


def vnet_dice_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    include_background: bool = True,
    to_onehot_y: bool = False,
    sigmoid: bool = False,
    softmax: bool = False,
    other_act: Callable | None = None,
    squared_pred: bool = True,
    batch: bool = False,
    reduction: str = "mean",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    weight: Sequence[float] | torch.Tensor | None = None,
    ignore_index: int | None = None,
    mask: torch.Tensor | None = None,
    validate: bool = True,
    implementation: str = "auto",
    distributed: bool = True,
) -> torch.Tensor:
    """V-Net soft Dice loss; see :class:`monai_gdl.VNetDiceLoss` for the arguments and the math."""
    stats = _statistics_for_loss(**locals())  # every argument by name; the formula's own are ignored there
    f = vnet_dice_from_statistics(stats, smooth_nr=smooth_nr, smooth_dr=smooth_dr)
    if weight is not None:
        f = f * _class_weight(weight, f.shape[1], f)
    return _reduce(f, reduction)


def generalized_dice_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    include_background: bool = True,
    to_onehot_y: bool = False,
    sigmoid: bool = False,
    softmax: bool = False,
    other_act: Callable | None = None,
    w_type: str = "square",
    absent_class: str = "max",
    normalize_weights: bool = True,
    squared_pred: bool = False,
    batch: bool = False,
    reduction: str = "mean",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    ignore_index: int | None = None,
    mask: torch.Tensor | None = None,
    validate: bool = True,
    implementation: str = "auto",
    distributed: bool = True,
) -> torch.Tensor:
    """Generalized Dice loss; see :class:`monai_gdl.SudreGeneralizedDiceLoss` for the arguments and the math."""
    check_gdl_options(w_type=w_type, absent_class=absent_class)
    stats = _statistics_for_loss(**locals())  # every argument by name; the formula's own are ignored there
    f = generalized_dice_from_statistics(
        stats,
        w_type=w_type,
        absent_class=absent_class,
        normalize_weights=normalize_weights,
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
    )
    return _reduce(f, reduction)

