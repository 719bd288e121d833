"""Fused streaming computation of the Dice statistics and their gradient.

Layout (each module imports only those above it):

- :mod:`~monai_gdl.kernels.contract`: what every backend computes (:class:`DiceStatistics`).
- :mod:`~monai_gdl.kernels.reference`: the same math in plain PyTorch (whole volume and per chunk).
- :mod:`~monai_gdl.kernels.chunked`, :mod:`~monai_gdl.kernels.native`,
  :mod:`~monai_gdl.kernels.triton_backend`: the backends.
- :mod:`~monai_gdl.kernels.dispatch`: which backend runs (public choice and ``"auto"``).
- :mod:`~monai_gdl.kernels.ops`: the ``torch.library`` operators the losses call.
"""

from monai_gdl.kernels.contract import VOXEL_TERMS, DiceStatistics, VoxelTermSums, statistics_dtype
from monai_gdl.kernels.dispatch import BACKENDS, get_backend, resolve_backend, set_backend, use_backend
from monai_gdl.kernels.ops import streaming_statistics

__all__ = [
    "BACKENDS",
    "VOXEL_TERMS",
    "DiceStatistics",
    "VoxelTermSums",
    "get_backend",
    "resolve_backend",
    "set_backend",
    "statistics_dtype",
    "streaming_statistics",
    "use_backend",
]
