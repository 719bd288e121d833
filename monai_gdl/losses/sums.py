"""The volume reduced to per-(sample, class) sums: the one step of a loss that reads every voxel.

:func:`volume_sums` turns the activated input and the target into :class:`DiceStatistics` (and a
compound loss's voxel-term sums) by the fused operator of :mod:`monai_gdl.kernels`, or by the
plain-PyTorch reference (``implementation="reference"``, ``other_act``, inside ``torch.func``
transforms). :func:`scored_sums` adds the input checks, keeps the scored classes, pools the batch,
and under ``torch.distributed`` all-reduces exactly these sums (:func:`all_reduce_statistics`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from monai.data import MetaTensor

from monai_gdl.kernels import (
    DiceStatistics,
    Row,
    VoxelTermSums,
    WeightMapSums,
    accumulation_dtype,
    fused_sums,
    reference_statistics,
    reference_voxel_term,
    reference_weight_map_sums,
    rounded_labels,
)
from monai_gdl.losses.options import DiceOptions
from monai_gdl.losses.validation import LossInputError, check_loss_inputs, check_loss_values, checked_sums

__all__ = [
    "VoxelTermInputs",
    "activate",
    "all_reduce_statistics",
    "scored_sums",
    "volume_sums",
    "voxel_mask",
]


class VoxelTermInputs(NamedTuple):
    """What a compound loss's voxel term and structure term need: the voxel term's sums ``F, Q``, the class
    volumes ``V`` of all ``C`` classes (``B x C``, not pooled), the counted voxels per sample (``B``; None
    without a voxel or structure term) and the structure map's sums ``W, S`` (all classes, not pooled)."""

    sums: VoxelTermSums
    class_volume: torch.Tensor
    voxel_count: torch.Tensor | None
    map_sums: WeightMapSums | None = None


def _plain(t: Any) -> Any:
    """A plain tensor view of a MONAI ``MetaTensor`` (its ``__torch_function__`` would follow every op);
    other tensors (tracing's fake tensors included) as they are."""
    return t.as_subclass(torch.Tensor) if isinstance(t, MetaTensor) else t


def activate(
    input: torch.Tensor, *, softmax: bool = False, sigmoid: bool = False, other_act: Callable | None = None
) -> torch.Tensor:
    """Probabilities from the network output, computed in at least float32."""
    x = input.to(accumulation_dtype(input.dtype))
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
        keep = rounded_labels(target.reshape(target.shape[0], 1, -1)) != ignore_index
    if mask is not None:
        given = mask.reshape(mask.shape[0], 1, -1) != 0
        keep = given if keep is None else keep & given
    return keep


def _functorch_active() -> bool:
    """Inside ``torch.func.grad``/``vmap``/...: ``"auto"`` then takes the reference path, which functorch can
    differentiate and batch (the fused operator's autograd cannot)."""
    if torch.compiler.is_compiling():  # tracing runs the operators as they are
        return False
    return torch._C._functorch.peek_interpreter_stack() is not None


def _unwrapped(t: torch.Tensor) -> torch.Tensor:
    """The plain values under ``torch.func`` wrappers (vmap's samples become more batch entries)."""
    functorch = torch._C._functorch
    t = _plain(t).detach()
    while functorch.is_functorch_wrapped_tensor(t):
        if functorch.is_batchedtensor(t):
            bdim = functorch.maybe_get_bdim(t)
            t = functorch.get_unwrapped(t).movedim(bdim, 0).flatten(0, 1)
        else:
            t = functorch.get_unwrapped(t)
    return t


def _voxel_count(
    stats: DiceStatistics, input: torch.Tensor, keep: torch.Tensor | None, label_map: bool
) -> torch.Tensor:
    """Counted voxels per sample (``B``): for a label map the class volumes' sum (each counted voxel has one
    class in range), else the mask's count or every voxel."""
    if label_map:
        return stats.target_volume.sum(dim=1)
    if keep is None:
        return stats.target_volume.new_full((input.shape[0],), float(input[0, 0].numel()))
    return keep.reshape(keep.shape[0], -1).sum(dim=1).to(stats.target_volume.dtype)


def volume_sums(
    input: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    options: DiceOptions,
    *,
    voxel_term: str = "none",
    gamma: float = 0.0,
    weight_map: torch.Tensor | None = None,
    map_labels: bool = False,
) -> tuple[DiceStatistics, VoxelTermSums, WeightMapSums, torch.Tensor | None]:
    """Dice statistics of all C channels, the voxel term's sums, the structure map's sums and the counted
    voxels per sample (``B``; not ignored, not masked out), from one pass (no checks). Without a voxel term
    or a map their sums are zero, and without either the count is None (not computed)."""
    implementation = options.implementation
    if implementation != "reference" and _functorch_active():
        if implementation != "auto":
            raise LossInputError(
                f"implementation={implementation!r} cannot run inside torch.func transforms (grad, vmap, jacrev, ...):"
                " the fused operator's closed-form backward is not a functorch rule. Pass implementation='reference' "
                "(or 'auto', which switches to it there)."
            )
        implementation = "reference"
    input, target, mask, weight_map = _plain(input), _plain(target), _plain(mask), _plain(weight_map)
    label_map = options.to_onehot_y
    keep = voxel_mask(target, label_map=label_map, ignore_index=options.ignore_index, mask=mask)
    squared = options.squared_pred
    soft = options.soft_label and not squared and not label_map
    if options.other_act is None and implementation != "reference":
        backend = None if implementation in ("auto", "fused") else implementation
        stats, sums, map_sums = fused_sums(
            input,
            target,
            activation=options.activation,
            label_map=label_map,
            squared=squared,
            soft=soft,
            mask=keep,
            voxel_term=voxel_term,
            gamma=gamma,
            backend=backend,
            weight_map=weight_map,
            map_labels=map_labels,
        )
    else:
        probs = activate(input, softmax=options.softmax, sigmoid=options.sigmoid, other_act=options.other_act)
        stats = reference_statistics(probs, target, label_map=label_map, squared=squared, soft=soft, mask=keep)
        zero = torch.zeros_like(stats.target)
        sums, map_sums = VoxelTermSums(zero, zero), WeightMapSums(zero, zero)
        if voxel_term != "none":
            sums = reference_voxel_term(
                input, target, label_map=label_map, voxel_term=voxel_term, gamma=gamma, mask=keep
            )
        if weight_map is not None:
            map_sums = reference_weight_map_sums(probs, weight_map, map_labels=map_labels, mask=keep)
    counted = voxel_term != "none" or weight_map is not None
    return stats, sums, map_sums, _voxel_count(stats, input, keep, label_map) if counted else None


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; its gradient is again the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sums(
    stats: DiceStatistics, sums: VoxelTermSums, map_sums: WeightMapSums, count: torch.Tensor | None
) -> tuple[DiceStatistics, VoxelTermSums, WeightMapSums, torch.Tensor | None]:
    """Every per-(sample, class) sum and the voxel counts summed over processes, in one all-reduce
    (differentiable in ``I, P, F, Q, W``; ``G, V, S`` and the counts, a ninth row, carry no gradient)."""
    rows = [
        stats.intersection,
        stats.prediction,
        stats.target.detach(),
        stats.target_volume.detach(),
        sums.on_target,
        sums.off_target,
        map_sums.overlap,
        map_sums.volume.detach(),
    ]
    if count is not None:
        rows.append(count.detach()[:, None].expand_as(stats.target).to(stats.target.dtype))
    summed = _AllReduceSum.apply(torch.stack(rows))
    stats = DiceStatistics.from_stacked(summed)
    stats = stats._replace(target=stats.target.detach(), target_volume=stats.target_volume.detach())
    map_sums = WeightMapSums.from_stacked(summed)
    map_sums = map_sums._replace(volume=map_sums.volume.detach())
    count = None if count is None else summed[len(Row), :, 0].detach()
    return stats, VoxelTermSums.from_stacked(summed), map_sums, count


def all_reduce_statistics(stats: DiceStatistics) -> DiceStatistics:
    """Sum the statistics over all processes of the default group, keeping autograd.

    Makes ``batch=True`` Dice a true global-batch Dice under DistributedDataParallel: every rank
    computes the same loss from the global sums; the gradient of the all-reduce is itself an
    all-reduce, so after DDP averages gradients each rank's parameters get the exact gradient.
    """
    if not _distributed():
        return stats
    zero = torch.zeros_like(stats.target)
    summed, _, _, _ = _all_reduce_sums(stats, VoxelTermSums(zero, zero), WeightMapSums(zero, zero), None)
    return summed


def scored_sums(
    input: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    options: DiceOptions,
    *,
    weight: torch.Tensor | None = None,
    voxel_term: str = "none",
    gamma: float = 0.0,
    weight_map: torch.Tensor | None = None,
    map_labels: bool = False,
) -> tuple[DiceStatistics, VoxelTermInputs]:
    """Checked sums: the Dice statistics of the scored classes, pooled for ``batch``, and what the voxel and
    structure terms need (all classes, per sample). With ``batch`` under ``torch.distributed`` all of them
    are all-reduced (global-batch Dice and a global-mean CE). ``weight`` is only checked against the classes;
    ``weight_map`` is checked by the structure term that asks for it."""
    check_loss_inputs(
        input,
        target,
        to_onehot_y=options.to_onehot_y,
        softmax=options.softmax,
        ignore_index=options.ignore_index,
        mask=mask,
        weight=weight,
        include_background=options.include_background,
    )
    stats, sums, map_sums, count = volume_sums(
        input, target, mask, options, voxel_term=voxel_term, gamma=gamma, weight_map=weight_map, map_labels=map_labels
    )
    if options.validate:
        value_options = (options.to_onehot_y, options.softmax, options.activation != "none", options.ignore_index)
        if _functorch_active():  # the checking operator has no functorch rule; the scans need no gradient
            check_loss_values(_unwrapped(input), _unwrapped(target), *value_options)
        else:
            stacked = torch.stack([*stats, *sums, *map_sums])
            checked = checked_sums(stacked, _plain(input), _plain(target), *value_options)
            stats, sums = DiceStatistics.from_stacked(checked), VoxelTermSums.from_stacked(checked)
            map_sums = WeightMapSums.from_stacked(checked)
    if options.batch and options.distributed and _distributed():
        stats, sums, map_sums, count = _all_reduce_sums(stats, sums, map_sums, count)
    term = VoxelTermInputs(sums, stats.target_volume, count, map_sums if weight_map is not None else None)
    return stats.select_classes(options.include_background).pooled(options.batch), term
