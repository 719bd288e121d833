"""The dictionary transforms the bundle adds to MONAI's (its loading pipeline is written in the configs):
loading, voxel and label checks whose errors name the file."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import LoadImaged, MapTransform

from monai_gdl.bundle.datasets import DatasetError

__all__ = ["CheckFiniteImaged", "CheckLabelsd", "LoadNamedImaged"]


class LoadNamedImaged(LoadImaged):
    """``LoadImaged`` whose failure names the unreadable file (a truncated .nii.gz passes the header check)."""

    def __call__(self, data, reader=None):
        try:
            return super().__call__(data, reader)
        except Exception as err:
            import nibabel as nib

            paths = [str(data[k]) for k in self.keys if k in data]
            bad = []
            for path in paths:
                try:
                    nib.load(path).get_fdata()
                except Exception:
                    bad.append(path)
            raise DatasetError(
                f"cannot read {', '.join(bad or paths)} ({type(err).__name__}: {err}); the file is corrupt or "
                "truncated: re-export it or remove the case."
            ) from err


def _source_file(data: Mapping, key: Hashable) -> str:
    value = data[key]
    meta = getattr(value, "meta", None) or data.get(f"{key}_meta_dict", {})
    return str(meta.get("filename_or_obj", f"<{key}>"))


class CheckLabelsd(MapTransform):
    """Reject label maps with non-integer values or labels outside ``0 .. num_classes - 1``.

    Runs right after loading, so the error names the NIfTI file instead of failing later inside
    one-hot encoding or the loss. Float-stored labels with integer values (as in some MSD files)
    pass unchanged.
    """

    def __init__(self, keys: KeysCollection, num_classes: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_classes = int(num_classes)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            label = torch.as_tensor(d[key])
            if label.is_floating_point() and not bool(torch.equal(label, torch.round(label))):
                raise DatasetError(
                    f"label file {_source_file(d, key)} holds non-integer values; labels must be class indices "
                    "(was it resampled with linear interpolation?)."
                )
            lo, hi = int(label.min()), int(label.max())
            if lo < 0 or hi >= self.num_classes:
                raise DatasetError(
                    f"label file {_source_file(d, key)} holds labels {lo}..{hi} but num_classes={self.num_classes} "
                    f"(classes 0..{self.num_classes - 1}); pass --num_classes {hi + 1} or fix the labels."
                )
        return d


class CheckFiniteImaged(MapTransform):
    """Reject images with NaN or inf voxels right after loading, naming the file: otherwise the network
    output turns NaN and the loss error would blame the learning rate."""

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key])
            if image.is_floating_point() and not bool(torch.isfinite(image).all()):
                bad = int((~torch.isfinite(image)).sum())
                raise DatasetError(
                    f"image file {_source_file(d, key)} holds {bad} NaN or inf voxel(s); fix or remove the case "
                    "(python -m monai_gdl.data check DIR lists every problem of a dataset)."
                )
        return d
