"""The losses, one room per step: options checked once (:mod:`.options`), a loss as a Dice term plus a
voxel term (:mod:`.terms`), tensor checks (:mod:`.validation`), the volume reduced to sums
(:mod:`.sums`), formulas on the sums (:mod:`.formulas`), the one forward and the functional losses
(:mod:`.functional`), the ``nn.Module`` Dice, Jaccard and Tversky losses and their base (:mod:`.modules`), the fused
compound losses (:mod:`.compound`) and the deep-supervision wrapper (:mod:`.deep_supervision`)."""

from monai_gdl.losses.compound import (
    SalehiTverskyCELoss,
    SudreGeneralizedDiceCELoss,
    SudreGeneralizedDiceFocalLoss,
    VNetDiceBCELoss,
    VNetDiceCEBoundaryLoss,
    VNetDiceCELoss,
    VNetDiceCESkeletonRecallLoss,
    VNetDiceFocalLoss,
)
from monai_gdl.losses.deep_supervision import DeepSupervisionWrapper
from monai_gdl.losses.formulas import (
    cross_entropy_from_sums,
    focal_from_sums,
    generalized_dice_from_statistics,
    generalized_dice_weights,
    tversky_from_statistics,
    vnet_dice_from_statistics,
)
from monai_gdl.losses.functional import (
    all_reduce_statistics,
    dice_statistics,
    generalized_dice_loss,
    tversky_loss,
    vnet_dice_loss,
)
from monai_gdl.losses.modules import (
    DiceFamilyLoss,
    FocalTverskyLoss,
    SalehiTverskyLoss,
    SudreGeneralizedDiceLoss,
    VNetDiceLoss,
)
from monai_gdl.losses.options import DiceOptions
from monai_gdl.losses.terms import (
    BinaryCrossEntropy,
    Boundary,
    CrossEntropy,
    Focal,
    GeneralizedDice,
    LossKind,
    LossOptions,
    SkeletonRecall,
    Tversky,
    VNetDice,
)
from monai_gdl.losses.validation import LossInputError

__all__ = [
    "BinaryCrossEntropy",
    "Boundary",
    "CrossEntropy",
    "DeepSupervisionWrapper",
    "DiceFamilyLoss",
    "DiceOptions",
    "Focal",
    "GeneralizedDice",
    "LossKind",
    "LossOptions",
    "LossInputError",
    "SkeletonRecall",
    "FocalTverskyLoss",
    "SalehiTverskyCELoss",
    "SalehiTverskyLoss",
    "SudreGeneralizedDiceCELoss",
    "SudreGeneralizedDiceFocalLoss",
    "SudreGeneralizedDiceLoss",
    "VNetDiceBCELoss",
    "VNetDiceCEBoundaryLoss",
    "VNetDiceCELoss",
    "VNetDiceCESkeletonRecallLoss",
    "VNetDiceFocalLoss",
    "Tversky",
    "VNetDice",
    "VNetDiceLoss",
    "all_reduce_statistics",
    "cross_entropy_from_sums",
    "dice_statistics",
    "focal_from_sums",
    "generalized_dice_from_statistics",
    "generalized_dice_loss",
    "generalized_dice_weights",
    "tversky_from_statistics",
    "tversky_loss",
    "vnet_dice_from_statistics",
    "vnet_dice_loss",
]
