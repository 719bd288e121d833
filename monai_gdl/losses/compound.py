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

import torch

from monai_gdl.losses.functional import compute_loss
from monai_gdl.losses.modules import DiceFamilyLoss
from monai_gdl.losses.terms import (
    BinaryCrossEntropy,
    Boundary,
    CrossEntropy,
    Focal,
    GeneralizedDice,
    LossKind,
    SkeletonRecall,
    Tversky,
    VNetDice,
)

__all__ = [
    "SalehiTverskyCELoss",
    "VNetDiceCEBoundaryLoss",
    "VNetDiceCESkeletonRecallLoss",
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


class VNetDiceCESkeletonRecallLoss(DiceFamilyLoss):
    r"""V-Net Dice + cross-entropy + Skeleton Recall (Kirchhoff et al., ECCV 2024), fused in the same two passes.

    ``lambda_dice * VNetDiceLoss + lambda_ce * CE + lambda_skel * SR`` with the Dice and CE parts exactly
    :class:`VNetDiceCELoss` and, per foreground class ``c >= 1`` (the background has no skeleton)::

        SR = mean_{b, c} [1 - (sum(m p_c s_c) + smooth_nr) / (sum(m s_c) + smooth_dr)]

    ``s`` is the tubed skeleton of the label: a label map (``B x 1 x spatial``, 0 = no skeleton, else the
    class) computed once per case in the data pipeline by :class:`~monai_gdl.TubedSkeletonMapd` and cached
    with the data, never in the loss. The kernel reads it next to the label (one more gather per voxel, no
    one-hot, no float volume) and adds ``lambda_skel * dSR/dp`` into the same gradient buffer. With ``batch``
    the sums are pooled over the batch (and processes) first. ``lambda_skel=1`` is the authors' weight
    (``weight_srec``); the paper's loss is ``-recall``, ours ``1 - recall`` (same gradient, in [0, 1]).
    nnU-Net's Dice (``DC_SkelREC_and_CE_loss``) is ``squared_pred=False, include_background=False``.

    ``forward(input, target, mask=None, *, skeleton=None)``: the skeleton as ``skeleton=``, or as a second
    channel of the label-map target (``B x 2 x spatial``, label first), which is how MONAI's trainers, which
    pass only ``(prediction, label)`` to the loss, deliver it (``TubedSkeletonMapd(..., append=True)``).

    Args:
        as :class:`VNetDiceCELoss` (``softmax=True`` required), and ``lambda_skel`` >= 0.

    Example:
        >>> import torch
        >>> from monai_gdl import VNetDiceCESkeletonRecallLoss
        >>> loss = VNetDiceCESkeletonRecallLoss(to_onehot_y=True, lambda_dice=0.0, lambda_ce=0.0)
        >>> logits = torch.zeros(1, 2, 4, 4)  # p = 0.5 everywhere
        >>> labels = torch.zeros(1, 1, 4, 4, dtype=torch.long)
        >>> skeleton = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
        >>> skeleton[..., 1, :] = 1  # four skeleton voxels of class 1: recall 0.5
        >>> round(float(loss(logits, labels, skeleton=skeleton)), 4)
        0.5
    """

    kind = LossKind(
        "VNetDiceCESkeletonRecallLoss", VNetDice, CrossEntropy, defaults={"softmax": True}, map_term=SkeletonRecall
    )

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        skeleton: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return compute_loss(self.options, self.class_weight, input, target, mask, skeleton)


class VNetDiceCEBoundaryLoss(DiceFamilyLoss):
    r"""V-Net Dice + cross-entropy + boundary loss (Kervadec et al., MIDL 2019), fused in the same two passes.

    ``lambda_dice * VNetDiceLoss + lambda_ce * CE + lambda_boundary * BL`` with the Dice and CE parts exactly
    :class:`VNetDiceCELoss` and::

        BL = mean_{b, c, v} m p_c phi_c      (c over the scored classes; "sum": mean over v, summed over b, c)

    ``phi_c`` is the signed distance map of class ``c`` (negative inside, positive outside, 0 for an absent
    class): a dense ``B x C x spatial`` float map computed once per case in the data pipeline by
    :class:`~monai_gdl.SignedDistanceMapd` (cached with the data) where MONAI's ``BoundaryLoss`` runs a
    distance transform inside every step. The kernel reads it in the same forward pass; its gradient
    ``lambda_boundary * phi_c / N`` goes into the same buffer. Equal to MONAI 1.6.1 ``BoundaryLoss`` given
    the same maps. The authors raise the boundary weight over training while the region weight falls:
    :class:`monai_gdl.bundle.schedules.BoundaryWeightSchedule` does that in the bundle.

    ``forward(input, target, mask=None, *, distance=None)``: the map as ``distance=``, or as channels
    ``1..C`` of the label-map target (``B x (1 + C) x spatial``, label first;
    ``SignedDistanceMapd(..., append=True)``).

    Args:
        as :class:`VNetDiceCELoss` (``softmax=True`` required), and ``lambda_boundary`` >= 0.

    Example:
        >>> import torch
        >>> from monai_gdl import VNetDiceCEBoundaryLoss
        >>> loss = VNetDiceCEBoundaryLoss(to_onehot_y=True, lambda_dice=0.0, lambda_ce=0.0)
        >>> logits = torch.zeros(1, 2, 1, 4)  # p = 0.5
        >>> labels = torch.tensor([[[[0, 0, 1, 1]]]])
        >>> distance = torch.tensor([[[[-1.0, 0.0, 1.0, 2.0]], [[2.0, 1.0, 0.0, -1.0]]]])
        >>> round(float(loss(logits, labels, distance=distance)), 4)  # mean of 0.5 * phi
        0.25
    """

    kind = LossKind("VNetDiceCEBoundaryLoss", VNetDice, CrossEntropy, defaults={"softmax": True}, map_term=Boundary)

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        distance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return compute_loss(self.options, self.class_weight, input, target, mask, distance)
