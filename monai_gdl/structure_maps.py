"""The per-voxel maps the structure terms read, made once per case in the data pipeline (cached with the data),
never inside the loss: a tubed skeleton (:class:`~monai_gdl.VNetDiceCESkeletonRecallLoss`) and signed distance
maps (:class:`~monai_gdl.VNetDiceCEBoundaryLoss`).

- :func:`tubed_skeleton` (:class:`TubedSkeletonMapd`): per foreground class ``c >= 1``, the 3D (or 2D) skeleton of
  the class's voxels (scikit-image's ``skeletonize``, Lee's thinning in 3D), dilated ``dilations`` times with the
  face-connected cross and cut back to the class's own voxels, written as ``c``; 0 elsewhere. Skeleton Recall's
  tube (Kirchhoff et al. 2024: skeletonize the binarised label, dilate twice, give each voxel its class). The
  authors skeletonize all foreground classes together; per class the skeleton of two touching classes runs
  through each one's own centre instead of their union's. For one foreground class (or classes that do not
  touch) the two are the same voxels (``tests/test_structure_maps.py`` checks it). Classes never overlap, so
  one label map (``uint8``, ``int32`` beyond 255 classes) holds them all.
- :func:`signed_distance_map` (:class:`SignedDistanceMapd`): per class ``c``, ``phi_c = -(d_in - 1)`` inside the
  class (0 on its boundary voxels, negative deeper in) and ``d_out`` outside (the distance to its nearest
  voxel), Euclidean, in voxels (or in mm with ``spacing``: then ``-(d_in - s)`` inside, ``s`` the smallest
  spacing); the convention of Kervadec et al. and MONAI's ``BoundaryLoss``. A class absent from the label (or
  filling it) has no boundary: its map is 0 everywhere, so the boundary term ignores it (its false positives
  are the Dice and CE terms' job), as the authors and MONAI do. ``float32``, ``C x spatial``.

The dictionary transforms write the map under its own key, or (``append=True``) as extra channels of the label,
which is how MONAI's trainers (which pass only ``(prediction, label)`` to the loss) deliver it; every spatial
transform applied to the label afterwards then moves the map with it.

Needs scipy and scikit-image (``pip install "monai_gdl[structures]"``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["SignedDistanceMapd", "TubedSkeletonMapd", "signed_distance_map", "tubed_skeleton"]


class StructureMapError(ValueError):
    """A label a structure map cannot be made from (wrong shape, values outside the classes, missing package)."""


def _needs(package: str) -> Any:
    try:
        if package == "scipy":
            import scipy.ndimage as module
        else:
            import skimage.morphology as module
    except ImportError as err:
        raise StructureMapError(
            f'the structure maps need {package} ({err}); install them with pip install "monai_gdl[structures]".'
        ) from err
    return module


def _class_indices(label: Any, num_classes: int, what: str) -> np.ndarray:
    """``label`` (``spatial`` or ``1 x spatial``, int or integral float) as an int array of classes ``0..C-1``."""
    array = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    if array.ndim >= 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim not in (2, 3):
        raise StructureMapError(
            f"{what}: label has shape {tuple(np.shape(label))}; give one case's label map, 1 x H x W[ x D] or "
            "H x W[ x D]."
        )
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not (array == np.round(array)).all():
            raise StructureMapError(
                f"{what}: label holds non-integer or non-finite values; it must hold class indices."
            )
    values = array.astype(np.int64)
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise StructureMapError(
            f"{what}: label holds values in [{values.min()}, {values.max()}] but num_classes={num_classes}; set "
            "num_classes to the network's output channels."
        )
    return values


def tubed_skeleton(label: Any, num_classes: int, *, dilations: int = 2) -> np.ndarray:
    """The tubed skeleton of a label map (``spatial`` or ``1 x spatial``) as a label map of the same spatial shape:
    0 off the skeleton, ``c`` on class ``c``'s tube (see the module docstring). ``dilations=0``: the bare skeleton.

    Example:
        >>> import numpy as np
        >>> from monai_gdl import tubed_skeleton
        >>> label = np.zeros((9, 9, 9), dtype=np.int64)
        >>> label[2:7, 2:7, 1:8] = 1  # a 5 x 5 rod along the last axis
        >>> skeleton = tubed_skeleton(label, num_classes=2, dilations=0)
        >>> int(skeleton.sum()), skeleton.dtype.name  # its centre line (thinning also shortens the ends)
        (3, 'uint8')
    """
    if dilations < 0 or int(dilations) != dilations:
        raise StructureMapError(
            f"dilations={dilations!r}: give the number of dilations, an integer >= 0 (2 in the paper)."
        )
    values = _class_indices(label, num_classes, "tubed_skeleton")
    ndi, morphology = _needs("scipy"), _needs("skimage")
    cross = ndi.generate_binary_structure(values.ndim, 1)
    out = np.zeros(values.shape, dtype=np.uint8 if num_classes <= 256 else np.int32)
    for c in range(1, num_classes):
        region = values == c
        if not region.any():
            continue
        tube = morphology.skeletonize(region)
        if dilations:
            tube = ndi.binary_dilation(tube, structure=cross, iterations=int(dilations))
        out[tube & region] = c
    return out


def signed_distance_map(label: Any, num_classes: int, *, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Signed distance maps (``C x spatial``, float32) of a label map, one per class (see the module docstring).

    Example:
        >>> import numpy as np
        >>> from monai_gdl import signed_distance_map
        >>> signed_distance_map(np.array([[0, 0, 1, 1, 1]]), num_classes=2)[1]  # inside <= 0, outside > 0
        array([[ 2.,  1.,  0., -1., -2.]], dtype=float32)
    """
    values = _class_indices(label, num_classes, "signed_distance_map")
    ndi = _needs("scipy")
    sampling = None if spacing is None else [float(s) for s in spacing]
    if sampling is not None and (len(sampling) != values.ndim or min(sampling) <= 0):
        raise StructureMapError(f"spacing={spacing!r}: give one positive spacing per spatial axis ({values.ndim}).")
    inner = 1.0 if sampling is None else min(sampling)
    out = np.zeros((num_classes, *values.shape), dtype=np.float32)
    for c in range(num_classes):
        region = values == c
        if not region.any() or region.all():
            continue
        inside = ndi.distance_transform_edt(region, sampling=sampling)
        outside = ndi.distance_transform_edt(~region, sampling=sampling)
        out[c] = np.where(region, inner - inside, outside)
    return out


def _spacing(label: Any) -> list[float] | None:
    if isinstance(label, MetaTensor):
        return [float(s) for s in label.pixdim]
    return None


def _like(label: Any, array: np.ndarray) -> torch.Tensor:
    """``array`` as a tensor carrying the label's metadata (affine, file name) when it has any."""
    tensor = torch.from_numpy(array)
    return MetaTensor(tensor, meta=dict(label.meta)) if isinstance(label, MetaTensor) else tensor


class _StructureMapd(MapTransform):
    """Computes a map from each key's label; writes it under ``map_key`` (``"{key}_{suffix}"`` by default) or
    appends it to the label's channels (``append=True``; the label then becomes float if it was not)."""

    suffix = "map"

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        map_key: str | None = None,
        append: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(num_classes) != num_classes or num_classes < 2:
            raise StructureMapError(f"num_classes={num_classes!r}: give the network's output channels (>= 2).")
        if map_key is not None and append:
            raise StructureMapError("map_key and append=True: choose where the map goes (its own key, or the label).")
        self.num_classes, self.map_key, self.append = int(num_classes), map_key, append

    def compute(self, label: Any) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            array = self.compute(label)
            array = array[None] if array.ndim == np.ndim(label) - 1 else array  # a channel axis as the label has
            if self.append:
                base = label if isinstance(label, torch.Tensor) else torch.as_tensor(np.asarray(label))
                extra = torch.from_numpy(array).to(base.dtype if base.is_floating_point() else torch.float32)
                d[key] = torch.cat([base.to(extra.dtype), extra], dim=0)
            else:
                d[self.map_key or f"{key}_{self.suffix}"] = _like(label, array)
        return d


class TubedSkeletonMapd(_StructureMapd):
    """:func:`tubed_skeleton` of each key's label (``1 x spatial``) as a ``1 x spatial`` label map under
    ``map_key`` (default ``"{key}_skeleton"``), or appended to the label (``append=True``) for
    :class:`~monai_gdl.VNetDiceCESkeletonRecallLoss` in a MONAI trainer. Put it before the first random transform,
    so ``CacheDataset`` / ``PersistentDataset`` keep it.

    Example:
        >>> import torch
        >>> from monai_gdl import TubedSkeletonMapd
        >>> label = torch.zeros(1, 9, 9, 9)
        >>> label[:, 2:7, 2:7, 1:8] = 1
        >>> out = TubedSkeletonMapd("label", num_classes=2, append=True)({"label": label})
        >>> out["label"].shape  # label, then skeleton
        torch.Size([2, 9, 9, 9])
    """

    suffix = "skeleton"

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        map_key: str | None = None,
        append: bool = False,
        dilations: int = 2,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, num_classes, map_key, append, allow_missing_keys)
        self.dilations = dilations

    def compute(self, label: Any) -> np.ndarray:
        return tubed_skeleton(label, self.num_classes, dilations=self.dilations)


class SignedDistanceMapd(_StructureMapd):
    """:func:`signed_distance_map` of each key's label as a ``C x spatial`` float32 map under ``map_key`` (default
    ``"{key}_distance"``), or appended to the label (``append=True``) for
    :class:`~monai_gdl.VNetDiceCEBoundaryLoss` in a MONAI trainer. ``units="mm"`` measures in the label's
    ``pixdim`` (a MetaTensor's spacing), ``"voxel"`` (default) in voxels.

    Example:
        >>> import torch
        >>> from monai_gdl import SignedDistanceMapd
        >>> out = SignedDistanceMapd("label", num_classes=2)({"label": torch.tensor([[[0, 0, 1, 1, 1]]])})
        >>> out["label_distance"].shape
        torch.Size([2, 1, 5])
    """

    suffix = "distance"

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        map_key: str | None = None,
        append: bool = False,
        units: str = "voxel",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, num_classes, map_key, append, allow_missing_keys)
        if units not in ("voxel", "mm"):
            raise StructureMapError(f"units={units!r}; use 'voxel' or 'mm'.")
        self.units = units

    def compute(self, label: Any) -> np.ndarray:
        spacing = None
        if self.units == "mm":
            spacing = _spacing(label)
            if spacing is None:
                raise StructureMapError(
                    "units='mm' needs the label's spacing: load it with LoadImaged (a MetaTensor), or use "
                    "units='voxel'."
                )
        values = _class_indices(label, self.num_classes, "SignedDistanceMapd")
        return signed_distance_map(
            values, self.num_classes, spacing=None if spacing is None else spacing[: values.ndim]
        )
