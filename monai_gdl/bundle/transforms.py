"""The bundle's loading transforms (shared by training, evaluation and inference) and the dictionary
transforms it adds to MONAI's: label checks that name the file, intensity presets."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import (
    EnsureTyped,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)

__all__ = ["CheckFiniteImaged", "CheckLabelsd", "LoadNamedImaged", "intensity_normalization", "load_transforms"]


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
            raise ValueError(
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
                raise ValueError(
                    f"label file {_source_file(d, key)} holds non-integer values; labels must be class indices "
                    "(was it resampled with linear interpolation?)."
                )
            lo, hi = int(label.min()), int(label.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(
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
                raise ValueError(
                    f"image file {_source_file(d, key)} holds {bad} NaN or inf voxel(s); fix or remove the case "
                    "(python -m monai_gdl.data check DIR lists every problem of a dataset)."
                )
        return d


def intensity_normalization(
    modality: str, keys: KeysCollection = "image", ct_window: Sequence[float] = (-175.0, 250.0)
) -> MapTransform:
    """``"mr"``: z-score over nonzero voxels per channel; ``"ct"``: clip ``ct_window`` (HU) to [0, 1]."""
    if modality == "mr":
        return NormalizeIntensityd(keys=keys, nonzero=True, channel_wise=True)
    if modality == "ct":
        lo, hi = ct_window
        return ScaleIntensityRanged(keys=keys, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
    raise ValueError(f"intensity={modality!r}; use 'mr' (z-score) or 'ct' (HU window, see ct_window).")


def load_transforms(
    keys: Sequence[str],
    num_classes: int,
    spacing: Sequence[float],
    intensity: str = "mr",
    ct_window: Sequence[float] = (-175.0, 250.0),
) -> list:
    """Load NIfTI, check voxels and labels (naming the file), reorient to RAS, resample to ``spacing``, normalise.

    ``keys`` is ``["image", "label"]`` for training/evaluation and ``["image"]`` for inference.
    """
    keys = list(keys)
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    transforms = [LoadNamedImaged(keys=keys, image_only=True, ensure_channel_first=True),
                  CheckFiniteImaged(keys="image")]
    if "label" in keys:
        transforms.append(CheckLabelsd(keys="label", num_classes=num_classes))
    transforms += [
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=keys, pixdim=spacing, mode=modes),
        intensity_normalization(intensity, keys="image", ct_window=ct_window),
        EnsureTyped(keys=keys, dtype=torch.float32),
    ]
    return transforms
