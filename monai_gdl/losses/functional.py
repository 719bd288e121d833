"""Functional losses: validate, reduce the volume to statistics, apply the formula, reduce.

The three steps never mix: :mod:`~monai_gdl.losses.validation` checks the inputs (metadata always;
the scans over values with ``validate=True``), :func:`dice_statistics` reduces the volume to
per-(sample, class) sums (the fused operator of :mod:`monai_gdl.kernels`, or the plain-PyTorch
reference), and :mod:`~monai_gdl.losses.formulas` turns them into the loss. Multi-process training
all-reduces exactly these sums (:func:`all_reduce_statistics`). The compound losses
(:mod:`~monai_gdl.losses.compound`) get their CE / BCE / focal sums from the same pass
(:func:`loss_statistics` with a ``voxel_term``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from monai.data import MetaTensor

from monai_gdl.kernels import DiceStatistics, VoxelTermSums, streaming_statistics
from monai_gdl.kernels.reference import activate, reference_statistics, reference_voxel_term, voxel_mask
from monai_gdl.losses.formulas import generalized_dice_from_statistics, reduce_loss, vnet_dice_from_statistics
from monai_gdl.losses.validation import (
    LossInputError,
    check_gdl_options,
    check_loss_inputs,
    check_loss_values,
    check_loss_options,
    class_weight_tensor,
    validated_statistics,
)

__all__ = [
    "all_reduce_statistics",
    "checked_generalized_dice_loss",
    "checked_vnet_dice_loss",
    "dice_statistics",
    "generalized_dice_loss",
    "loss_statistics",
    "scored_statistics",
    "VoxelTermStatistics",
    "vnet_dice_loss",
]

IMPLEMENTATIONS = ("auto", "fused", "reference")


def _plain(t: torch.Tensor | None) -> torch.Tensor | None:
    """A plain tensor view of a MONAI ``MetaTensor`` (its ``__torch_function__`` would follow every op);
    other tensors (tracing's fake tensors included) as they are."""
    return t.as_subclass(torch.Tensor) if isinstance(t, MetaTensor) else t


def loss_statistics(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    to_onehot_y: bool = False,
    softmax: bool = False,
    sigmoid: bool = False,
    other_act: Callable | None = None,
    squared: bool = False,
    soft_label: bool = True,
    ignore_index: int | None = None,
    mask: torch.Tensor | None = None,
    implementation: str = "auto",
    voxel_term: str = "none",
    gamma: float = 0.0,
) -> tuple[DiceStatistics, VoxelTermSums, torch.Tensor | None]:
    """:func:`dice_statistics` plus the voxel term's sums and the number of counted voxels per sample
    (``B``; not ignored, not masked out), from one pass (no checks). Without a voxel term the sums are
    zero and the count is None (not computed)."""
    if implementation not in IMPLEMENTATIONS:
        raise LossInputError(f"implementation={implementation!r}; use one of {IMPLEMENTATIONS}.")
    if implementation == "fused" and other_act is not None:
        raise LossInputError("implementation='fused' does not support other_act; use implementation='reference'.")
    if implementation != "reference" and _functorch_active():
        if implementation == "fused":
            raise LossInputError(
                "implementation='fused' cannot run inside torch.func transforms (grad, vmap, jacrev, ...): the fused "
                "operator's closed-form backward is not a functorch rule. Pass implementation='reference' (or 'auto', "
                "which switches to it there)."
            )
        implementation = "reference"
    input, target, mask = _plain(input), _plain(target), _plain(mask)
    keep = voxel_mask(target, label_map=to_onehot_y, ignore_index=ignore_index, mask=mask)
    soft = soft_label and not squared and not to_onehot_y
    if other_act is None and implementation != "reference":
        activation = "softmax" if softmax else "sigmoid" if sigmoid else "none"
        stats, sums = streaming_statistics(input, target, activation=activation, label_map=to_onehot_y,
                                           squared=squared, soft=soft, mask=keep, voxel_term=voxel_term, gamma=gamma)
    else:
        probs = activate(input, softmax=softmax, sigmoid=sigmoid, other_act=other_act)
        stats = reference_statistics(probs, target, label_map=to_onehot_y, squared=squared, soft=soft, mask=keep)
        if voxel_term == "none":
            zero = torch.zeros_like(stats.target)
            sums = VoxelTermSums(zero, zero)
        else:
            sums = reference_voxel_term(input, target, label_map=to_onehot_y, voxel_term=voxel_term, gamma=gamma,
                                        mask=keep)
    return stats, sums, _voxel_count(stats, input, keep, to_onehot_y) if voxel_term != "none" else None


def _functorch_active() -> bool:
    """Inside ``torch.func.grad``/``vmap``/...: ``"auto"`` then takes the reference path, which functorch can
    differentiate and batch (the fused operator's autograd cannot)."""
    if torch.compiler.is_compiling():  # tracing runs the operators as they are
        return False
    return torch._C._functorch.peek_interpreter_stack() is not None


def _check_values_under_functorch(input, target, **options) -> None:
    """The value scans of ``validate=True`` inside ``torch.func`` transforms, on the plain values (the
    checking operator has no functorch rule; the scans do not need gradients)."""
    functorch = torch._C._functorch
    plain = []
    for t in (_plain(input).detach(), _plain(target).detach()):
        while functorch.is_functorch_wrapped_tensor(t):
            if functorch.is_batchedtensor(t):  # vmap: its samples become more batch entries
                bdim = functorch.maybe_get_bdim(t)
                t = functorch.get_unwrapped(t).movedim(bdim, 0).flatten(0, 1)
            else:
                t = functorch.get_unwrapped(t)
        plain.append(t)
    check_loss_values(plain[0], plain[1], **options)


def _voxel_count(stats: DiceStatistics, input: torch.Tensor, keep: torch.Tensor | None, label_map: bool) -> torch.Tensor:
    """Counted voxels per sample (``B``): for a label map the class volumes' sum (each counted voxel has one
    class in range), else the mask's count or every voxel."""
    if label_map:
        return stats.target_volume.sum(dim=1)
    if keep is None:
        return stats.target_volume.new_full((input.shape[0],), float(input[0, 0].numel()))
    return keep.reshape(keep.shape[0], -1).sum(dim=1).to(stats.target_volume.dtype)


def dice_statistics(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    to_onehot_y: bool = False,
    softmax: bool = False,
    sigmoid: bool = False,
    other_act: Callable | None = None,
    squared: bool = False,
    soft_label: bool = True,
    ignore_index: int | None = None,
    mask: torch.Tensor | None = None,
    implementation: str = "auto",
) -> DiceStatistics:
    """Per-(sample, class) sums of the activated ``input`` against ``target``, for all C channels (no checks).

    ``soft_label``: the intersection of a dense target is ``sum(min(p, g))`` (equal to ``sum(p*g)`` on
    hard targets; label maps always use ``p*g``). ``implementation``: ``"auto"`` runs the fused
    operator wherever it applies (softmax, sigmoid or no activation; not inside ``torch.func``
    transforms), else the reference; ``"fused"`` requires it; ``"reference"`` forces plain PyTorch
    autograd. A soft target that requires grad gets its gradient on every path.
    """
    stats, _, _ = loss_statistics(input, target, to_onehot_y=to_onehot_y, softmax=softmax, sigmoid=sigmoid,
                                  other_act=other_act, squared=squared, soft_label=soft_label,
                                  ignore_index=ignore_index, mask=mask, implementation=implementation)
    return stats


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
    if not _distributed():
        return stats
    zero = torch.zeros_like(stats.target)
    summed, _, _ = _all_reduce_sums(stats, VoxelTermSums(zero, zero), None)
    return summed


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sums(
    stats: DiceStatistics, sums: VoxelTermSums, count: torch.Tensor | None
) -> tuple[DiceStatistics, VoxelTermSums, torch.Tensor | None]:
    """Every per-(sample, class) sum and the voxel counts summed over processes, in one all-reduce
    (differentiable in ``I, P, F, Q``; ``G, V`` and the counts, a seventh row, carry no gradient)."""
    rows = [stats.intersection, stats.prediction, stats.target.detach(), stats.target_volume.detach(),
            sums.on_target, sums.off_target]
    if count is not None:
        rows.append(count.detach()[:, None].expand_as(stats.target).to(stats.target.dtype))
    summed = _AllReduceSum.apply(torch.stack(rows))
    return (DiceStatistics(summed[0], summed[1], summed[2].detach(), summed[3].detach()),
            VoxelTermSums(summed[4], summed[5]), None if count is None else summed[6, :, 0].detach())


class VoxelTermStatistics(NamedTuple):
    """What a compound loss's voxel term needs: its sums ``F, Q`` and the class volumes ``V`` of all
    ``C`` classes (``B x C``, not pooled), and the counted voxels per sample (``B``; None without a voxel term)."""

    sums: VoxelTermSums
    class_volume: torch.Tensor
    voxel_count: torch.Tensor | None


def scored_statistics(
    input: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    include_background: bool,
    to_onehot_y: bool,
    softmax: bool,
    sigmoid: bool,
    other_act: Callable | None,
    squared_pred: bool,
    soft_label: bool,
    batch: bool,
    ignore_index: int | None,
    validate: bool,
    implementation: str,
    distributed: bool,
    weight: torch.Tensor | None = None,
    voxel_term: str = "none",
    gamma: float = 0.0,
) -> tuple[DiceStatistics, VoxelTermStatistics]:
    """Checked statistics: the Dice sums of the scored classes, pooled for ``batch``, and what the voxel
    term needs (all classes, per sample). With ``batch`` under ``torch.distributed`` all of them are
    all-reduced (global-batch Dice and a global-mean CE)."""
    check_loss_inputs(input, target, to_onehot_y=to_onehot_y, softmax=softmax, ignore_index=ignore_index,
                      mask=mask, weight=weight, include_background=include_background)
    stats, sums, count = loss_statistics(
        input, target, to_onehot_y=to_onehot_y, softmax=softmax, sigmoid=sigmoid, other_act=other_act,
        squared=squared_pred, soft_label=soft_label, ignore_index=ignore_index, mask=mask,
        implementation=implementation, voxel_term=voxel_term, gamma=gamma,
    )
    if validate and _functorch_active():
        _check_values_under_functorch(input, target, to_onehot_y=to_onehot_y, softmax=softmax,
                                      has_activation=softmax or sigmoid or other_act is not None,
                                      ignore_index=ignore_index)
    elif validate:
        has_activation = softmax or sigmoid or other_act is not None
        checked = validated_statistics(torch.stack([*stats, *sums]), _plain(input), _plain(target), to_onehot_y,
                                       softmax, has_activation, ignore_index)
        stats, sums = DiceStatistics.from_stacked(checked), VoxelTermSums.from_stacked(checked)
    if batch and distributed and _distributed():
        stats, sums, count = _all_reduce_sums(stats, sums, count)
    term = VoxelTermStatistics(sums, stats.target_volume, count)
    return stats.select_classes(include_background).pooled(batch), term


def apply_class_weight(f: torch.Tensor, weight: torch.Tensor | None, rescale: bool) -> torch.Tensor:
    """``f`` (``N x C``) times the class weights, rescaled to average 1 when ``rescale`` (so ``mean``
    stays a weighted average in [0, 1]); a scalar (``rescale=False`` only) multiplies every class."""
    if weight is None:
        return f
    w = weight.to(f.dtype)
    if rescale:
        w = w * (w.numel() / w.sum())
    return f * w


def checked_vnet_dice_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    include_background: bool,
    to_onehot_y: bool,
    sigmoid: bool,
    softmax: bool,
    other_act: Callable | None,
    squared_pred: bool,
    soft_label: bool,
    batch: bool,
    reduction: str,
    smooth_nr: float,
    smooth_dr: float,
    weight: torch.Tensor | None,
    rescale_weight: bool,
    ignore_index: int | None,
    validate: bool,
    implementation: str,
    distributed: bool,
) -> torch.Tensor:
    """:func:`vnet_dice_loss` for options already checked (:class:`~monai_gdl.VNetDiceLoss` checks them once,
    in ``__init__``, and keeps ``weight`` as a validated buffer): no per-call option work, no device sync."""
    stats, _ = scored_statistics(
        input, target, mask, include_background=include_background, to_onehot_y=to_onehot_y, softmax=softmax,
        sigmoid=sigmoid, other_act=other_act, squared_pred=squared_pred, soft_label=soft_label, batch=batch,
        ignore_index=ignore_index, validate=validate, implementation=implementation, distributed=distributed,
        weight=weight,
    )
    return reduced_vnet_dice(stats, smooth_nr=smooth_nr, smooth_dr=smooth_dr, weight=weight,
                             rescale_weight=rescale_weight, reduction=reduction, spatial_dims=input.ndim - 2,
                             batch=batch)


def reduced_vnet_dice(
    stats: DiceStatistics,
    *,
    smooth_nr: float,
    smooth_dr: float,
    weight: torch.Tensor | None,
    rescale_weight: bool,
    reduction: str,
    spatial_dims: int,
    batch: bool,
) -> torch.Tensor:
    """The V-Net Dice loss of scored, pooled statistics: formula, class weights, reduction."""
    f = vnet_dice_from_statistics(stats, smooth_nr=smooth_nr, smooth_dr=smooth_dr)
    f = apply_class_weight(f, None if weight is None else weight.to(f.device), rescale_weight)
    return reduce_loss(f, reduction, spatial_dims=spatial_dims, batch=batch)


def checked_generalized_dice_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    include_background: bool,
    to_onehot_y: bool,
    sigmoid: bool,
    softmax: bool,
    other_act: Callable | None,
    w_type: str,
    absent_class: str,
    all_absent: str,
    normalize_weights: bool,
    squared_pred: bool,
    soft_label: bool,
    batch: bool,
    reduction: str,
    smooth_nr: float,
    smooth_dr: float,
    ignore_index: int | None,
    validate: bool,
    implementation: str,
    distributed: bool,
) -> torch.Tensor:
    """:func:`generalized_dice_loss` for options already checked (as :func:`checked_vnet_dice_loss`)."""
    stats, _ = scored_statistics(
        input, target, mask, include_background=include_background, to_onehot_y=to_onehot_y, softmax=softmax,
        sigmoid=sigmoid, other_act=other_act, squared_pred=squared_pred, soft_label=soft_label, batch=batch,
        ignore_index=ignore_index, validate=validate, implementation=implementation, distributed=distributed,
    )
    f = generalized_dice_from_statistics(
        stats, w_type=w_type, absent_class=absent_class, all_absent=all_absent, normalize_weights=normalize_weights,
        smooth_nr=smooth_nr, smooth_dr=smooth_dr,
    )
    return reduce_loss(f, reduction, spatial_dims=input.ndim - 2, batch=batch)


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
    soft_label: bool = True,
    batch: bool = False,
    reduction: str = "mean",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    weight: torch.Tensor | float | list[float] | None = None,
    rescale_weight: bool = True,
    ignore_index: int | None = None,
    mask: torch.Tensor | None = None,
    validate: bool = True,
    implementation: str = "auto",
    distributed: bool = True,
) -> torch.Tensor:
    """V-Net soft Dice loss; see :class:`monai_gdl.VNetDiceLoss` for the arguments and the math."""
    weight = class_weight_tensor(weight)
    check_loss_options(softmax=softmax, sigmoid=sigmoid, other_act=other_act, reduction=reduction,
                       smooth_nr=smooth_nr, smooth_dr=smooth_dr, weight=weight, rescale_weight=rescale_weight)
    return checked_vnet_dice_loss(
        input, target, mask, include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid,
        softmax=softmax, other_act=other_act, squared_pred=squared_pred, soft_label=soft_label, batch=batch,
        reduction=reduction, smooth_nr=float(smooth_nr), smooth_dr=float(smooth_dr), weight=weight,
        rescale_weight=rescale_weight, ignore_index=ignore_index, validate=validate, implementation=implementation,
        distributed=distributed,
    )


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
    all_absent: str = "uniform",
    normalize_weights: bool = True,
    squared_pred: bool = False,
    soft_label: bool = True,
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
    check_loss_options(softmax=softmax, sigmoid=sigmoid, other_act=other_act, reduction=reduction,
                       smooth_nr=smooth_nr, smooth_dr=smooth_dr)
    check_gdl_options(w_type=w_type, absent_class=absent_class, all_absent=all_absent)
    return checked_generalized_dice_loss(
        input, target, mask, include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid,
        softmax=softmax, other_act=other_act, w_type=w_type, absent_class=absent_class, all_absent=all_absent,
        normalize_weights=normalize_weights, squared_pred=squared_pred, soft_label=soft_label, batch=batch,
        reduction=reduction, smooth_nr=float(smooth_nr), smooth_dr=float(smooth_dr), ignore_index=ignore_index,
        validate=validate, implementation=implementation, distributed=distributed,
    )
