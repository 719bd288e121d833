"""``torch.nn.Module`` losses with MONAI's argument names, on the one forward of :mod:`.functional`.

:class:`DiceFamilyLoss` is the base of every loss in the package: a subclass names its recipe
(:class:`~monai_gdl.losses.terms.LossKind`: Dice term, voxel term, defaults), from which its
constructor's signature is derived. The options are checked once, in ``__init__``, kept as one
frozen object (``loss.options``) and mirrored as plain attributes with MONAI's names; setting an
attribute checks it again. ``class_weight`` is a registered buffer (as in MONAI's ``DiceLoss``: it
follows ``.to(device)`` and is in ``state_dict()``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.modules.loss import _Loss

from monai_gdl.losses.functional import FOCAL_TVERSKY, GENERALIZED_DICE, TVERSKY, VNET_DICE, compute_loss
from monai_gdl.losses.terms import LossKind, LossOptions

__all__ = ["DiceFamilyLoss", "FocalTverskyLoss", "SalehiTverskyLoss", "SudreGeneralizedDiceLoss", "VNetDiceLoss"]


class DiceFamilyLoss(_Loss):
    """A Dice-family loss: options from :attr:`kind`'s signature, ``forward(input, target, mask=None)``."""

    kind: ClassVar[LossKind]
    options: LossOptions
    class_weight: torch.Tensor | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            cls.__signature__ = cls.kind.signature  # type: ignore[attr-defined]
            cls._option_names = frozenset(cls.kind.signature.parameters) - {"weight"}

    _option_names: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        options, weight = self.kind.build(*args, **kwargs)
        nn.Module.__init__(self)  # not _Loss.__init__: ``reduction`` is an option like the others
        self.register_buffer("class_weight", weight)
        self._use(options)

    def _use(self, options: LossOptions) -> None:
        self.__dict__["options"] = options
        self.__dict__.update({k: v for k, v in options.values().items() if k in self._option_names})

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._option_names and "options" in self.__dict__:
            self._use(self.options.replace(**{name: value}))
        else:
            super().__setattr__(name, value)

    def extra_repr(self) -> str:
        defaults = self.kind.signature.parameters
        changed = {
            k: v
            for k, v in self.options.values().items()
            if k in self._option_names and defaults[k].default is not v and defaults[k].default != v
        }
        return ", ".join(f"{k}={v!r}" for k, v in changed.items())

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return compute_loss(self.options, self.class_weight, input, target, mask)


class VNetDiceLoss(DiceFamilyLoss):
    r"""Soft Dice loss of V-Net (Milletari et al. 2016), squared denominators by default.

    For every sample ``b`` and class ``c`` (sums over the spatial axes, masked voxels skipped)::

        D[b, c] = (2 * I + smooth_nr) / (sum(p^k) + sum(g^k) + smooth_dr),  k = 2 if squared_pred else 1
        I = sum(p * g)               (squared_pred=True, label maps, or soft_label=False)
        I = sum(min(p, g))           (squared_pred=False with a one-hot/soft target and soft_label=True)
        f[b, c] = 1 - D[b, c]

    ``p`` is the input after the activation, ``g`` the target. ``min(p, g) = (p + g - |p - g|) / 2``
    is MONAI's ``soft_label=True`` form: it equals ``p * g`` on hard targets, and makes ``p == g`` the
    minimum (loss 0 with ``smooth_nr == smooth_dr``) for soft ones, where ``2 sum(p g) / (sum p + sum g)``
    is not. The squared denominator needs no such form: ``sum p^2 + sum g^2 >= 2 sum(p g)``, equal
    exactly at ``p == g``. With ``batch=True`` the sums also run over the batch before the ratio (one
    Dice per class, ``N = 1``). The Dice of each class is *averaged* over classes, never summed, so the
    loss lies in [0, 1] for probabilities and targets in [0, 1].

    Output by ``reduction``: ``"mean"`` a scalar, the (weighted) mean of ``f`` over samples and classes;
    ``"sum"`` a scalar, the sum of ``f``; ``"none"`` ``f`` in MONAI's broadcastable shape,
    ``B x C' x 1 x ... x 1`` (one 1 per spatial axis; ``C'`` the scored classes, ``C - 1`` without
    background), or ``C' x 1 x ... x 1`` with ``batch=True`` (as MONAI's ``DiceLoss``).

    Args:
        include_background: score class 0; if False it is dropped *after* the activation.
        to_onehot_y: the target is a label map ``B x 1 x spatial`` of class indices (int or float);
            it is never expanded to a float one-hot tensor. Float labels are read as the nearest integer
            (halves up) on every path, so one stored a float step off (1.0000001) is still its class;
            ``validate=True`` refuses labels that are not integers at all (1.5: interpolated labels).
        sigmoid: apply a sigmoid (independent, multi-label classes).
        softmax: apply a softmax over channels (exactly one class per voxel).
        other_act: any other callable activation (runs the reference path).
        squared_pred: square ``p`` and ``g`` in the denominator (V-Net). False gives the plain Dice
            (``MONAI DiceLoss`` default).
        soft_label: the ``min(p, g)`` intersection for one-hot/soft targets with the plain
            denominator (default True; MONAI's default is False, its original product form, whose
            minimum for a soft target is not at ``p == g``). No effect on hard targets' values.
        batch: pool the sums over the batch before the ratio. Under DistributedDataParallel the sums
            are also all-reduced over processes (``distributed``), so it is the global-batch Dice.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        smooth_nr, smooth_dr: added to numerator and denominator; ``smooth_nr <= smooth_dr`` keeps an
            empty, correctly empty class at loss 0 instead of below it.
        weight: one weight per scored class. With ``rescale_weight`` (default) they are rescaled to
            average 1, so ``"mean"`` is a weighted average in [0, 1] (a scalar is refused: it would do
            nothing); ``rescale_weight=False`` multiplies ``f`` by them as given, a scalar by every
            class (MONAI's meaning).
        rescale_weight: see ``weight``.
        jaccard: score ``1 - IoU`` instead (MONAI's ``jaccard=True``): the denominator becomes
            ``2 * (sum(p^k) + sum(g^k) - I) + smooth_dr``, so
            ``f = 1 - (2 I + smooth_nr) / (2 (P + G - I) + smooth_dr)``;
            with the soft-label intersection ``IoU = sum min(p, g) / sum max(p, g)``, 1 only at ``p == g``.
        ignore_index: label value whose voxels are excluded from every sum (label-map targets).
        validate: scan the values on every call (labels in range, one-hot targets in [0, 1], NaN/inf;
            chunked, cheap); False skips only these scans, never the shape and dtype checks.
        implementation: ``"auto"`` (the fused operator where it applies, on the process's backend,
            :func:`monai_gdl.set_backend`), ``"fused"`` (require it), ``"reference"`` (plain PyTorch
            autograd; for testing and double backward) or a backend name (``"native"``, ``"triton"``,
            ``"compile"``, ``"eager"``: the fused operator on that backend, for this loss).
        distributed: with ``batch=True``, all-reduce the sums when ``torch.distributed`` is initialised.

    ``forward(input, target, mask=None)``: ``input`` ``B x C x spatial`` logits (or probabilities
    without activation), any float dtype (statistics accumulate in float32 under AMP); ``mask``
    ``B x 1 x spatial``, nonzero = voxel counts.

    Boolean options take ``True``/``False`` only (a string such as ``"false"`` is refused: it is truthy).
    Options are plain attributes; setting one (``loss.batch = True``) checks it again.

    Example:
        >>> import torch
        >>> from monai_gdl import VNetDiceLoss
        >>> loss = VNetDiceLoss(softmax=True, to_onehot_y=True)
        >>> logits = torch.zeros(1, 2, 4, 4, requires_grad=True)  # p = 0.5 everywhere
        >>> labels = torch.zeros(1, 1, 4, 4, dtype=torch.long)
        >>> value = loss(logits, labels)  # class 0: 1 - 16 / (4 + 16), class 1: 1 - 0 / 4
        >>> round(value.item(), 4)
        0.6
        >>> value.backward(); logits.grad.shape
        torch.Size([1, 2, 4, 4])
    """

    kind = VNET_DICE


class SudreGeneralizedDiceLoss(DiceFamilyLoss):
    r"""Generalized Dice loss (Sudre et al. 2017): one overlap score over all classes, class-weighted.

    Per sample ``b`` (or once for the pooled batch with ``batch=True``), sums over the spatial axes::

        V_c = sum(g_c),   w_c = 1 / V_c^2 (square) | 1 / V_c (simple) | 1 (uniform)
        GDL[b] = 1 - (2 * sum_c w_c * I_c + smooth_nr)
                     / (sum_c w_c * (sum(p_c^k) + sum(g_c^k)) + smooth_dr)      k = 2 if squared_pred else 1

    with ``I_c`` as in :class:`VNetDiceLoss` (``sum(min(p, g))`` for one-hot/soft targets with the
    plain denominator, MONAI's ``soft_label=True``; ``sum(p * g)`` otherwise). The loss lies in
    [0, 1]. Output by ``reduction``: ``"mean"``/``"sum"`` a scalar over samples; ``"none"`` MONAI's
    shape, ``B x 1 x 1 x ... x 1`` (one 1 per spatial axis), or ``1 x 1 x ... x 1`` with ``batch=True``.

    **Absent classes.** A class missing from the target (``V_c = 0``) has weight ``1/0``. The policy
    is explicit (``absent_class``): ``"max"`` (default, as MONAI and NiftyNet) gives it the largest
    finite weight of its row, so predicting a class that is not there costs as much as missing the
    rarest present one; ``"zero"`` ignores the class (its false positives then cost nothing). A row
    with *every* class absent uses uniform weights (``all_absent="uniform"``), so false positives
    still count (the loss is near 1), though with the default smoothing their gradient is tiny
    (about 1e-11 in ``notebooks/01_dice_vs_gdl_explained.ipynb``: a CE term is what trains them
    away); ``all_absent="zero"`` is MONAI's constant ``1 - smooth_nr/smooth_dr`` there. Weights
    never become inf or NaN.

    **Weight scale.** ``normalize_weights=True`` (default) divides the weights of each row by their
    sum. The ratio does not change, but ``smooth_nr``/``smooth_dr`` then act in voxel units: with raw
    ``1/V^2`` weights a class of 10^5 voxels has ``w * I ~ 1e-5``, the size of the smoothing, which
    then biases the loss. ``normalize_weights=False, all_absent="zero", soft_label=False`` reproduces
    MONAI's ``GeneralizedDiceLoss`` (whose ``soft_label`` default is False).

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act, soft_label, batch, reduction,
        smooth_nr, smooth_dr, ignore_index, validate, implementation, distributed: as in
        :class:`VNetDiceLoss`.
        w_type: ``"square"`` (default, Sudre et al.), ``"simple"`` or ``"uniform"``.
        absent_class: ``"max"`` or ``"zero"``, see above.
        all_absent: ``"uniform"`` or ``"zero"``, see above.
        normalize_weights: rescale each row's weights to sum 1, see above.
        squared_pred: square ``p`` and ``g`` in the denominator (off by default, as in the paper).

    Example:
        >>> import torch
        >>> from monai_gdl import SudreGeneralizedDiceLoss
        >>> loss = SudreGeneralizedDiceLoss(softmax=True, to_onehot_y=True)
        >>> logits = torch.zeros(1, 2, 4, 4)
        >>> labels = torch.zeros(1, 1, 4, 4, dtype=torch.long)  # class 1 absent: it gets class 0's weight
        >>> round(float(loss(logits, labels)), 4)
        0.5
    """

    kind = GENERALIZED_DICE


class SalehiTverskyLoss(DiceFamilyLoss):
    r"""Tversky loss (Salehi et al. 2017): false positives and false negatives weighed apart, fused.

    For every sample ``b`` and class ``c`` (sums over the spatial axes, masked voxels skipped)::

        TI[b, c] = (I + smooth_nr) / (I + alpha * (P - I) + beta * (G - I) + smooth_dr)
        f[b, c]  = (1 - TI[b, c]) ** gamma

    ``I``, ``P = sum(p)``, ``G = sum(g)`` as in :class:`VNetDiceLoss` with its plain denominator (no
    ``squared_pred``): ``P - I = sum(p (1 - g))`` are the soft false positives, ``G - I = sum((1 - p) g)`` the
    false negatives. With the soft-label intersection (default for one-hot/soft targets) ``I = sum min(p, g)``
    and the loss is 0 exactly at ``p == g``. ``alpha = beta = 0.5`` is the Dice loss, ``alpha = beta = 1`` the
    Jaccard loss; ``beta > alpha`` favours recall (misses cost more than false alarms), which is what small
    structures usually need. ``gamma != 1`` is the focal Tversky loss (:class:`FocalTverskyLoss`). Equal to
    MONAI's ``TverskyLoss`` (which has no ``gamma`` and no class weights) with the same ``alpha``, ``beta``,
    ``soft_label``; MONAI's ``reduction="none"`` shape is ``B x C'`` where ours is
    :class:`VNetDiceLoss`'s broadcastable ``B x C' x 1 x ... x 1``.

    Output by ``reduction``: as :class:`VNetDiceLoss` (``f`` per sample and scored class, weighted mean, sum,
    or that shape).

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act, soft_label, batch, reduction,
        smooth_nr, smooth_dr, weight, rescale_weight, ignore_index, validate, implementation, distributed:
        as in :class:`VNetDiceLoss`.
        alpha: weight of the false positives, >= 0 (MONAI's meaning).
        beta: weight of the false negatives, >= 0; not both 0.
        gamma: exponent of ``1 - TI``, > 0 (1: the Tversky loss).

    Example:
        >>> import torch
        >>> from monai_gdl import SalehiTverskyLoss
        >>> loss = SalehiTverskyLoss(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7)
        >>> logits = torch.zeros(1, 2, 4, 4)  # p = 0.5: class 0 misses half of itself, class 1 is all false alarm
        >>> round(float(loss(logits, torch.zeros(1, 1, 4, 4, dtype=torch.long))), 4)
        0.7059
    """

    kind = TVERSKY


class FocalTverskyLoss(DiceFamilyLoss):
    r"""Focal Tversky loss (Abraham and Khan 2019): :class:`SalehiTverskyLoss` with ``f = (1 - TI)^gamma``.

    The defaults are the paper's recommendation in MONAI's convention (``alpha`` weighs false positives):
    ``alpha=0.3, beta=0.7`` (the paper's ``alpha = 0.7`` on false negatives) and ``gamma=0.75`` (the paper
    writes ``(1 - TI)^(1/gamma)`` with ``gamma = 4/3``). ``gamma < 1`` raises the loss, and its gradient, of
    classes that are already nearly right relative to the bad ones, i.e. keeps pushing small structures once
    the large ones are learnt. At ``TI = 1`` (a perfect class) the value and the gradient are 0 (the exact
    derivative of ``x^0.75`` is infinite there). Arguments, shapes and reductions as :class:`SalehiTverskyLoss`.

    Example:
        >>> import torch
        >>> from monai_gdl import FocalTverskyLoss
        >>> loss = FocalTverskyLoss(softmax=True, to_onehot_y=True)
        >>> logits = torch.zeros(1, 2, 4, 4)
        >>> round(float(loss(logits, torch.zeros(1, 1, 4, 4, dtype=torch.long))), 4)
        0.757
    """

    kind = FOCAL_TVERSKY
