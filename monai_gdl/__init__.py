"""monai_gdl: V-Net Dice and Generalized Dice losses for MONAI, fused, validated and explained.

Importing the package registers :class:`VNetDiceLoss` and :class:`SudreGeneralizedDiceLoss` as
attributes of ``monai.losses`` (no MONAI name is replaced), so bundle configs with
``"imports": ["$import monai_gdl"]`` can use ``"_target_": "VNetDiceLoss"``.
"""

from __future__ import annotations

from monai_gdl import functional
from monai_gdl.functional import DiceStatistics, generalized_dice_loss, vnet_dice_loss
from monai_gdl.losses import SudreGeneralizedDiceLoss, VNetDiceLoss
from monai_gdl.validation import LossInputError

__version__ = "0.1.0"

__all__ = [
    "DiceStatistics",
    "LossInputError",
    "SudreGeneralizedDiceLoss",
    "VNetDiceLoss",
    "functional",
    "generalized_dice_loss",
    "register_with_monai",
    "vnet_dice_loss",
]

REGISTERED_LOSSES = (VNetDiceLoss, SudreGeneralizedDiceLoss)


def register_with_monai() -> None:
    """Expose our losses as ``monai.losses.<Name>``; refuse to replace anything MONAI defines."""
    import monai.losses

    for cls in REGISTERED_LOSSES:
        existing = getattr(monai.losses, cls.__name__, None)
        if existing is not None and existing is not cls:
            raise RuntimeError(f"monai.losses.{cls.__name__} already exists ({existing!r}); not replacing it.")
        setattr(monai.losses, cls.__name__, cls)


register_with_monai()
