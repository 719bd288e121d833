"""The nnU-Net-like recipe's planning step: spacing, patch, network shape and batch size from the dataset.

nnU-Net chooses these per dataset from its "fingerprint" (voxel sizes and image sizes) instead of asking the user.
:func:`plan_dataset` does the same from ``dataset.json``/the image headers alone (no voxel is read), following the
rules of nnU-Net v2's default planner, simplified where it needs a GPU memory model:

1. **Spacing**: the median voxel size per axis (axes as the bundle sees them, reoriented to RAS). If the data are
   anisotropic (the coarsest median spacing > 3x the others) and the coarse axis also has few voxels (its median
   size x 3 is below the other axes' smallest), that axis takes the 10th percentile of its spacings (no finer than
   the other axes), as nnU-Net does, so thin-slice cases are not thrown away.
2. **Patch**: a box of 256^3 voxels shaped like the voxel spacing's inverse, clipped to the median image size at
   that spacing and rounded up to a multiple of what the network downsamples; while it holds more than
   ``max_patch_voxels`` voxels (nnU-Net: its GPU memory estimate), the axis largest relative to the median size
   shrinks by one downsampling multiple.
3. **Network** (MONAI ``DynUNet``, nnU-Net's plain UNet): nnU-Net's pooling rules (:func:`network_shape`): an
   axis is halved at a stage while its feature map stays at least ``2 x min_feature_map`` voxels, its spacing is
   within 2x of the finest, and it was halved fewer than ``max_pools`` times; the kernel is 3 on axes within 2x of
   the finest spacing, else 1. Filters ``base_filters x 2^stage``, at most ``max_filters``; deep supervision on
   every decoder level but the lowest.
4. **Batch**: as many patches as ``batch_voxels`` holds (nnU-Net: its memory estimate), at most 5% of the
   dataset's voxels (median image x cases) and at least 2, as nnU-Net caps it.

For MSD hippocampus this gives nnU-Net's own 3d_fullres plan: spacing 1 mm, patch 40 x 56 x 40, strides
1-2-2-2, kernels 3, filters 32-64-128-256 (``tests/test_planning.py`` compares with nnU-Net's planner output).
Training records the plan in ``OUTPUT_DIR/plan.json``; evaluation and inference read it from there.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from monai_gdl.bundle.atomic import atomic_write
from monai_gdl.bundle.checks import check_output_dir
from monai_gdl.bundle.datasets import DatasetError, labelled_cases, voxel_grid
from monai_gdl.bundle.ranks import rank

__all__ = ["PLAN_FILE", "PlanError", "network_shape", "plan_dataset", "plan_for_run", "recorded_plan", "target_spacing"]

PLAN_FILE = "plan.json"
ANISOTROPY = 3.0


class PlanError(DatasetError):
    """A plan that cannot be made or does not match the run."""


def _fingerprint(images: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Voxel sizes and sizes (cases x 3, RAS axis order) from the images' headers."""
    grids = [voxel_grid(path) for path in images]
    return np.asarray([g[0] for g in grids], dtype=np.float64), np.asarray([g[1] for g in grids], dtype=np.float64)


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """Rule 1 of the module: the median spacing, with nnU-Net's exception for a coarse, short axis (its 10th
    percentile, kept just above the other axes' spacing)."""
    target = np.median(spacings, axis=0)
    sizes = np.median(shapes, axis=0)
    coarse = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != coarse]
    if target[coarse] > ANISOTROPY * target[others].max() and sizes[coarse] * ANISOTROPY < sizes[others].min():
        finer = float(np.percentile(spacings[:, coarse], 10))
        target[coarse] = finer if finer >= target[others].max() else float(target[others].max()) + 1e-5
    return target


def network_shape(
    patch: Sequence[float], spacing: Sequence[float], min_feature_map: int = 4, max_pools: int = 5
) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Rule 3 of the module for a patch (voxels per axis) at ``spacing``: per stage the strides and kernel sizes,
    and the patch rounded up to a multiple of the total downsampling per axis.

    Each stage halves the axes whose feature map is still at least ``2 x min_feature_map`` voxels, whose spacing
    is below twice the finest spacing among those axes, and which were halved fewer than ``max_pools`` times (a
    single such axis only while it is at least ``3 x min_feature_map``); the stage's kernel is 3 on axes within 2x
    of the finest spacing before it halves (3 stays 3); the bottleneck's kernel is 3 everywhere."""
    size = [float(p) for p in patch]
    current = [float(s) for s in spacing]
    dims = range(len(size))
    pools = [0] * len(size)
    strides: list[list[int]] = [[1] * len(size)]
    kernels: list[list[int]] = []
    kernel = [1] * len(size)
    while True:
        big = [a for a in dims if size[a] >= 2 * min_feature_map]
        if not big:
            break
        finest = min(current[a] for a in big)
        halved = [a for a in big if current[a] / finest < 2 and pools[a] < max_pools]
        if not halved or (len(halved) == 1 and size[halved[0]] < 3 * min_feature_map):
            break
        kernel = [3 if k == 3 or current[a] / min(current) < 2 else 1 for a, k in zip(dims, kernel)]
        kernels.append(list(kernel))
        for a in halved:
            pools[a] += 1
            current[a] *= 2
            size[a] = math.ceil(size[a] / 2)
        strides.append([2 if a in halved else 1 for a in dims])
    kernels.append([3] * len(size))
    rounded = [int(math.ceil(p / 2**n) * 2**n) for p, n in zip(patch, pools)]
    return strides, kernels, rounded


def plan_dataset(
    dataset_dir: str,
    base_filters: int = 32,
    max_filters: int = 320,
    max_patch_voxels: int = 128**3,
    batch_voxels: int = 2 * 128**3,
    min_feature_map: int = 4,
    max_pools: int = 5,
) -> dict[str, Any]:
    """The plan (a JSON-able dict: ``spacing``, ``patch_size``, ``strides``, ``kernel_size``, ``filters``,
    ``deep_supr_num``, ``batch_size`` and what they came from) for the labelled cases of ``dataset_dir``,
    by the rules in the module docstring."""
    options = {
        "base_filters": base_filters,
        "max_filters": max_filters,
        "max_patch_voxels": max_patch_voxels,
        "batch_voxels": batch_voxels,
        "min_feature_map": min_feature_map,
        "max_pools": max_pools,
    }
    for name, value in options.items():
        low = 8**3 if name == "max_patch_voxels" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise PlanError(f"--plan_options#{name} {value!r}; give a whole number >= {low}.")
    images = [c["image"] for c in labelled_cases(dataset_dir)]
    if not images:
        raise PlanError(f"{dataset_dir} has no labelled cases to plan from.")
    spacings, shapes = _fingerprint(images)
    spacing = target_spacing(spacings, shapes)
    resampled = shapes * spacings / spacing
    median = np.median(resampled, axis=0)
    start = 1 / spacing
    start = np.minimum(np.round(start * (256**3 / np.prod(start)) ** (1 / 3)), median)
    strides, kernels, patch_size = network_shape(start, spacing, min_feature_map, max_pools)
    while np.prod(patch_size, dtype=np.float64) > max_patch_voxels:
        axis = int(np.argmax(np.asarray(patch_size) / median))
        smaller = list(patch_size)
        smaller[axis] -= 2 ** sum(s[axis] == 2 for s in strides)
        strides, kernels, patch_size = network_shape(smaller, spacing, min_feature_map, max_pools)
    stages = len(strides)
    patch_voxels = float(np.prod(patch_size, dtype=np.float64))
    dataset_voxels = float(np.prod(median)) * len(images)
    batch = max(2, min(round(batch_voxels / patch_voxels), round(0.05 * dataset_voxels / patch_voxels)))
    return {
        "options": options,
        "dataset_dir": os.path.abspath(dataset_dir),
        "cases": len(images),
        "median_spacing": [round(float(s), 4) for s in np.median(spacings, axis=0)],
        "median_size": [round(float(s), 1) for s in median],
        "spacing": [round(float(s), 4) for s in spacing],
        "patch_size": patch_size,
        "strides": strides,
        "kernel_size": kernels,
        "filters": [min(base_filters * 2**i, max_filters) for i in range(stages)],
        "deep_supr_num": max(stages - 2, 0),
        "batch_size": int(batch),
    }


def recorded_plan(output_dir: str) -> dict[str, Any] | None:
    """The plan recorded in ``output_dir`` (None before the first training there)."""
    path = os.path.join(output_dir, PLAN_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def plan_for_run(dataset_dir: str, output_dir: str, **options: Any) -> dict[str, Any]:
    """The plan of the run in ``output_dir``: the recorded one when there is one (evaluation, inference and a
    resumed training use what the network was trained with), else planned from ``dataset_dir`` and recorded in
    ``output_dir/plan.json`` (rank 0). ``options`` go to :func:`plan_dataset`."""
    recorded = recorded_plan(output_dir)
    if recorded is not None:
        asked = {k: v for k, v in options.items() if recorded.get("options", {}).get(k) != v}
        if asked:
            was = {k: recorded.get("options", {}).get(k) for k in asked}
            raise PlanError(
                f"{os.path.join(output_dir, PLAN_FILE)} records the plan this folder's network was trained with "
                f"({was}), but this run asks for {asked}: pass the recorded values, or another --output_dir to "
                "plan and train anew."
            )
        return recorded
    if not dataset_dir:
        raise PlanError(
            f"no {PLAN_FILE} in output_dir={output_dir!r}, and no --dataset_dir to plan from: pass the "
            "--output_dir of the trained run (training records its plan there), or --dataset_dir to plan again."
        )
    plan = plan_dataset(dataset_dir, **options)
    if rank() == 0:
        check_output_dir(output_dir)  # the plan is the run's first file: never into the package, named if unwritable
        atomic_write(os.path.join(output_dir, PLAN_FILE), lambda f: f.write(json.dumps(plan, indent=2).encode()))
    return plan
