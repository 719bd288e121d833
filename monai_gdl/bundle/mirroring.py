"""Test-time mirroring, as nnU-Net predicts: the network's logits averaged over the input flipped along every subset
of the mirror axes (2^k passes; 8 for three axes) and flipped back. MONAI's ``TestTimeAugmentation`` samples random
transforms for uncertainty; this is the deterministic average nnU-Net uses for its reported scores.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer
from monai.transforms import RandAxisFlip, RandAxisFlipd, RandFlip, RandFlipd

from monai_gdl.bundle.checks import ArgumentError

__all__ = ["MirroredInferer", "flipped_axes"]

_ALL_AXES = (0, 1, 2)


def flipped_axes(transforms: Sequence[Any]) -> list[int]:
    """The spatial axes along which a training pipeline flips at random (``RandFlip(d)``'s ``spatial_axis``, None
    meaning all; ``RandAxisFlip(d)`` any axis; nested ``Compose`` / ``OneOf`` looked into): the axes along which
    test-time mirroring shows the network nothing it was not trained on."""
    found: set[int] = set()
    for transform in transforms:
        if isinstance(transform, (RandAxisFlip, RandAxisFlipd)):
            found.update(_ALL_AXES)
        elif isinstance(transform, (RandFlip, RandFlipd)):
            axis = transform.flipper.spatial_axis
            found.update(_ALL_AXES if axis is None else [axis] if isinstance(axis, int) else axis)
        elif isinstance(getattr(transform, "transforms", None), (list, tuple)):
            found.update(flipped_axes(transform.transforms))
    return sorted(found)


class MirroredInferer(Inferer):
    """``inferer``'s output averaged (in float32) over the 2^k mirrorings of the input along ``spatial_axes``
    (0, 1, 2 = the image's first, second and third spatial axis); with no axes, ``inferer`` itself. Training's
    validation does not mirror (nor does nnU-Net's); evaluation and inference do where the recipe says so.

    ``trained_axes`` (the axes training flipped along, :func:`flipped_axes`) refuses mirroring along any other
    axis: a network that tells classes apart by orientation (hippocampus' anterior and posterior parts) labels
    a mirrored image's classes the other way round, and the average then scores near 0 (the default recipe on
    hippocampus: val mean Dice 0.0019 mirrored along all three axes, 0.8900 not mirrored)."""

    def __init__(
        self, inferer: Inferer, spatial_axes: Sequence[int] = (), trained_axes: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        axes = list(spatial_axes) if isinstance(spatial_axes, (list, tuple)) else None
        if axes is None or any(isinstance(a, bool) or a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
            raise ArgumentError(
                f"mirror_axes={spatial_axes!r}; give distinct spatial axes from 0, 1, 2, e.g. --mirror_axes [0,1,2], "
                "or [] for no test-time mirroring."
            )
        untrained = sorted(set(axes) - set(trained_axes)) if trained_axes is not None else []
        if untrained:
            trained = sorted(trained_axes or [])
            raise ArgumentError(
                f"mirror_axes={axes} mirrors along axes {untrained}, which training never flipped (it flipped along "
                f"{trained or 'none'}): the network may label a mirrored image's classes the other way round "
                "(anterior / posterior), and the average would score near 0. Pass --mirror_axes "
                f"{str(trained).replace(' ', '')} (or [] for no mirroring), or train with RandFlipd along those axes "
                "(the nnU-Net-like recipe flips along all three); where the weights were trained flipping along them, "
                "say so with --trained_mirror_axes."
            )
        self.inferer = inferer
        self.spatial_axes = tuple(axes)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        total = self.inferer(inputs, network, *args, **kwargs)
        if not self.spatial_axes:
            return total
        total = total.float()
        flips = [c for n in range(1, len(self.spatial_axes) + 1) for c in itertools.combinations(self.spatial_axes, n)]
        for axes in flips:
            dims = [a + 2 for a in axes]
            total += torch.flip(self.inferer(torch.flip(inputs, dims), network, *args, **kwargs), dims).float()
        return total / (len(flips) + 1)
