"""The bundle's network: a 3D residual UNet sized by the bundle's knobs."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import UNet

__all__ = ["segmentation_unet"]


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
