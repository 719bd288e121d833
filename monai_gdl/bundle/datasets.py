"""NIfTI datasets in the Medical Segmentation Decathlon layout: find, split, check, synthesise.

The embedded default dataset (:func:`write_synthetic_dataset`): small MR-like volumes with a large
and a small structure (imbalanced classes), LPS-flipped affines with anisotropic spacing (so
reorientation and resampling do real work), seeded. The command line is ``python -m monai_gdl.data``.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
import shutil
from collections.abc import Sequence

import numpy as np

from monai_gdl.bundle.checks import refuse_package_folder

__all__ = [
    "DatasetError",
    "audit_dataset",
    "case_id",
    "check_labels",
    "class_names",
    "fold_cases",
    "image_files",
    "labelled_cases",
    "msd_datalist",
    "pair_mismatch",
    "resolve_dataset_dir",
    "voxel_grid",
    "write_synthetic_dataset",
]

NIFTI_PATTERNS = ("*.nii.gz", "*.nii")
SYNTH_LABELS = {"0": "background", "1": "large", "2": "small"}


class DatasetError(ValueError):
    """A dataset folder the workflow cannot use as it is; the message says what to change."""


def _label_order(item: tuple) -> int:
    """dataset.json ``labels`` entries in the order of their label value (non-numeric keys first)."""
    return int(item[0]) if str(item[0]).isdigit() else 0


def _nifti_in(folder: str) -> list[str]:
    return sorted(f for pattern in NIFTI_PATTERNS for f in glob.glob(os.path.join(folder, pattern)))


def case_id(path: str) -> str:
    """The file name without ``.nii.gz`` / ``.nii`` (``hippocampus_001``)."""
    name = os.path.basename(path)
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _is_volume(shape: Sequence[int]) -> bool:
    """3-D, allowing trailing axes of length 1 (some exporters write ``X x Y x Z x 1``)."""
    return len(shape) >= 3 and all(int(n) == 1 for n in shape[3:])


def _check_header(path: str):
    """The loaded (header-only) nibabel image of ``path``, once it is readable and 3-D."""
    import nibabel as nib

    try:
        img = nib.load(path)
        if not _is_volume(img.shape):
            raise DatasetError(
                f"{path}: a {len(img.shape)}-D image of shape {tuple(img.shape)}; the workflow expects "
                "3-D volumes (one channel)."
            )
        return img
    except DatasetError:
        raise
    except Exception as err:
        raise DatasetError(
            f"{path} is not a readable NIfTI file ({type(err).__name__}: {err}); re-export or remove it."
        ) from err


#: How far an image and its label may differ in voxel size and origin (mm) and in direction cosines.
SPACING_TOLERANCE_MM = 1e-3
ORIGIN_TOLERANCE_MM = 1e-2
DIRECTION_TOLERANCE = 1e-4


def _geometry(affine: np.ndarray, shape: Sequence[int]) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Spatial shape, voxel size (mm), origin (mm) and direction cosines (columns) of a voxel grid."""
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = affine[:3, :3] / np.where(spacing > 0, spacing, 1.0)
    return tuple(int(n) for n in shape), spacing, affine[:3, 3], direction


def _as_ras(img) -> tuple[str, tuple[np.ndarray, tuple[int, ...]]]:
    """The image's axis codes (e.g. ``"LPS"``) and its voxel grid reoriented to RAS (affine, shape): what the
    bundle's ``Orientationd(axcodes="RAS")`` makes of it."""
    import nibabel as nib

    affine, shape = np.asarray(img.affine, dtype=np.float64), tuple(int(n) for n in img.shape[:3])
    ornt = nib.orientations.io_orientation(affine)
    ras_shape = [0, 0, 0]
    for axis, (target, _) in enumerate(ornt):
        ras_shape[int(target)] = shape[axis]
    ras_affine = affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    return "".join(nib.orientations.aff2axcodes(affine)), (ras_affine, tuple(ras_shape))


def voxel_grid(path: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Voxel size (mm) and size of the image at ``path`` per axis as the bundle sees it (reoriented to RAS),
    from its header alone."""
    affine, shape = _as_ras(_check_header(path))[1]
    return np.linalg.norm(affine[:3, :3], axis=0), shape


def pair_mismatch(image, label) -> str | None:
    """What differs between an image and its label, compared in world space as the pipeline sees them (both
    reoriented to RAS), or None when they cover the same voxels within the tolerances. A label stored in
    another orientation (LPS vs RAS) over the same voxels matches; a real difference is named: orientation,
    shape, spacing, origin or direction. ``image``/``label`` are loaded nibabel images."""
    (codes1, grid1), (codes2, grid2) = _as_ras(image), _as_ras(label)
    (s1, sp1, o1, d1), (s2, sp2, o2, d2) = _geometry(*grid1), _geometry(*grid2)
    fmt = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
    diff = None
    if s1 != s2:
        diff = f"shape {s1} vs {s2}"
    elif np.abs(sp1 - sp2).max() > SPACING_TOLERANCE_MM:
        diff = f"spacing {fmt(sp1)} vs {fmt(sp2)} mm"
    elif np.abs(o1 - o2).max() > ORIGIN_TOLERANCE_MM:
        diff = f"origin {fmt(o1)} vs {fmt(o2)} mm (shifted by {np.linalg.norm(o1 - o2):.3g} mm)"
    elif np.abs(d1 - d2).max() > DIRECTION_TOLERANCE:
        diff = f"direction {np.round(d1, 4).tolist()} vs {np.round(d2, 4).tolist()}"
    if diff is None:
        return None
    if codes1 != codes2:
        return f"orientation {codes1} vs {codes2}, and reoriented to RAS alike they still differ: {diff}"
    return diff


def _check_pair(image_path: str, label_path: str) -> None:
    diff = pair_mismatch(_check_header(image_path), _check_header(label_path))
    if diff is not None:
        raise DatasetError(
            f"image {image_path} and label {label_path} are not on the same voxel grid ({diff}); the label would be "
            "misaligned with the image. Re-export the label on the image's grid (same shape and affine) or remove "
            "the case."
        )


def _load_dataset_json(dataset_dir: str) -> dict | None:
    path = os.path.join(dataset_dir, "dataset.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path} is not valid JSON ({err}); fix it or delete it to pair imagesTr/labelsTr by name."
        ) from err


def _json_pairs(dataset_dir: str, entries: Sequence[dict], key: str) -> tuple[list[dict], list[str], list[str]]:
    """The cases of a ``dataset.json`` list whose files exist, the malformed entries and the missing files
    (each a line naming the entry)."""
    pairs, malformed, missing = [], [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            malformed.append(f"dataset.json '{key}'[{i}] = {entry!r}: each entry needs 'image' and 'label' paths")
            continue
        case = {k: os.path.normpath(os.path.join(dataset_dir, entry[k])) for k in ("image", "label")}
        gone = [case[k] for k in ("image", "label") if not os.path.isfile(case[k])]
        missing += [f"{path}: listed in dataset.json '{key}'[{i}] but missing" for path in gone]
        if not gone:
            pairs.append(case)
    return pairs, malformed, missing


def _pairs_from_json(dataset_dir: str, entries: Sequence[dict], key: str) -> list[dict]:
    pairs, malformed, missing = _json_pairs(dataset_dir, entries, key)
    if malformed:
        raise DatasetError(f"{malformed[0]}.")
    if missing:
        paths = [line.split(": listed in", 1)[0] for line in missing]
        raise DatasetError(
            f"dataset.json in {dataset_dir} lists {len(missing)} file(s) that do not exist, e.g. {paths[:3]}; "
            "fix the paths or remove the entries."
        )
    return pairs


def _pairs_from_folders(dataset_dir: str) -> list[dict]:
    images_dir, labels_dir = os.path.join(dataset_dir, "imagesTr"), os.path.join(dataset_dir, "labelsTr")
    if not os.path.isdir(images_dir):
        raise DatasetError(
            f"dataset_dir={dataset_dir!r} has no imagesTr/ folder (found: {sorted(os.listdir(dataset_dir))[:8]}); "
            "use the MSD layout imagesTr/*.nii.gz + labelsTr/*.nii.gz."
        )
    images = _nifti_in(images_dir)
    if not images:
        raise DatasetError(f"{images_dir} holds no .nii/.nii.gz images.")
    labels = {case_id(p): p for p in _nifti_in(labels_dir)} if os.path.isdir(labels_dir) else {}
    unlabeled = [os.path.basename(p) for p in images if case_id(p) not in labels]
    if unlabeled:
        raise DatasetError(
            f"{len(unlabeled)} image(s) in {images_dir} have no label of the same name in {labels_dir}, "
            f"e.g. {unlabeled[:3]}; add the labels or move those images out (e.g. to imagesTs/)."
        )
    return [{"image": p, "label": labels[case_id(p)]} for p in images]


def _labelled_cases(dataset_dir: str) -> tuple[list[dict], list[dict] | None]:
    """Every labelled case of the dataset, and the validation list ``dataset.json`` fixes (None if none)."""
    if not dataset_dir or not os.path.isdir(dataset_dir):
        raise DatasetError(
            f"dataset_dir={dataset_dir!r} does not exist; pass --dataset_dir DIR holding imagesTr/ and labelsTr/ "
            "(MSD layout), or leave dataset_dir empty to train on the generated synthetic dataset."
        )
    meta = _load_dataset_json(dataset_dir)
    if meta and meta.get("training"):
        cases = _pairs_from_json(dataset_dir, meta["training"], "training")
        fixed_val = _pairs_from_json(dataset_dir, meta["validation"], "validation") if meta.get("validation") else None
        return cases, fixed_val
    return _pairs_from_folders(dataset_dir), None


def labelled_cases(dataset_dir: str) -> list[dict]:
    """Every labelled case (``dataset.json``'s training and validation lists, or the folders' pairs)."""
    cases, fixed_val = _labelled_cases(dataset_dir)
    known = {c["image"] for c in cases}
    return cases + [c for c in fixed_val or [] if c["image"] not in known]


def msd_datalist(
    dataset_dir: str,
    split: str = "training",
    val_fraction: float = 0.2,
    seed: int = 0,
    check_files: bool = True,
    *,
    fold: int = 0,
    num_folds: int = 0,
) -> list[dict]:
    """``[{"image": path, "label": path}, ...]`` for ``split`` in ``"training"``/``"validation"``.

    Cases come from ``dataset.json``'s ``training`` list when present, else from pairing
    ``imagesTr`` with ``labelsTr`` by file name. A ``validation`` list in ``dataset.json`` fixes the
    split; otherwise a seeded shuffle holds out ``val_fraction`` of the cases (at least one).
    With ``num_folds`` >= 2 the split is fold ``fold`` of a ``num_folds``-fold cross-validation instead
    (:func:`fold_cases`; ``val_fraction`` is not used). ``check_files`` reads every header: 3-D,
    readable, and each label on its image's voxel grid (:func:`pair_mismatch`).
    """
    if split not in ("training", "validation"):
        raise DatasetError(f"split={split!r}; use 'training' or 'validation'.")
    cases, fixed_val = _labelled_cases(dataset_dir)
    if fold and not num_folds:
        raise DatasetError(f"--fold {fold} without --num_folds; pass --num_folds 5 (or the number of folds) too.")
    if num_folds:
        if fixed_val is not None:
            raise DatasetError(
                f"--num_folds {num_folds} splits the cases into folds, but {dataset_dir}/dataset.json fixes a "
                "validation list; drop --num_folds to use that list, or remove it from dataset.json."
            )
        val_set = {c["image"] for c in fold_cases(cases, fold, num_folds, seed)}
        chosen = [c for c in cases if (c["image"] in val_set) == (split == "validation")]
    elif fixed_val is not None:
        val_set = {p["image"] for p in fixed_val}
        chosen = fixed_val if split == "validation" else [p for p in cases if p["image"] not in val_set]
    else:
        if len(cases) < 2:
            raise DatasetError(
                f"{dataset_dir} has {len(cases)} labelled case(s); at least 2 are needed to train and validate."
            )
        order = list(range(len(cases)))
        random.Random(seed).shuffle(order)
        n_val = min(len(cases) - 1, max(1, round(val_fraction * len(cases))))
        val_idx = set(order[:n_val])
        chosen = [c for i, c in enumerate(cases) if (i in val_idx) == (split == "validation")]
    if check_files:
        for case in chosen:
            _check_pair(case["image"], case["label"])
    return chosen


def fold_cases(cases: Sequence[dict], fold: int, num_folds: int, seed: int = 0) -> list[dict]:
    """The validation cases of fold ``fold`` of ``num_folds``: the cases, ordered by name and shuffled with
    ``seed``, cut into ``num_folds`` contiguous parts whose sizes differ by at most one (the first ones
    larger, as scikit-learn's ``KFold``); the folds' validation sets are disjoint and cover every case."""
    for name, value, low in (("num_folds", num_folds, 2), ("fold", fold, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DatasetError(f"--{name} {value!r}; give a whole number >= {low}.")
    if fold >= num_folds:
        raise DatasetError(f"--fold {fold} with --num_folds {num_folds}; folds are numbered 0 to {num_folds - 1}.")
    if len(cases) < num_folds:
        raise DatasetError(
            f"--num_folds {num_folds} but the dataset has {len(cases)} labelled case(s); use at most {len(cases)}."
        )
    order = sorted(cases, key=lambda c: case_id(c["image"]))
    random.Random(seed).shuffle(order)
    size, extra = divmod(len(order), num_folds)
    start = fold * size + min(fold, extra)
    return order[start : start + size + (fold < extra)]


def _read_volume(path: str, problems: list[str]):
    """The loaded image and its voxels, or None after noting why it cannot be used."""
    import nibabel as nib

    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as err:
        problems.append(f"{path}: cannot be read, truncated or corrupt ({type(err).__name__}: {err})")
        return None, None
    if not _is_volume(data.shape):
        problems.append(f"{path}: a {data.ndim}-D image of shape {tuple(data.shape)}; the workflow expects 3-D volumes")
        return None, None
    return img, data.reshape(data.shape[:3])


def _label_problems(path: str, data: np.ndarray, num_classes: int | None) -> list[str]:
    problems = []
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            return [f"{path}: label holds NaN or inf values"]
        if not np.array_equal(data, np.round(data)):
            return [f"{path}: label holds non-integer values (resampled with linear interpolation?)"]
    lo, hi = int(data.min()), int(data.max())
    if lo < 0:
        problems.append(f"{path}: label holds negative values (min {lo})")
    if num_classes is not None and hi >= num_classes:
        problems.append(f"{path}: label holds class {hi} but num_classes={num_classes} (classes 0..{num_classes - 1})")
    return problems


def audit_dataset(dataset_dir: str, num_classes: int | None = None) -> tuple[list[dict], list[str]]:
    """Every case of ``dataset_dir`` and every problem training would choke on or silently mis-learn.

    Reads each file whole: unreadable or truncated files, images that are not 3-D, NaN/inf voxels,
    labels that are non-integer, negative or ``>= num_classes`` (default: the number of
    ``dataset.json`` ``labels``), images and labels not on one voxel grid, entries of
    ``dataset.json`` whose files are missing, images without a label. One line per problem.
    """
    if not dataset_dir or not os.path.isdir(dataset_dir):
        return [], [f"dataset_dir={dataset_dir!r} does not exist"]
    problems: list[str] = []
    try:
        meta = _load_dataset_json(dataset_dir)
    except DatasetError as err:
        return [], [str(err)]
    if num_classes is None and meta and isinstance(meta.get("labels"), dict) and meta["labels"]:
        num_classes = len(meta["labels"])
    if meta and meta.get("training"):
        cases, malformed, missing = _json_pairs(dataset_dir, meta["training"], "training")
        problems += malformed + missing
    else:
        try:
            cases = _pairs_from_folders(dataset_dir)
        except DatasetError as err:
            return [], [str(err)]
    for case in cases:
        image, image_data = _read_volume(case["image"], problems)
        label, label_data = _read_volume(case["label"], problems)
        if image_data is not None and not np.isfinite(image_data).all():
            bad = int((~np.isfinite(image_data)).sum())
            problems.append(f"{case['image']}: {bad} NaN or inf voxel(s)")
        if label_data is not None:
            problems += _label_problems(case["label"], label_data, num_classes)
        if image is not None and label is not None:
            diff = pair_mismatch(image, label)
            if diff is not None:
                problems.append(f"{case['image']} and {case['label']}: not on the same voxel grid ({diff})")
    return cases, problems


def check_labels(dataset_dir: str, num_classes: int, cases: Sequence[dict]) -> list[int]:
    """Read every label of ``cases`` before training loads any data; return the classes found.

    A label holding values outside ``0 .. num_classes - 1`` (or non-integer values), or a
    ``dataset.json`` whose ``labels`` name more classes than ``num_classes``, is a
    :class:`DatasetError` naming the files and the fix. Classes that no label holds are a warning
    naming them: they would be trained as always absent, and their Dice is nan (no voxel to match), left out
    of the mean Dice.
    """
    meta = _load_dataset_json(dataset_dir) if dataset_dir and os.path.isdir(dataset_dir) else None
    listed = (meta or {}).get("labels")
    if isinstance(listed, dict) and len(listed) > num_classes:
        raise DatasetError(
            f"num_classes={num_classes} but {os.path.join(dataset_dir, 'dataset.json')} names {len(listed)} classes "
            f"({', '.join(f'{k} {v}' for k, v in sorted(listed.items(), key=_label_order))}); "
            f"pass --num_classes {len(listed)}."
        )
    found: set[int] = set()
    problems: list[str] = []
    for case in cases:
        _, data = _read_volume(case["label"], problems)
        if data is None:
            continue
        problems += _label_problems(case["label"], data, num_classes)
        if np.isfinite(data).all():
            found.update(int(v) for v in np.unique(data))
    if problems:
        highest = max(found, default=-1)
        fix = f"Pass --num_classes {highest + 1} or fix those labels" if highest >= num_classes else "Fix those labels"
        raise DatasetError(
            f"{len(problems)} label file(s) cannot be used with num_classes={num_classes} (classes "
            f"0..{num_classes - 1}): "
            + "; ".join(problems[:3])
            + ("; ..." if len(problems) > 3 else "")
            + f". {fix} (python -m monai_gdl.data check DIR lists every problem)."
        )
    never = [c for c in range(num_classes) if c not in found]
    if never:
        names, seen = class_names(dataset_dir, num_classes), max(found, default=0) + 1
        logging.getLogger("monai_gdl.bundle").warning(
            "warning: num_classes=%d but class(es) %s never appear in the %d label files: the network will learn them "
            "as absent, and they have no Dice (MONAI's MeanDice scores a class absent from a label as nan and leaves "
            "it out of the mean Dice; the epoch line, history.csv and the evaluation CSVs show nan for them); pass "
            "--num_classes %d if the data has %d classes.",
            num_classes,
            ", ".join(f"{c} ({names[c]})" for c in never),
            len(cases),
            seen,
            seen,
        )
    return sorted(found)


def class_names(dataset_dir: str, num_classes: int) -> list[str]:
    """Class names from ``dataset.json``'s ``labels`` (``class_i`` where none is given)."""
    meta = _load_dataset_json(dataset_dir) if dataset_dir and os.path.isdir(dataset_dir) else None
    labels = (meta or {}).get("labels", {})
    return [str(labels.get(str(i), f"class_{i}")) for i in range(num_classes)]


def image_files(input_dir: str) -> list[dict]:
    """``[{"image": path}, ...]`` for every NIfTI file in ``input_dir``, or ``input_dir`` itself when it is one
    NIfTI file (inference input)."""
    if not input_dir:
        raise DatasetError(
            "no input given: pass --input_dir FOLDER of .nii/.nii.gz images (or one .nii/.nii.gz file), or "
            "--dataset_dir DIR to segment DIR/imagesTs."
        )
    if os.path.isfile(input_dir):
        if not input_dir.endswith((".nii", ".nii.gz")):
            raise DatasetError(
                f"input_dir={input_dir!r} is not a NIfTI image (.nii/.nii.gz), which is what inference reads: "
                "convert it to NIfTI (nibabel, or MONAI's LoadImage + SaveImage) or pass a folder of .nii/.nii.gz "
                "images."
            )
        _check_header(input_dir)
        return [{"image": input_dir}]
    if not os.path.isdir(input_dir):
        raise DatasetError(f"input_dir={input_dir!r} does not exist; pass --input_dir FOLDER of .nii/.nii.gz images.")
    files = _nifti_in(input_dir)
    if not files:
        raise DatasetError(f"input_dir={input_dir!r} holds no .nii/.nii.gz images.")
    for f in files:
        _check_header(f)
    return [{"image": f} for f in files]


def _ellipsoid(grid: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1.0


def write_synthetic_dataset(
    out_dir: str,
    num_cases: int = 20,
    shape: Sequence[int] = (48, 48, 32),
    spacing: Sequence[float] = (1.0, 1.0, 1.5),
    seed: int = 0,
) -> str:
    """Write an MSD-layout dataset of MR-like volumes to ``out_dir`` and return ``out_dir``.

    Class 1 is a large ellipsoid (about 10% of voxels), class 2 a small sphere beside it (about
    0.5%): the imbalance GDL is made for. Affines are LPS-flipped with an offset origin and
    anisotropic spacing, so orientation and resampling in the workflow are exercised.
    """
    import nibabel as nib

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "labelsTr"), exist_ok=True)
    shape = tuple(int(s) for s in shape)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    physical = grid * np.asarray(spacing, dtype=np.float32)[:, None, None, None]
    extent = np.asarray(shape) * np.asarray(spacing)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [extent[0] / 2, extent[1] / 2, -extent[2] / 2]
    entries = []
    for i in range(num_cases):
        centre = extent * rng.uniform(0.4, 0.6, 3)
        radii = extent * rng.uniform(0.18, 0.24, 3)
        label = np.zeros(shape, dtype=np.uint8)
        label[_ellipsoid(physical, centre, radii)] = 1
        offset = rng.choice([-1, 1], 3) * (radii + extent * 0.08)
        small_centre = np.clip(centre + offset * np.array([1.0, 0.0, 0.0]), extent * 0.12, extent * 0.88)
        label[_ellipsoid(physical, small_centre, np.full(3, extent.min() * rng.uniform(0.07, 0.09)))] = 2
        means = np.array([100.0, 180.0, 60.0]) + rng.normal(0, 8, 3)
        bias = 1.0 + 0.15 * np.sin(physical[0] / extent[0] * np.pi + rng.uniform(0, np.pi))
        image = (means[label] * bias + rng.normal(0, 20.0, shape)).astype(np.float32)
        name = f"synth_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), os.path.join(out_dir, "imagesTr", name))
        nib.save(nib.Nifti1Image(label, affine), os.path.join(out_dir, "labelsTr", name))
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": "monai_gdl synthetic",
        "description": "Seeded synthetic MR-like volumes: a large and a small structure (imbalanced classes).",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": SYNTH_LABELS,
        "numTraining": num_cases,
        "training": entries,
    }
    with open(os.path.join(out_dir, "dataset.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return out_dir


def resolve_dataset_dir(dataset_dir: str, output_dir: str) -> str:
    """``dataset_dir`` itself, or (when empty) the synthetic default under ``output_dir``, generated on first use."""
    if dataset_dir:
        return os.path.abspath(os.path.expanduser(dataset_dir))
    refuse_package_folder(output_dir)
    synth = os.path.join(os.path.abspath(os.path.expanduser(output_dir)), "synthetic_data")
    if not os.path.isfile(os.path.join(synth, "dataset.json")):
        staging = f"{synth}.tmp-{os.getpid()}"  # several ranks may get here at once: first rename wins
        write_synthetic_dataset(staging)
        try:
            os.rename(staging, synth)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return synth
