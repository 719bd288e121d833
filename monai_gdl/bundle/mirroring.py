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

from monai_gdl.bundle.checks import ArgumentError

__all__ = ["MirroredInferer"]


class MirroredInferer(Inferer):
    """``inferer``'s output averaged (in float32) over the 2^k mirrorings of the input along ``spatial_axes``
    (0, 1, 2 = the image's first, second and third spatial axis); with no axes, ``inferer`` itself. Training's
    validation does not mirror (nor does nnU-Net's); evaluation and inference do where the recipe says so."""

    def __init__(self, inferer: Inferer, spatial_axes: Sequence[int] = ()) -> None:
        super().__init__()
        axes = list(spatial_axes) if isinstance(spatial_axes, (list, tuple)) else None
        if axes is None or any(isinstance(a, bool) or a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
            raise ArgumentError(
                f"mirror_axes={spatial_axes!r}; give distinct spatial axes from 0, 1, 2, e.g. --mirror_axes [0,1,2], "
                "or [] for no test-time mirroring."
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
