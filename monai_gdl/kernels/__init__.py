"""Fused streaming computation of the Dice statistics and their gradient: the kernels' one face.

Layout (each module imports only those above it):

- :mod:`~monai_gdl.kernels.contract`: what every backend computes (:class:`DiceStatistics`,
  :class:`VoxelTermSums`, :class:`WeightMapSums`, the rows).
- :mod:`~monai_gdl.kernels.reference`: the same math in plain PyTorch (whole volume and per chunk).
- :mod:`~monai_gdl.kernels.chunked`, :mod:`~monai_gdl.kernels.native` (built by
  :mod:`~monai_gdl.kernels.native_build`), :mod:`~monai_gdl.kernels.triton_backend`: the backends.
- :mod:`~monai_gdl.kernels.backends`: the registry of backends and which one runs.
- :mod:`~monai_gdl.kernels.ops`: the ``torch.library`` operators the losses call (:func:`fused_sums`).
"""

from monai_gdl.kernels.backends import (
    BACKENDS,
    CHECK_TOLERANCE,
    REGISTRY,
    get_backend,
    resolve_backend,
    set_backend,
    use_backend,
)
from monai_gdl.kernels.contract import (
    VOXEL_TERMS,
    DiceStatistics,
    Row,
    VoxelTermSums,
    WeightMapSums,
    accumulation_dtype,
)
from monai_gdl.kernels.ops import fused_sums
from monai_gdl.kernels.reference import (
    reference_statistics,
    reference_voxel_term,
    reference_weight_map_sums,
    rounded_labels,
)

__all__ = [
    "BACKENDS",
    "CHECK_TOLERANCE",
    "REGISTRY",
    "VOXEL_TERMS",
    "DiceStatistics",
    "Row",
    "VoxelTermSums",
    "WeightMapSums",
    "accumulation_dtype",
    "fused_sums",
    "get_backend",
    "reference_statistics",
    "reference_voxel_term",
    "reference_weight_map_sums",
    "resolve_backend",
    "rounded_labels",
    "set_backend",
    "use_backend",
]
