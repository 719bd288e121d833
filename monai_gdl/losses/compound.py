"""Compound losses: a Dice-family loss plus a voxel-wise term (CE, BCE or focal), fused in one pass.

Every loss here computes its Dice statistics *and* its voxel-wise term's sums in the same fused
forward pass over the logits, and adds both gradients into one buffer in the same backward pass
(:mod:`monai_gdl.kernels.contract`): no log-softmax volume, no one-hot, no second pass. The Dice
part is exactly :class:`~monai_gdl.VNetDiceLoss` / :class:`~monai_gdl.SudreGeneralizedDiceLoss`
with the same options; the voxel term is::

    CE     PyTorch cross_entropy over all C classes (softmax), class weights and label smoothing
           as torch.nn.CrossEntropyLoss: mean over labelled voxels (weighted), or over voxels for a
           one-hot/soft target; ignore_index / mask voxels excluded.
    BCE    binary_cross_entropy_with_logits per scored channel (sigmoid), mean over elements.
    focal  MONAI FocalLoss: sigmoid focal per scored channel (use_softmax=False, MONAI's
           DiceFocalLoss and GeneralizedDiceFocalLoss), or softmax focal (use_softmax=True).

    loss = lambda_dice * dice + lambda_<term> * term

``reduction``: ``"mean"`` or ``"sum"`` (a scalar; ``"none"`` would need a volume-sized output, which
the fused passes never build). Under ``torch.distributed`` with ``batch=True`` the Dice sums and
the voxel term's sums and counts are all-reduced together, so the CE is the global-batch mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn.modules.loss import _Loss

from monai_gdl.losses.formulas import (
    cross_entropy_from_sums,
    focal_from_sums,
    generalized_dice_from_statistics,
    reduce_loss,
    softmax_focal_from_sums,
)
from monai_gdl.losses.functional import VoxelTermStatistics, reduced_vnet_dice, scored_statistics
from monai_gdl.losses.validation import (
    LossInputError,
    check_gdl_options,
    check_loss_options,
    class_weight_tensor,
)

__all__ = [
    "SudreGeneralizedDiceCELoss",
    "SudreGeneralizedDiceFocalLoss",
    "VNetDiceBCELoss",
    "VNetDiceCELoss",
    "VNetDiceFocalLoss",
]

_COMPOUND_REDUCTIONS = ("mean", "sum")


def _check_lambdas(**lambdas: float) -> None:
    for name, value in lambdas.items():
        if not (math.isfinite(value) and value >= 0):
            raise LossInputError(f"{name}={value}: a term's weight must be a finite number >= 0.")
    if all(value == 0 for value in lambdas.values()):
        names = " and ".join(f"{name}=0" for name in lambdas)
        raise LossInputError(f"{names}: the loss would be 0 whatever the prediction; give at least one term a weight.")


def _check_compound_reduction(reduction: str) -> None:
    if reduction not in _COMPOUND_REDUCTIONS:
        raise LossInputError(
            f"reduction={reduction!r}: a compound loss returns a scalar ('mean' or 'sum'); per-voxel terms would "
            "need a volume-sized output, which the fused passes never build. For per-class Dice values use "
            "VNetDiceLoss(reduction='none')."
        )


def _check_focal_options(gamma: float, alpha: float | None) -> None:
    if not (math.isfinite(gamma) and gamma >= 0):
        raise LossInputError(f"gamma={gamma}: the focal exponent must be a finite number >= 0 (0 gives plain BCE/CE).")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise LossInputError(f"alpha={alpha}: the focal balance must lie in [0, 1] (or be None for no balancing).")


def _check_activation(name: str, softmax: bool, sigmoid: bool) -> None:
    if softmax and sigmoid:
        raise LossInputError(f"{name}: softmax=True and sigmoid=True; choose one.")
    if not (softmax or sigmoid):
        raise LossInputError(
            f"{name} takes logits: pass softmax=True (one class per voxel) or sigmoid=True (multi-label); the "
            "voxel-wise term is defined on logits, not on probabilities."
        )


def _check_class_weight(weight: torch.Tensor | None, expected: int, what: str) -> None:
    if weight is not None and weight.numel() != expected:
        raise LossInputError(f"weight has {weight.numel()} entries but {what} has {expected}; give one weight each.")


class _CompoundLoss(_Loss):
    """Options shared by every compound loss (attributes, as in the Dice losses) and the one fused call."""

    voxel_term = "none"

    def __init__(
        self,
        *,
        include_background: bool,
        to_onehot_y: bool,
        sigmoid: bool,
        softmax: bool,
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
        gamma: float = 0.0,
    ) -> None:
        super().__init__(reduction=reduction)
        check_loss_options(softmax=softmax, sigmoid=sigmoid, other_act=None, reduction=reduction,
                           smooth_nr=float(smooth_nr), smooth_dr=float(smooth_dr))
        _check_compound_reduction(reduction)
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.sigmoid = sigmoid
        self.softmax = softmax
        self.squared_pred = squared_pred
        self.soft_label = soft_label
        self.batch = batch
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.ignore_index = ignore_index
        self.validate = validate
        self.implementation = implementation
        self.distributed = distributed
        self.gamma = float(gamma)

    def _statistics(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
                    dice_weight: torch.Tensor | None = None):
        return scored_statistics(
            input, target, mask, include_background=self.include_background, to_onehot_y=self.to_onehot_y,
            softmax=self.softmax, sigmoid=self.sigmoid, other_act=None, squared_pred=self.squared_pred,
            soft_label=self.soft_label, batch=self.batch, ignore_index=self.ignore_index, validate=self.validate,
            implementation=self.implementation, distributed=self.distributed, weight=dice_weight,
            voxel_term=self.voxel_term, gamma=self.gamma,
        )

    def _vnet_dice(self, stats, weight: torch.Tensor | None, rescale_weight: bool, spatial_dims: int) -> torch.Tensor:
        return reduced_vnet_dice(stats, smooth_nr=self.smooth_nr, smooth_dr=self.smooth_dr, weight=weight,
                                 rescale_weight=rescale_weight, reduction=self.reduction, spatial_dims=spatial_dims,
                                 batch=self.batch)

    def _generalized_dice(self, stats, spatial_dims: int) -> torch.Tensor:
        f = generalized_dice_from_statistics(
            stats, w_type=self.w_type, absent_class=self.absent_class, all_absent=self.all_absent,
            normalize_weights=self.normalize_weights, smooth_nr=self.smooth_nr, smooth_dr=self.smooth_dr,
        )
        return reduce_loss(f, self.reduction, spatial_dims=spatial_dims, batch=self.batch)

    def _register_class_weight(self, weight: Sequence[float] | torch.Tensor | None,
                               rescale_weight: bool = False) -> None:
        """``weight`` as the ``class_weight`` buffer: 1-D, finite, >= 0, not all zero; ``rescale_weight``
        (kept as an attribute) rescales the Dice part's weights to average 1, the voxel term's never are."""
        weight = class_weight_tensor(weight)
        if weight is not None:
            if weight.ndim != 1:
                raise LossInputError(f"weight={weight.tolist()}: give one weight per class (a 1-D sequence).")
            check_loss_options(softmax=False, sigmoid=False, other_act=None, reduction="mean", smooth_nr=0.0,
                               smooth_dr=0.0, weight=weight, rescale_weight=rescale_weight)
        self.rescale_weight = rescale_weight
        self.class_weight: torch.Tensor | None
        self.register_buffer("class_weight", weight)

    def _set_gdl_options(self, w_type: str, absent_class: str, all_absent: str, normalize_weights: bool) -> None:
        check_gdl_options(w_type=w_type, absent_class=absent_class, all_absent=all_absent)
        self.w_type = w_type
        self.absent_class = absent_class
        self.all_absent = all_absent
        self.normalize_weights = normalize_weights


class _CrossEntropyMixin:
    """The softmax cross-entropy term (label smoothing, class weights over all C channels)."""

    voxel_term = "softmax"

    def _check_ce_options(self, label_smoothing: float) -> None:
        if self.sigmoid or not self.softmax:
            raise LossInputError(
                f"{type(self).__name__}: cross-entropy is the softmax loss (one class per voxel), so it needs "
                f"softmax=True (got softmax={self.softmax}, sigmoid={self.sigmoid}). For sigmoid / multi-label "
                "targets use VNetDiceBCELoss."
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise LossInputError(f"label_smoothing={label_smoothing}: it must lie in [0, 1).")
        self.label_smoothing = float(label_smoothing)

    def _cross_entropy(self, term: VoxelTermStatistics, weight: torch.Tensor | None) -> torch.Tensor:
        return cross_entropy_from_sums(term.sums, term.class_volume, term.voxel_count, label_map=self.to_onehot_y,
                                       weight=weight, label_smoothing=self.label_smoothing, reduction=self.reduction)

    @staticmethod
    def _check_channels(name: str, input: torch.Tensor) -> None:
        if input.ndim >= 2 and input.shape[1] == 1:
            raise LossInputError(
                f"{name}: input has 1 channel; cross-entropy over one class is always 0 (MONAI's DiceCELoss silently "
                "switches to BCE there). For one foreground channel use VNetDiceBCELoss (sigmoid), or output C >= 2 "
                "channels."
            )


class VNetDiceCELoss(_CrossEntropyMixin, _CompoundLoss):
    r"""V-Net Dice + cross-entropy, fused: ``lambda_dice * VNetDiceLoss + lambda_ce * CE`` (MONAI's ``DiceCELoss``).

    Dice part: :class:`~monai_gdl.VNetDiceLoss` with the same options (``squared_pred=True`` by default;
    ``squared_pred=False, include_background=False`` is nnU-Net's ``DC_and_CE_loss`` Dice). CE part:
    ``torch.nn.CrossEntropyLoss(weight, label_smoothing)`` over all ``C`` classes (``include_background``
    affects only the Dice), with ``ignore_index`` / ``mask`` voxels excluded from both::

        CE = [(1 - eps) sum_v w_{y_v} (-log p_{y_v}) + eps / C sum_v sum_c w_c (-log p_c)] / sum_v w_{y_v}

    (label map; for a one-hot/soft target the probability-target form divided by the voxel count).
    Output: a scalar (``reduction`` ``"mean"`` or ``"sum"``; ``"sum"`` sums both parts as MONAI).

    Args:
        include_background, to_onehot_y, squared_pred, soft_label, batch, smooth_nr, smooth_dr,
        rescale_weight, ignore_index, validate, implementation, distributed: as :class:`~monai_gdl.VNetDiceLoss`.
        softmax: must be True (cross-entropy is a softmax loss); ``sigmoid=True`` is refused with a
            pointer to :class:`VNetDiceBCELoss`.
        weight: one weight per channel (all ``C``), as MONAI's ``DiceCELoss``: the CE's class
            weights, and the Dice part's (without class 0 when ``include_background=False``).
        lambda_dice, lambda_ce: the parts' weights, >= 0, not both 0.
        label_smoothing: in [0, 1), as ``torch.nn.CrossEntropyLoss``.
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = True,
        squared_pred: bool = True,
        soft_label: bool = True,
        batch: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        weight: Sequence[float] | torch.Tensor | None = None,
        rescale_weight: bool = True,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        label_smoothing: float = 0.0,
        ignore_index: int | None = None,
        validate: bool = True,
        implementation: str = "auto",
        distributed: bool = True,
    ) -> None:
        super().__init__(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid,
                         softmax=softmax, squared_pred=squared_pred, soft_label=soft_label, batch=batch,
                         reduction=reduction, smooth_nr=smooth_nr, smooth_dr=smooth_dr, ignore_index=ignore_index,
                         validate=validate, implementation=implementation, distributed=distributed)
        self._check_ce_options(label_smoothing)
        self._register_class_weight(weight, rescale_weight)
        _check_lambdas(lambda_dice=float(lambda_dice), lambda_ce=float(lambda_ce))
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check_channels(type(self).__name__, input)
        weight = self.class_weight
        _check_class_weight(weight, input.shape[1], f"input (shape {tuple(input.shape)}) channels")
        dice_weight = weight if weight is None or self.include_background else weight[1:]
        stats, term = self._statistics(input, target, mask, dice_weight)
        dice = self._vnet_dice(stats, dice_weight, self.rescale_weight, input.ndim - 2)
        return self.lambda_dice * dice + self.lambda_ce * self._cross_entropy(term, weight)


class SudreGeneralizedDiceCELoss(_CrossEntropyMixin, _CompoundLoss):
    r"""Generalized Dice + cross-entropy, fused: ``lambda_gdl * SudreGeneralizedDiceLoss + lambda_ce * CE``.

    GDL part: :class:`~monai_gdl.SudreGeneralizedDiceLoss` with the same options; CE part as in
    :class:`VNetDiceCELoss`, with ``weight`` (one per channel) used by the CE only (GDL weighs classes
    by their volume). Output: a scalar (``"mean"`` or ``"sum"``).
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = True,
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
        weight: Sequence[float] | torch.Tensor | None = None,
        lambda_gdl: float = 1.0,
        lambda_ce: float = 1.0,
        label_smoothing: float = 0.0,
        ignore_index: int | None = None,
        validate: bool = True,
        implementation: str = "auto",
        distributed: bool = True,
    ) -> None:
        super().__init__(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid,
                         softmax=softmax, squared_pred=squared_pred, soft_label=soft_label, batch=batch,
                         reduction=reduction, smooth_nr=smooth_nr, smooth_dr=smooth_dr, ignore_index=ignore_index,
                         validate=validate, implementation=implementation, distributed=distributed)
        self._check_ce_options(label_smoothing)
        self._set_gdl_options(w_type, absent_class, all_absent, normalize_weights)
        self._register_class_weight(weight)
        _check_lambdas(lambda_gdl=float(lambda_gdl), lambda_ce=float(lambda_ce))
        self.lambda_gdl = float(lambda_gdl)
        self.lambda_ce = float(lambda_ce)

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check_channels(type(self).__name__, input)
        _check_class_weight(self.class_weight, input.shape[1], f"input (shape {tuple(input.shape)}) channels")
        stats, term = self._statistics(input, target, mask)
        gdl = self._generalized_dice(stats, input.ndim - 2)
        return self.lambda_gdl * gdl + self.lambda_ce * self._cross_entropy(term, self.class_weight)


class _FocalTermMixin:
    """The focal term (MONAI's FocalLoss, sigmoid per scored channel or softmax), BCE at gamma 0 without alpha."""

    def _set_focal_options(self, softmax: bool, sigmoid: bool, gamma: float, alpha: float | None,
                           use_softmax: bool) -> None:
        name = type(self).__name__
        _check_activation(name, softmax, sigmoid)
        _check_focal_options(float(gamma), alpha)
        if use_softmax and not softmax:
            raise LossInputError(f"{name}: use_softmax=True (softmax focal) needs softmax=True for the Dice part too.")
        self.voxel_term = "softmax" if use_softmax else "sigmoid"
        self.use_softmax = use_softmax
        self.alpha = None if alpha is None else float(alpha)

    def _focal(self, term: VoxelTermStatistics, weight: torch.Tensor | None, alpha: float | None) -> torch.Tensor:
        if self.voxel_term == "softmax":
            return softmax_focal_from_sums(term.sums, term.voxel_count, include_background=self.include_background,
                                           alpha=alpha, weight=weight, reduction=self.reduction)
        return focal_from_sums(term.sums.select_classes(self.include_background), term.voxel_count, alpha=alpha,
                               weight=weight, reduction=self.reduction)


class VNetDiceBCELoss(_FocalTermMixin, _CompoundLoss):
    r"""V-Net Dice + binary cross-entropy for sigmoid (multi-label / region) outputs, fused (nnU-Net's ``DC_and_BCE_loss``).

    ``lambda_dice * VNetDiceLoss(sigmoid=True) + lambda_ce * BCE``, with ``BCE`` the mean of
    ``binary_cross_entropy_with_logits`` over every scored element (``B x C' x spatial``, masked
    voxels excluded); ``weight`` (one per scored channel) weighs both parts' channels. With
    ``squared_pred=False`` and ``smooth_nr = smooth_dr = 1e-5`` the Dice part is nnU-Net's
    ``MemoryEfficientSoftDiceLoss(apply_nonlin=sigmoid)`` (plus 1: nnU-Net returns ``-Dice``).
    Output: a scalar (``"mean"`` or ``"sum"``, ``"sum"`` as MONAI's FocalLoss: mean over space, sum
    over samples and channels).

    Args: as :class:`VNetDiceCELoss` (``sigmoid`` must be True; ``label_smoothing`` does not apply).
    """

    voxel_term = "sigmoid"

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = True,
        softmax: bool = False,
        squared_pred: bool = True,
        soft_label: bool = True,
        batch: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        weight: Sequence[float] | torch.Tensor | None = None,
        rescale_weight: bool = True,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        ignore_index: int | None = None,
        validate: bool = True,
        implementation: str = "auto",
        distributed: bool = True,
    ) -> None:
        super().__init__(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid,
                         softmax=softmax, squared_pred=squared_pred, soft_label=soft_label, batch=batch,
                         reduction=reduction, smooth_nr=smooth_nr, smooth_dr=smooth_dr, ignore_index=ignore_index,
                         validate=validate, implementation=implementation, distributed=distributed)
        if softmax or not sigmoid:
            raise LossInputError(
                f"VNetDiceBCELoss is the sigmoid (multi-label) compound and needs sigmoid=True (got softmax={softmax}, "
                f"sigmoid={sigmoid}); for one class per voxel with softmax use VNetDiceCELoss."
            )
        self._register_class_weight(weight, rescale_weight)
        _check_lambdas(lambda_dice=float(lambda_dice), lambda_ce=float(lambda_ce))
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        stats, term = self._statistics(input, target, mask, self.class_weight)
        dice = self._vnet_dice(stats, self.class_weight, self.rescale_weight, input.ndim - 2)
        return self.lambda_dice * dice + self.lambda_ce * self._focal(term, self.class_weight, None)


class VNetDiceFocalLoss(_FocalTermMixin, _CompoundLoss):
    r"""V-Net Dice + focal loss, fused: ``lambda_dice * VNetDiceLoss + lambda_focal * FocalLoss`` (MONAI's ``DiceFocalLoss``).

    Focal part: MONAI's ``FocalLoss`` over the scored channels, ``alpha_t (1 - p_t)^gamma bce`` per
    element with the sigmoid of each channel (MONAI's ``DiceFocalLoss`` does this whatever the Dice
    activation, ``softmax=True`` included), or with ``use_softmax=True`` the softmax focal
    ``-alpha_c (1 - p_c)^gamma log p_c`` at the target class (needs ``softmax=True``; the softmax
    spans every class, also without background). Mean over every scored element (``"mean"``), or
    MONAI's ``"sum"`` (mean over space, summed over samples and channels). ``weight`` (one per scored
    channel) weighs the Dice part's classes and the focal part's channels, as MONAI.

    Args:
        include_background, to_onehot_y, sigmoid, softmax, squared_pred, soft_label, batch, reduction,
        smooth_nr, smooth_dr, weight, rescale_weight, ignore_index, validate, implementation,
        distributed: as :class:`VNetDiceCELoss` (``softmax`` or ``sigmoid`` for the Dice part).
        gamma: focal exponent >= 0 (0: BCE / CE).
        alpha: focal balance in [0, 1] or None (MONAI).
        lambda_dice, lambda_focal: the parts' weights, >= 0, not both 0.
        use_softmax: softmax focal instead of MONAI DiceFocalLoss's sigmoid focal.
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        squared_pred: bool = True,
        soft_label: bool = True,
        batch: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        gamma: float = 2.0,
        alpha: float | None = None,
        weight: Sequence[float] | torch.Tensor | None = None,
        rescale_weight: bool = True,
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
        use_softmax: bool = False,
        ignore_index: int | None = None,
        validate: bool = True,
        implementation: str = "auto",
        distributed: bool = True,
    ) -> None:
        super().__init__(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid,
                         softmax=softmax, squared_pred=squared_pred, soft_label=soft_label, batch=batch,
                         reduction=reduction, smooth_nr=smooth_nr, smooth_dr=smooth_dr, ignore_index=ignore_index,
                         validate=validate, implementation=implementation, distributed=distributed, gamma=gamma)
        self._set_focal_options(softmax, sigmoid, gamma, alpha, use_softmax)
        self._register_class_weight(weight, rescale_weight)
        _check_lambdas(lambda_dice=float(lambda_dice), lambda_focal=float(lambda_focal))
        self.lambda_dice = float(lambda_dice)
        self.lambda_focal = float(lambda_focal)

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        stats, term = self._statistics(input, target, mask, self.class_weight)
        dice = self._vnet_dice(stats, self.class_weight, self.rescale_weight, input.ndim - 2)
        return self.lambda_dice * dice + self.lambda_focal * self._focal(term, self.class_weight, self.alpha)


class SudreGeneralizedDiceFocalLoss(_FocalTermMixin, _CompoundLoss):
    r"""Generalized Dice + focal loss, fused: ``lambda_gdl * SudreGeneralizedDiceLoss + lambda_focal * FocalLoss``
    (MONAI's ``GeneralizedDiceFocalLoss``).

    GDL part: :class:`~monai_gdl.SudreGeneralizedDiceLoss` with the same options; focal part as in
    :class:`VNetDiceFocalLoss`, ``weight`` (one per scored channel) used by the focal part only.
    Output: a scalar (``"mean"`` or ``"sum"``).
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
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
        gamma: float = 2.0,
        alpha: float | None = None,
        weight: Sequence[float] | torch.Tensor | None = None,
        lambda_gdl: float = 1.0,
        lambda_focal: float = 1.0,
        use_softmax: bool = False,
        ignore_index: int | None = None,
        validate: bool = True,
        implementation: str = "auto",
        distributed: bool = True,
    ) -> None:
        super().__init__(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid,
                         softmax=softmax, squared_pred=squared_pred, soft_label=soft_label, batch=batch,
                         reduction=reduction, smooth_nr=smooth_nr, smooth_dr=smooth_dr, ignore_index=ignore_index,
                         validate=validate, implementation=implementation, distributed=distributed, gamma=gamma)
        self._set_focal_options(softmax, sigmoid, gamma, alpha, use_softmax)
        self._set_gdl_options(w_type, absent_class, all_absent, normalize_weights)
        self._register_class_weight(weight)
        _check_lambdas(lambda_gdl=float(lambda_gdl), lambda_focal=float(lambda_focal))
        self.lambda_gdl = float(lambda_gdl)
        self.lambda_focal = float(lambda_focal)

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        n_scored = input.shape[1] - (0 if self.include_background else 1)
        _check_class_weight(self.class_weight, n_scored, "the scored classes")
        stats, term = self._statistics(input, target, mask)
        gdl = self._generalized_dice(stats, input.ndim - 2)
        return self.lambda_gdl * gdl + self.lambda_focal * self._focal(term, self.class_weight, self.alpha)
