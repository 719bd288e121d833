"""Pieces both the training and the inference bundle configs build, defined once.

``configs/train.json`` and ``configs/inference.json`` are each run on their own by MONAI's CLI, and
MONAI resolves ``%file`` macros relative to the working directory, so the shared network and
loading transforms live here and both configs call them with their top-level knobs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNet
from monai.transforms import EnsureTyped, Orientationd, Spacingd

from monai_gdl.transforms import CheckLabelsd, LoadNamedImaged, intensity_normalization

__all__ = ["load_transforms", "segmentation_unet"]


def segmentation_unet(
    num_classes: int,
    in_channels: int = 1,
    channels: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] = (2, 2, 2),
    num_res_units: int = 2,
) -> UNet:
    """The 3D residual UNet of the bundle (patch sizes must be divisible by the product of ``strides``)."""
    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=num_classes,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        norm="batch",
    )


def load_transforms(
    keys: Sequence[str],
    num_classes: int,
    spacing: Sequence[float],
    intensity: str = "mr",
    ct_window: Sequence[float] = (-175.0, 250.0),
) -> list:
    """Load NIfTI, check labels (naming the file), reorient to RAS, resample to ``spacing``, normalise.

    ``keys`` is ``["image", "label"]`` for training/evaluation and ``["image"]`` for inference.
    """
    keys = list(keys)
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    transforms = [LoadNamedImaged(keys=keys, image_only=True, ensure_channel_first=True)]
    if "label" in keys:
        transforms.append(CheckLabelsd(keys="label", num_classes=num_classes))
    transforms += [
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=keys, pixdim=spacing, mode=modes),
        intensity_normalization(intensity, keys="image", ct_window=ct_window),
        EnsureTyped(keys=keys, dtype=torch.float32),
    ]
    return transforms
