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

from monai_gdl.losses.modules import DiceFamilyLoss
from monai_gdl.losses.terms import (
    BinaryCrossEntropy,
    CrossEntropy,
    Focal,
    GeneralizedDice,
    LossKind,
    Tversky,
    VNetDice,
)

__all__ = [
    "SalehiTverskyCELoss",
    "SudreGeneralizedDiceCELoss",
    "SudreGeneralizedDiceFocalLoss",
    "VNetDiceBCELoss",
    "VNetDiceCELoss",
    "VNetDiceFocalLoss",
]


class VNetDiceCELoss(DiceFamilyLoss):
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

    Example:
        >>> import torch
        >>> from monai_gdl import VNetDiceCELoss
        >>> loss = VNetDiceCELoss(to_onehot_y=True)
        >>> logits = torch.zeros(1, 2, 4, 4)  # p = 0.5: Dice loss 0.6, CE log 2
        >>> round(float(loss(logits, torch.zeros(1, 1, 4, 4, dtype=torch.long))), 4)
        1.2931
    """

    kind = LossKind("VNetDiceCELoss", VNetDice, CrossEntropy, defaults={"softmax": True})


class SudreGeneralizedDiceCELoss(DiceFamilyLoss):
    r"""Generalized Dice + cross-entropy, fused: ``lambda_gdl * SudreGeneralizedDiceLoss + lambda_ce * CE``.

    GDL part: :class:`~monai_gdl.SudreGeneralizedDiceLoss` with the same options; CE part as in
    :class:`VNetDiceCELoss`, with ``weight`` (one per channel) used by the CE only (GDL weighs classes
    by their volume). Output: a scalar (``"mean"`` or ``"sum"``).

    Example:
        >>> import torch
        >>> from monai_gdl import SudreGeneralizedDiceCELoss
        >>> loss = SudreGeneralizedDiceCELoss(to_onehot_y=True)
        >>> logits = torch.zeros(1, 2, 4, 4)  # p = 0.5: GDL 0.5, CE log 2
        >>> round(float(loss(logits, torch.zeros(1, 1, 4, 4, dtype=torch.long))), 4)
        1.1931
    """

    kind = LossKind(
        "SudreGeneralizedDiceCELoss", GeneralizedDice, CrossEntropy, defaults={"softmax": True, "squared_pred": False}
    )


class VNetDiceBCELoss(DiceFamilyLoss):
    r"""V-Net Dice + binary cross-entropy for sigmoid (multi-label / region) outputs, fused (nnU-Net's
    ``DC_and_BCE_loss``).

    ``lambda_dice * VNetDiceLoss(sigmoid=True) + lambda_ce * BCE``, with ``BCE`` the mean of
    ``binary_cross_entropy_with_logits`` over every scored element (``B x C' x spatial``, masked
    voxels excluded); ``weight`` (one per scored channel) weighs both parts' channels. With
    ``squared_pred=False`` and ``smooth_nr = smooth_dr = 1e-5`` the Dice part is nnU-Net's
    ``MemoryEfficientSoftDiceLoss(apply_nonlin=sigmoid)`` (plus 1: nnU-Net returns ``-Dice``).
    Output: a scalar (``"mean"`` or ``"sum"``, ``"sum"`` as MONAI's FocalLoss: mean over space, sum
    over samples and channels).

    Args: as :class:`VNetDiceCELoss` (``sigmoid`` must be True; ``label_smoothing`` does not apply).

    Example:
        >>> import torch
        >>> from monai_gdl import VNetDiceBCELoss
        >>> loss = VNetDiceBCELoss()  # sigmoid=True
        >>> logits = torch.zeros(1, 1, 4, 4)  # p = 0.5: Dice loss 1 - 16 / (4 + 16), BCE log 2
        >>> round(float(loss(logits, torch.ones(1, 1, 4, 4))), 4)
        0.8931
    """

    kind = LossKind("VNetDiceBCELoss", VNetDice, BinaryCrossEntropy, defaults={"sigmoid": True})


class VNetDiceFocalLoss(DiceFamilyLoss):
    r"""V-Net Dice + focal loss, fused: ``lambda_dice * VNetDiceLoss + lambda_focal * FocalLoss`` (MONAI's
    ``DiceFocalLoss``).

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

    Example:
        >>> import torch
        >>> from monai_gdl import VNetDiceFocalLoss
        >>> loss = VNetDiceFocalLoss(softmax=True, to_onehot_y=True)  # gamma 2
        >>> logits = torch.zeros(1, 2, 4, 4)  # Dice loss 0.6, sigmoid focal 0.5^2 log 2
        >>> round(float(loss(logits, torch.zeros(1, 1, 4, 4, dtype=torch.long))), 4)
        0.7733
    """

    kind = LossKind("VNetDiceFocalLoss", VNetDice, Focal, defaults={})


class SudreGeneralizedDiceFocalLoss(DiceFamilyLoss):
    r"""Generalized Dice + focal loss, fused: ``lambda_gdl * SudreGeneralizedDiceLoss + lambda_focal * FocalLoss``
    (MONAI's ``GeneralizedDiceFocalLoss``).

    GDL part: :class:`~monai_gdl.SudreGeneralizedDiceLoss` with the same options; focal part as in
    :class:`VNetDiceFocalLoss`, ``weight`` (one per scored channel) used by the focal part only.
    Output: a scalar (``"mean"`` or ``"sum"``).

    Example:
        >>> import torch
        >>> from monai_gdl import SudreGeneralizedDiceFocalLoss
        >>> loss = SudreGeneralizedDiceFocalLoss(softmax=True, to_onehot_y=True)
        >>> logits = torch.zeros(1, 2, 4, 4)  # GDL 0.5, sigmoid focal 0.5^2 log 2
        >>> round(float(loss(logits, torch.zeros(1, 1, 4, 4, dtype=torch.long))), 4)
        0.6733
    """

    kind = LossKind("SudreGeneralizedDiceFocalLoss", GeneralizedDice, Focal, defaults={"squared_pred": False})


class SalehiTverskyCELoss(DiceFamilyLoss):
    r"""Tversky (or focal Tversky) + cross-entropy, fused: ``lambda_tversky * SalehiTverskyLoss + lambda_ce * CE``.

    Tversky part: :class:`~monai_gdl.SalehiTverskyLoss` with the same options (``gamma != 1`` for the focal
    form); CE part as in :class:`VNetDiceCELoss` (``weight``: one per channel, the CE's class weights and the
    Tversky part's, without class 0 when ``include_background=False``). Output: a scalar.

    Example:
        >>> import torch
        >>> from monai_gdl import SalehiTverskyCELoss
        >>> loss = SalehiTverskyCELoss(to_onehot_y=True, alpha=0.3, beta=0.7)
        >>> logits = torch.zeros(1, 2, 4, 4)  # Tversky 0.7059 (see SalehiTverskyLoss) + CE log 2
        >>> round(float(loss(logits, torch.zeros(1, 1, 4, 4, dtype=torch.long))), 4)
        1.399
    """

    kind = LossKind("SalehiTverskyCELoss", Tversky, CrossEntropy, defaults={"softmax": True})
