"""nnU-Net's external trainer discovery (``nnUNet_extTrainer`` pointing at this folder) imports this file by
its path; it only re-exports the trainers, which live in :mod:`monai_gdl.integrations.nnunet`."""

from monai_gdl.integrations.nnunet import (  # noqa: F401
    nnUNetTrainerFusedDiceBCE,
    nnUNetTrainerFusedDiceCE,
    nnUNetTrainerFusedSkeletonRecall,
)
