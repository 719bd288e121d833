"""``torch.nn.Module`` losses wrapping :mod:`monai_gdl.functional`, with MONAI's argument names."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn.modules.loss import _Loss

from monai_gdl import functional
from monai_gdl.validation import check_gdl_options, check_loss_options

__all__ = ["SudreGeneralizedDiceLoss", "VNetDiceLoss"]


class _StatisticsLoss(_Loss):
    """Checks the options once and forwards them, with the tensors, to a functional loss."""

    def __init__(self, loss_fn: Callable[..., torch.Tensor], options: dict) -> None:
        options = {k: v for k, v in options.items() if k not in ("self", "__class__")}
        super().__init__(reduction=options["reduction"])
        check_loss_options(**{k: options[k] for k in ("softmax", "sigmoid", "other_act", "reduction", "smooth_nr", "smooth_dr")})
        if "w_type" in options:
            check_gdl_options(w_type=options["w_type"], absent_class=options["absent_class"])
        options["smooth_nr"], options["smooth_dr"] = float(options["smooth_nr"]), float(options["smooth_dr"])
        self.loss_fn = loss_fn
        self.options = options

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.loss_fn(input, target, mask=mask, **self.options)


class VNetDiceLoss(_StatisticsLoss):
    r"""Soft Dice loss of V-Net (Milletari et al. 2016), squared denominators by default.

    For every sample ``b`` and class ``c`` (sums over the spatial axes, masked voxels skipped)::

        D[b, c] = (2 * sum(p * g) + smooth_nr) / (sum(p^k) + sum(g^k) + smooth_dr),  k = 2 if squared_pred else 1
        f[b, c] = 1 - D[b, c]

    ``p`` is the input after the activation, ``g`` the target. With ``batch=True`` the sums also run
    over the batch before the ratio (one Dice per class, ``N = 1``). The Dice of each class is
    *averaged* over classes, never summed, so the loss lies in [0, 1] for probabilities and
    targets in [0, 1] (``2pg <= p^2 + g^2`` and ``pg <= min(p, g)``).

    Output by ``reduction``: ``"mean"`` a scalar, the (weighted) mean of ``f`` over samples and classes;
    ``"sum"`` a scalar, the sum of ``f``; ``"none"`` ``f`` itself, shape ``N x C'`` where ``N = B``
    (or 1 with ``batch=True``) and ``C'`` the scored classes (``C - 1`` without background).

    Args:
        include_background: score class 0; if False it is dropped *after* the activation.
        to_onehot_y: the target is a label map ``B x 1 x spatial`` of class indices (int or float);
            it is never expanded to a float one-hot tensor.
        sigmoid: apply a sigmoid (independent, multi-label classes).
        softmax: apply a softmax over channels (exactly one class per voxel).
        other_act: any other callable activation (runs the reference path).
        squared_pred: square ``p`` and ``g`` in the denominator (V-Net). False gives the plain Dice
            (``MONAI DiceLoss`` default).
        batch: pool the sums over the batch before the ratio. Under DistributedDataParallel the sums
            are also all-reduced over processes (``distributed``), so it is the global-batch Dice.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        smooth_nr, smooth_dr: added to numerator and denominator; ``smooth_nr <= smooth_dr`` keeps an
            empty, correctly empty class at loss 0 instead of below it.
        weight: per-class weights (one per scored class, or a scalar). They are rescaled to average 1,
            so ``"mean"`` is a weighted average that stays in [0, 1] (MONAI multiplies without
            rescaling, which equals this when the weights already average 1).
        ignore_index: label value whose voxels are excluded from every sum (label-map targets).
        validate: run :mod:`monai_gdl.validation` on every call (cheap, chunked); False skips it.
        implementation: ``"auto"`` (fused streaming kernel where it applies), ``"fused"`` or
            ``"reference"`` (plain PyTorch; for testing).
        distributed: with ``batch=True``, all-reduce the sums when ``torch.distributed`` is initialised.

    ``forward(input, target, mask=None)``: ``input`` ``B x C x spatial`` logits (or probabilities
    without activation), any float dtype (statistics accumulate in float32 under AMP); ``mask``
    ``B x 1 x spatial``, nonzero = voxel counts.
    """

    def __init__(
        self,
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
        weight: Sequence[float] | float | torch.Tensor | None = None,
        ignore_index: int | None = None,
        validate: bool = True,
        implementation: str = "auto",
        distributed: bool = True,
    ) -> None:
        super().__init__(functional.vnet_dice_loss, locals())


class SudreGeneralizedDiceLoss(_StatisticsLoss):
    r"""Generalized Dice loss (Sudre et al. 2017): one overlap score over all classes, class-weighted.

    Per sample ``b`` (or once for the pooled batch with ``batch=True``), sums over the spatial axes::

        V_c = sum(g_c),   w_c = 1 / V_c^2 (square) | 1 / V_c (simple) | 1 (uniform)
        GDL[b] = 1 - (2 * sum_c w_c * sum(p_c * g_c) + smooth_nr)
                     / (sum_c w_c * (sum(p_c^k) + sum(g_c^k)) + smooth_dr)      k = 2 if squared_pred else 1

    The loss lies in [0, 1]. Output by ``reduction``: ``"mean"``/``"sum"`` a scalar over samples;
    ``"none"`` shape ``N x 1`` (``N = B``, or 1 with ``batch=True``).

    **Absent classes.** A class missing from the target (``V_c = 0``) has weight ``1/0``. The policy
    is explicit (``absent_class``): ``"max"`` (default, as MONAI and NiftyNet) gives it the largest
    finite weight of its row, so predicting a class that is not there costs as much as missing the
    rarest present one; ``"zero"`` ignores the class (its false positives then cost nothing). A row
    with *every* class absent uses uniform weights, so false positives still get a gradient (MONAI
    returns a constant 0 there). Weights never become inf or NaN.

    **Weight scale.** ``normalize_weights=True`` (default) divides the weights of each row by their
    sum. The ratio does not change, but ``smooth_nr``/``smooth_dr`` then act in voxel units: with raw
    ``1/V^2`` weights a class of 10^5 voxels has ``w * I ~ 1e-5``, the size of the smoothing, which
    then biases the loss. ``normalize_weights=False`` reproduces MONAI's ``GeneralizedDiceLoss``.

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act, batch, reduction, smooth_nr,
        smooth_dr, ignore_index, validate, implementation, distributed: as in :class:`VNetDiceLoss`.
        w_type: ``"square"`` (default, Sudre et al.), ``"simple"`` or ``"uniform"``.
        absent_class: ``"max"`` or ``"zero"``, see above.
        normalize_weights: rescale each row's weights to sum 1, see above.
        squared_pred: square ``p`` and ``g`` in the denominator (off by default, as in the paper).
    """

    def __init__(
        self,
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
        validate: bool = True,
        implementation: str = "auto",
        distributed: bool = True,
    ) -> None:
        super().__init__(functional.generalized_dice_loss, locals())
