"""The losses: input checks (:mod:`.validation`), formulas on the statistics (:mod:`.formulas`),
the functional losses (:mod:`.functional`) and the ``nn.Module`` losses (:mod:`.modules`)."""

from monai_gdl.losses.formulas import (
    generalized_dice_from_statistics,
    generalized_dice_weights,
    vnet_dice_from_statistics,
)
from monai_gdl.losses.functional import all_reduce_statistics, dice_statistics, generalized_dice_loss, vnet_dice_loss
from monai_gdl.losses.modules import SudreGeneralizedDiceLoss, VNetDiceLoss
from monai_gdl.losses.validation import LossInputError

__all__ = [
    "LossInputError",
    "SudreGeneralizedDiceLoss",
    "VNetDiceLoss",
    "all_reduce_statistics",
    "dice_statistics",
    "generalized_dice_from_statistics",
    "generalized_dice_loss",
    "generalized_dice_weights",
    "vnet_dice_from_statistics",
    "vnet_dice_loss",
]
