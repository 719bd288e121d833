"""monai_gdl: V-Net Dice and Generalized Dice losses for MONAI, fused, validated and explained.

Importing the package registers the losses (:data:`REGISTERED_LOSSES`: the V-Net Dice (and Jaccard),
Generalized Dice and Tversky losses, their fused compounds with CE / BCE / focal, and the deep-supervision
wrapper) as attributes of ``monai.losses`` (no MONAI name is replaced), so bundle configs with
``"imports": ["$import monai_gdl"]`` can use ``"_target_": "VNetDiceCELoss"``.

Subpackages: :mod:`monai_gdl.losses` (options, terms, checks, sums, formulas, modules),
:mod:`monai_gdl.kernels` (statistics contract, reference math, backends and their registry, operators),
:mod:`monai_gdl.structure_maps` (the skeleton and distance maps the structure terms read, made in the data
pipeline), :mod:`monai_gdl.bundle` (what the bundle configs import), :mod:`monai_gdl.integrations` (nnU-Net v2 trainers,
the Auto3DSeg override; imported only when used). Tools: ``python -m monai_gdl.benchmark |
data | report | study``.
"""

from __future__ import annotations

from monai_gdl.kernels import BACKENDS, DiceStatistics, get_backend, set_backend, use_backend
from monai_gdl.losses import (
    DeepSupervisionWrapper,
    FocalTverskyLoss,
    LossInputError,
    SalehiTverskyCELoss,
    SalehiTverskyLoss,
    SudreGeneralizedDiceCELoss,
    SudreGeneralizedDiceFocalLoss,
    SudreGeneralizedDiceLoss,
    VNetDiceBCELoss,
    VNetDiceCEBoundaryLoss,
    VNetDiceCELoss,
    VNetDiceCESkeletonRecallLoss,
    VNetDiceFocalLoss,
    VNetDiceLoss,
    dice_statistics,
    functional,
    generalized_dice_from_statistics,
    generalized_dice_loss,
    generalized_dice_weights,
    tversky_from_statistics,
    tversky_loss,
    vnet_dice_from_statistics,
    vnet_dice_loss,
)
from monai_gdl.structure_maps import SignedDistanceMapd, TubedSkeletonMapd, signed_distance_map, tubed_skeleton

__version__ = "0.9.7"

__all__ = [
    "BACKENDS",
    "DeepSupervisionWrapper",
    "DiceStatistics",
    "LossInputError",
    "SignedDistanceMapd",
    "TubedSkeletonMapd",
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
    "VNetDiceLoss",
    "dice_statistics",
    "functional",
    "generalized_dice_from_statistics",
    "generalized_dice_loss",
    "generalized_dice_weights",
    "get_backend",
    "register_with_monai",
    "set_backend",
    "signed_distance_map",
    "tubed_skeleton",
    "use_backend",
    "tversky_from_statistics",
    "tversky_loss",
    "vnet_dice_from_statistics",
    "vnet_dice_loss",
]

REGISTERED_LOSSES = (
    VNetDiceLoss,
    SudreGeneralizedDiceLoss,
    VNetDiceCELoss,
    SudreGeneralizedDiceCELoss,
    VNetDiceBCELoss,
    VNetDiceFocalLoss,
    SudreGeneralizedDiceFocalLoss,
    SalehiTverskyLoss,
    FocalTverskyLoss,
    SalehiTverskyCELoss,
    VNetDiceCESkeletonRecallLoss,
    VNetDiceCEBoundaryLoss,
    DeepSupervisionWrapper,
)


def register_with_monai() -> None:
    """Expose our losses as ``monai.losses.<Name>``; refuse to replace anything MONAI defines."""
    import monai.losses

    for cls in REGISTERED_LOSSES:
        existing = getattr(monai.losses, cls.__name__, None)
        if existing is not None and existing is not cls:
            raise RuntimeError(f"monai.losses.{cls.__name__} already exists ({existing!r}); not replacing it.")
        setattr(monai.losses, cls.__name__, cls)


register_with_monai()
