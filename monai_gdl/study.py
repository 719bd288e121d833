"""``python -m monai_gdl.study``: the Dice-family losses trained side by side and measured.

Answers, after Sudre et al. 2017: does GDL keep small-structure Dice where Dice-only training loses
it, at what cost on the large structure, and how does either compare with Dice + CE? Are the loss
values of V-Net Dice and GDL comparable (``1 - loss`` against the measured Dice over training)? And for
small and thin structures: do Tversky, focal Tversky, Skeleton Recall or the boundary loss beat Dice + CE,
and how do they compare with MONAI's clDice (``SoftDiceclDiceLoss``)?

Datasets: synthetic NIfTI with a large structure (about 17% of the voxels) and a small one at a
controlled share of the voxels (0.1%, 1%, 5%), or branching tubes of radius 1-2 voxels (``thin``),
written in MSD layout and loaded through the bundle's transforms; and the real MSD Task04 hippocampus
cases (``--hippocampus DIR``). Every loss trains the same 3D UNet from the same initialisation per seed,
on whole (padded) volumes, for each learning rate. Losses that read a structure map (skeleton, distances)
get it computed once per case, as the bundle's data pipeline does. Per epoch the validation cases are
scored: per-class Dice of the argmax prediction and the loss itself; after the last epoch also the
small/thin class's centreline Dice (clDice as a metric), connected-component count error and 95th
percentile Hausdorff distance (MONAI's ``HausdorffDistanceMetric``).

Output in ``--out``: ``runs.csv`` (one row per run and class), ``curves.csv`` (per epoch),
``summary.md`` (mean +- std over seeds at each learning rate, epochs to reach ``--target_dice``,
the structure metrics and seconds per epoch), ``dice_curves.png`` and ``loss_vs_dice.png``.
``--quick`` is a two-minute smoke run (tests).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["LOSSES", "StudySettings", "main", "run_study", "write_imbalance_dataset", "write_tube_dataset"]

#: name -> (constructor, what it is). All take label maps and logits.
LOSSES: dict[str, tuple[Callable[[], torch.nn.Module], str]] = {}
#: The structure map a loss reads (its forward's keyword): computed once per case, never in the loss.
MAPS = {"dice_ce_skeleton": "skeleton", "dice_ce_boundary": "distance"}
#: The losses of the first study (Dice or GDL?) and of the small and thin structures study.
DICE_OR_GDL = ("vnet_dice", "gdl_square", "gdl_square_zero", "gdl_simple", "gdl_uniform", "vnet_dice_ce", "gdl_ce")
STRUCTURES = (
    "vnet_dice_ce",
    "tversky_ce",
    "focal_tversky",
    "dice_ce_skeleton",
    "dice_ce_boundary",
    "monai_dice_cldice",
)


def _register_losses() -> None:
    from monai.losses import SoftDiceclDiceLoss

    from monai_gdl import (
        FocalTverskyLoss,
        SalehiTverskyCELoss,
        SudreGeneralizedDiceCELoss,
        SudreGeneralizedDiceLoss,
        VNetDiceCEBoundaryLoss,
        VNetDiceCELoss,
        VNetDiceCESkeletonRecallLoss,
        VNetDiceLoss,
    )

    gdl = dict(softmax=True, to_onehot_y=True)
    LOSSES.update(
        {
            "vnet_dice": (
                lambda: VNetDiceLoss(softmax=True, to_onehot_y=True),
                "V-Net Dice (squared, mean over classes)",
            ),
            "gdl_square": (lambda: SudreGeneralizedDiceLoss(**gdl, w_type="square"), "GDL, 1/V^2, absent class: max"),
            "gdl_square_zero": (
                lambda: SudreGeneralizedDiceLoss(**gdl, w_type="square", absent_class="zero"),
                "GDL, 1/V^2, absent class: zero",
            ),
            "gdl_simple": (lambda: SudreGeneralizedDiceLoss(**gdl, w_type="simple"), "GDL, 1/V"),
            "gdl_uniform": (lambda: SudreGeneralizedDiceLoss(**gdl, w_type="uniform"), "GDL, uniform weights"),
            "vnet_dice_ce": (lambda: VNetDiceCELoss(to_onehot_y=True), "V-Net Dice + cross-entropy"),
            "gdl_ce": (lambda: SudreGeneralizedDiceCELoss(to_onehot_y=True), "GDL (1/V^2) + cross-entropy"),
            "tversky_ce": (
                lambda: SalehiTverskyCELoss(to_onehot_y=True, alpha=0.3, beta=0.7),
                "Tversky (alpha 0.3 on FP, beta 0.7 on FN) + cross-entropy",
            ),
            "focal_tversky": (
                lambda: FocalTverskyLoss(softmax=True, to_onehot_y=True),
                "focal Tversky (alpha 0.3, beta 0.7, exponent 0.75), alone",
            ),
            "dice_ce_skeleton": (
                lambda: VNetDiceCESkeletonRecallLoss(to_onehot_y=True),
                "V-Net Dice + CE + Skeleton Recall (weight 1, tube of 2 dilations)",
            ),
            "dice_ce_boundary": (
                lambda: VNetDiceCEBoundaryLoss(to_onehot_y=True),
                "V-Net Dice + CE + boundary loss (region weight 1 - 0.01 per epoch, as Kervadec et al.)",
            ),
            "monai_dice_cldice": (
                lambda: SoftDiceclDiceLoss(softmax=True, to_onehot_y=True),
                "MONAI SoftDiceclDiceLoss (Dice + soft clDice, alpha 0.5, 3 iterations)",
            ),
        }
    )


_register_losses()


@dataclass
class StudySettings:
    """What one study run trains; the defaults are the full study of the README."""

    out: str = "runs/study"
    datasets: Sequence[str] = ("synthetic_0.1", "synthetic_1", "synthetic_5", "hippocampus")
    losses: Sequence[str] = DICE_OR_GDL
    seeds: Sequence[int] = (0, 1, 2)
    learning_rates: Sequence[float] = (1e-3, 3e-3)
    epochs: int = 30
    synthetic_cases: int = 24
    synthetic_shape: Sequence[int] = (32, 32, 32)
    hippocampus: str = ""
    hippocampus_cases: int = 60
    batch_size: int = 4
    channels: Sequence[int] = (8, 16, 32, 64)
    target_dice: float = 0.7
    threads: int = 0


def _save_case(out_dir: str, file: str, label: np.ndarray, rng: np.random.Generator) -> dict:
    """An MR-like image for ``label`` (class means with noise and a bias field) and the label, in MSD layout."""
    import nibabel as nib

    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    grid = np.stack(np.meshgrid(*[(np.arange(s) + 0.5) / s for s in label.shape], indexing="ij"))
    means = np.array([100.0, 160.0, 60.0]) + rng.normal(0, 5, 3)
    bias = 1.0 + 0.1 * np.sin(grid[0] * np.pi + rng.uniform(0, np.pi))
    image = (means[label] * bias + rng.normal(0, 25.0, label.shape)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), os.path.join(out_dir, "imagesTr", file))
    nib.save(nib.Nifti1Image(label, np.eye(4)), os.path.join(out_dir, "labelsTr", file))
    return {"image": f"./imagesTr/{file}", "label": f"./labelsTr/{file}"}


def _write_dataset_json(out_dir: str, name: str, small: str, entries: list[dict]) -> None:
    meta = {
        "name": name,
        "labels": {"0": "background", "1": "large", "2": small},
        "numTraining": len(entries),
        "training": entries,
    }
    with open(os.path.join(out_dir, "dataset.json"), "w") as f:
        json.dump(meta, f, indent=1)


def _large_structure(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Class 1: an ellipsoid of about 17% of the voxels, on the low side of the first axis."""
    grid = np.stack(np.meshgrid(*[(np.arange(s) + 0.5) / s for s in shape], indexing="ij"))  # unit cube
    centre = np.array([0.3, 0.5, 0.5]) + rng.uniform(-0.04, 0.04, 3)
    radii = np.array([0.25, 0.4, 0.4]) * rng.uniform(0.92, 1.08, 3)
    label = np.zeros(shape, dtype=np.uint8)
    label[(((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1] = 1
    return label


def write_tube_dataset(out_dir: str, num_cases: int, shape: Sequence[int], seed: int) -> tuple[str, float]:
    """Thin structures: beside the large ellipsoid (class 1), class 2 is a random branching tree of tubes of
    radius 1 to 2 voxels (a trunk and two or three branches, each a straight segment) in the free half of the
    volume. Returns the folder and the tubes' measured share of the voxels (mean over cases)."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    voxels = np.stack(np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij"), axis=-1)
    entries, shares = [], []
    for i in range(num_cases):
        label = _large_structure(shape, rng)
        lo = np.array([0.62, 0.1, 0.1]) * np.array(shape)
        hi = np.array([0.95, 0.9, 0.9]) * np.array(shape)
        root, fork = rng.uniform(lo, hi), rng.uniform(lo, hi)
        segments = [(root, fork)] + [(fork, rng.uniform(lo, hi)) for _ in range(int(rng.integers(2, 4)))]
        tubes = np.zeros(shape, dtype=bool)
        for a, b in segments:
            radius = rng.uniform(1.0, 2.0)
            t = np.clip(((voxels - a) @ (b - a)) / max((b - a) @ (b - a), 1e-9), 0.0, 1.0)
            tubes |= np.linalg.norm(voxels - (a + t[..., None] * (b - a)), axis=-1) <= radius
        label[tubes & (label == 0)] = 2
        shares.append(float((label == 2).mean()))
        entries.append(_save_case(out_dir, f"thin_{i:03d}.nii.gz", label, rng))
    _write_dataset_json(out_dir, "thin tubes", "thin", entries)
    return out_dir, float(np.mean(shares))


def write_imbalance_dataset(
    out_dir: str, small_fraction: float, num_cases: int, shape: Sequence[int], seed: int
) -> tuple[str, float]:
    """An MSD-layout NIfTI dataset: class 1 an ellipsoid of about 17% of the voxels, class 2 a sphere
    of ``small_fraction`` of them beside it, MR-like intensities with noise and a bias field. Returns the
    folder and the small structure's measured share of the voxels (mean over cases)."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    grid = np.stack(np.meshgrid(*[(np.arange(s) + 0.5) / s for s in shape], indexing="ij"))  # unit cube
    entries, shares = [], []
    for i in range(num_cases):
        label = _large_structure(shape, rng)
        radius = (3 * small_fraction / (4 * math.pi)) ** (1 / 3) * rng.uniform(0.95, 1.05)
        small_centre = np.array([0.97 - radius - 0.02, 0.5, 0.5]) + np.r_[0.0, rng.uniform(-0.15, 0.15, 2)]
        label[(((grid - small_centre[:, None, None, None]) / radius) ** 2).sum(0) <= 1] = 2
        shares.append(float((label == 2).mean()))
        entries.append(_save_case(out_dir, f"imb_{i:03d}.nii.gz", label, rng))
    _write_dataset_json(out_dir, f"imbalance {small_fraction:g}", "small", entries)
    return out_dir, float(np.mean(shares))


@dataclass
class _Data:
    name: str
    train: list
    val: list
    class_names: list
    note: str


def _cached(files: list, keys: Sequence[str], spatial: Sequence[int]) -> list:
    """Loaded, normalised, padded/cropped volumes (the bundle's loading transforms), kept in memory."""
    from monai.transforms import Compose, ResizeWithPadOrCropd

    from monai_gdl import signed_distance_map, tubed_skeleton
    from monai_gdl.bundle.files import load_config

    bundle = load_config("train", num_classes=3, spacing=[1.0, 1.0, 1.0])
    transform = Compose(
        bundle.get_parsed_content("load")
        + bundle.get_parsed_content("resample")
        + [ResizeWithPadOrCropd(keys=list(keys), spatial_size=list(spatial))]
    )
    items = [transform(f) for f in files]
    cases = [{k: torch.as_tensor(item[k]).as_subclass(torch.Tensor).float() for k in keys} for item in items]
    for case in cases:  # the structure maps, once per case (as the bundle's cached data pipeline makes them)
        case["skeleton"] = torch.from_numpy(tubed_skeleton(case["label"], 3))[None]
        case["distance"] = torch.from_numpy(signed_distance_map(case["label"], 3))
    return cases


def _datasets(settings: StudySettings, work: str) -> list[_Data]:
    from monai_gdl.bundle.datasets import class_names, msd_datalist

    out = []
    for name in settings.datasets:
        if name == "thin":
            folder, share = write_tube_dataset(
                os.path.join(work, name), settings.synthetic_cases, settings.synthetic_shape, seed=0
            )
            spatial = settings.synthetic_shape
            note = (
                f"synthetic {tuple(settings.synthetic_shape)}, branching tubes of radius 1-2 voxels, "
                f"{100 * share:.2f}% of voxels"
            )
            train_files = msd_datalist(folder, "training", 0.25, 0)
            val_files = msd_datalist(folder, "validation", 0.25, 0)
        elif name.startswith("synthetic_"):
            percent = float(name.split("_", 1)[1])
            folder, share = write_imbalance_dataset(
                os.path.join(work, name), percent / 100, settings.synthetic_cases, settings.synthetic_shape, seed=0
            )
            spatial = settings.synthetic_shape
            note = f"synthetic {tuple(settings.synthetic_shape)}, small structure {100 * share:.2f}% of voxels"
            train_files = msd_datalist(folder, "training", 0.25, 0)
            val_files = msd_datalist(folder, "validation", 0.25, 0)
        elif name == "hippocampus":
            folder = settings.hippocampus
            if not folder or not os.path.isdir(folder):
                raise SystemExit(
                    f"error: dataset 'hippocampus' needs --hippocampus DIR (MSD Task04 folder); got "
                    f"{folder!r}. Leave it out with --datasets."
                )
            files = msd_datalist(folder, "training", 0.2, 0) + msd_datalist(folder, "validation", 0.2, 0)
            files = sorted(files, key=lambda f: f["image"])[: settings.hippocampus_cases]
            cut = round(0.75 * len(files))
            train_files, val_files = files[:cut], files[cut:]
            spatial = (40, 56, 40)
            note = f"MSD Task04 hippocampus, {len(files)} cases padded to {spatial}"
        else:
            raise SystemExit(f"error: unknown dataset {name!r}; use synthetic_<percent>, thin or hippocampus.")
        out.append(
            _Data(
                name,
                _cached(train_files, ("image", "label"), spatial),
                _cached(val_files, ("image", "label"), spatial),
                class_names(folder, 3),
                f"{note}; {len(train_files)} train / {len(val_files)} validation",
            )
        )
    return out


def _dice_per_class(logits: torch.Tensor, label: torch.Tensor) -> list[float]:
    """Hard Dice of classes 1..C-1 (an empty class predicted empty scores 1)."""
    pred = logits.argmax(1)
    truth = label[:, 0].long()
    scores = []
    for c in range(1, logits.shape[1]):
        p, t = pred == c, truth == c
        denominator = int(p.sum()) + int(t.sum())
        scores.append(1.0 if denominator == 0 else 2.0 * int((p & t).sum()) / denominator)
    return scores


def _centreline_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """clDice as a metric (Shit et al. 2021): the harmonic mean of the share of the prediction's skeleton inside
    the truth and of the truth's skeleton inside the prediction (1 when both are empty, 0 when one is)."""
    from skimage.morphology import skeletonize

    if not pred.any() or not truth.any():
        return float(pred.any() == truth.any())
    skel_pred, skel_truth = skeletonize(pred), skeletonize(truth)
    precision = (skel_pred & truth).sum() / max(int(skel_pred.sum()), 1)
    sensitivity = (skel_truth & pred).sum() / max(int(skel_truth.sum()), 1)
    total = precision + sensitivity
    return 0.0 if total == 0 else float(2 * precision * sensitivity / total)


def _structure_metrics(logits: torch.Tensor, label: torch.Tensor) -> dict:
    """Class 2 (small or thin) of one case: centreline Dice, |components(pred) - components(truth)|
    (26-connected) and the 95th-percentile Hausdorff distance in voxels (nan when either is empty)."""
    from monai.metrics import HausdorffDistanceMetric
    from scipy import ndimage

    pred, truth = (logits.argmax(1)[0] == 2).numpy(), (label[0, 0] == 2).numpy()
    full = np.ones((3,) * pred.ndim, dtype=bool)
    components = abs(ndimage.label(pred, structure=full)[1] - ndimage.label(truth, structure=full)[1])
    hd95 = float("nan")
    if pred.any() and truth.any():
        hausdorff = HausdorffDistanceMetric(include_background=True, percentile=95)
        as_onehot = [torch.from_numpy(a)[None, None].float() for a in (pred, truth)]
        hd95 = float(hausdorff(*as_onehot).item())
    return {"cldice": _centreline_dice(pred, truth), "components_error": components, "hd95": hd95}


def _train_one(data: _Data, loss_name: str, lr: float, seed: int, settings: StudySettings) -> dict:
    from monai.networks.nets import UNet

    from monai_gdl.bundle.schedules import BoundaryWeightSchedule

    torch.manual_seed(seed)
    network = UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=3,
        channels=tuple(settings.channels),
        strides=(2,) * (len(settings.channels) - 1),
        num_res_units=1,
    )
    criterion = LOSSES[loss_name][0]()
    map_name = MAPS.get(loss_name)
    schedule = BoundaryWeightSchedule(criterion) if map_name == "distance" else None

    def loss_of(logits: torch.Tensor, items: list[dict]) -> torch.Tensor:
        label = torch.stack([item["label"] for item in items])
        maps = {map_name: torch.stack([item[map_name] for item in items])} if map_name else {}
        return criterion(logits, label, **maps)

    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.epochs)
    order = torch.Generator().manual_seed(seed)
    epochs = []
    start = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        if schedule is not None:
            schedule.apply(epoch)
        network.train()
        losses = []
        for batch_index in torch.randperm(len(data.train), generator=order).split(settings.batch_size):
            items = [data.train[i] for i in batch_index.tolist()]
            flip = torch.rand((), generator=order) < 0.5
            if flip:  # the image, the label and its maps together
                items = [{k: v.flip(1) for k, v in item.items()} for item in items]
            image = torch.stack([item["image"] for item in items])
            optimizer.zero_grad()
            loss = loss_of(network(image), items)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        scheduler.step()
        network.eval()
        dice, val_losses, structure = [], [], []
        with torch.no_grad():
            for item in data.val:
                logits = network(item["image"][None])
                dice.append(_dice_per_class(logits, item["label"][None]))
                val_losses.append(float(loss_of(logits, [item])))
                if epoch == settings.epochs:
                    structure.append(_structure_metrics(logits, item["label"][None]))
        per_class = [statistics.fmean(d[c] for d in dice) for c in range(2)]
        epochs.append(
            {
                "epoch": epoch,
                "train_loss": statistics.fmean(losses),
                "val_loss": statistics.fmean(val_losses),
                "dice_large": per_class[0],
                "dice_small": per_class[1],
                "dice_mean": statistics.fmean(per_class),
            }
        )
    seconds = time.perf_counter() - start
    hd95 = [m["hd95"] for m in structure if not math.isnan(m["hd95"])]
    return {
        "dataset": data.name,
        "loss": loss_name,
        "lr": lr,
        "seed": seed,
        "epochs": epochs,
        "seconds": seconds,
        "cldice": statistics.fmean(m["cldice"] for m in structure),
        "components_error": statistics.fmean(m["components_error"] for m in structure),
        "hd95": statistics.fmean(hd95) if hd95 else float("nan"),
    }


def _first_epoch(curve: list[dict], key: str, threshold: float) -> int | None:
    return next((e["epoch"] for e in curve if e[key] >= threshold), None)


def _best_lr(runs: list[dict], dataset: str, loss_name: str, rates: Sequence[float]) -> float:
    """The learning rate with the higher final mean Dice of the structures (mean over seeds)."""

    def score(lr: float) -> float:
        chosen = [r for r in runs if r["dataset"] == dataset and r["loss"] == loss_name and r["lr"] == lr]
        return statistics.fmean(r["epochs"][-1]["dice_mean"] for r in chosen) if chosen else -1.0

    return max(rates, key=score)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} +- {spread:.3f}"


def _write_tables(runs: list[dict], datasets: list[_Data], settings: StudySettings, seconds: float) -> str:
    out = settings.out
    with open(os.path.join(out, "curves.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "dataset",
                "loss",
                "lr",
                "seed",
                "epoch",
                "train_loss",
                "val_loss",
                "dice_large",
                "dice_small",
                "dice_mean",
            ]
        )
        for run in runs:
            for e in run["epochs"]:
                writer.writerow(
                    [
                        run["dataset"],
                        run["loss"],
                        run["lr"],
                        run["seed"],
                        e["epoch"],
                        f"{e['train_loss']:.6f}",
                        f"{e['val_loss']:.6f}",
                        f"{e['dice_large']:.6f}",
                        f"{e['dice_small']:.6f}",
                        f"{e['dice_mean']:.6f}",
                    ]
                )
    with open(os.path.join(out, "runs.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "dataset",
                "loss",
                "lr",
                "seed",
                "class",
                "final_dice",
                "best_dice",
                f"epoch_to_{settings.target_dice:g}",
                "seconds",
                "cldice",
                "components_error",
                "hd95",
            ]
        )
        for run in runs:
            for cls in ("large", "small"):
                key = f"dice_{cls}"
                reached = _first_epoch(run["epochs"], key, settings.target_dice)
                writer.writerow(
                    [
                        run["dataset"],
                        run["loss"],
                        run["lr"],
                        run["seed"],
                        cls,
                        f"{run['epochs'][-1][key]:.6f}",
                        f"{max(e[key] for e in run['epochs']):.6f}",
                        "" if reached is None else reached,
                        f"{run['seconds']:.1f}",
                        *(
                            ("", "", "")
                            if cls == "large"
                            else (f"{run['cldice']:.6f}", f"{run['components_error']:.3f}", f"{run['hd95']:.3f}")
                        ),
                    ]
                )
    lines = [
        "# Study results",
        "",
        f"{len(runs)} runs: {len(settings.losses)} losses x {len(settings.seeds)} seeds x "
        f"{len(settings.learning_rates)} learning rates x {len(datasets)} datasets, {settings.epochs} epochs each, "
        f"{seconds / 60:.1f} min in all. Final validation Dice (argmax, per class), mean +- std over seeds; "
        f"'epochs to {settings.target_dice:g}': first epoch whose validation Dice reaches it (mean over the "
        f"seeds that reach it, with how many did).",
        "",
    ]
    for data in datasets:
        lines += [f"## {data.name}", "", data.note, ""]
        head = ["loss"]
        for lr in settings.learning_rates:
            head += [f"{data.class_names[1]} @ lr {lr:g}", f"{data.class_names[2]} @ lr {lr:g}"]
        head += [f"epochs to {settings.target_dice:g} ({data.class_names[1]} / {data.class_names[2]}, best lr)"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for loss_name in settings.losses:
            cells = [loss_name]
            best_lr, best = None, -1.0
            for lr in settings.learning_rates:
                chosen = [r for r in runs if r["dataset"] == data.name and r["loss"] == loss_name and r["lr"] == lr]
                large = [r["epochs"][-1]["dice_large"] for r in chosen]
                small = [r["epochs"][-1]["dice_small"] for r in chosen]
                cells += [_mean_std(large), _mean_std(small)]
                score = statistics.fmean(large + small) if chosen else -1.0
                if score > best:
                    best_lr, best = lr, score
            chosen = [r for r in runs if r["dataset"] == data.name and r["loss"] == loss_name and r["lr"] == best_lr]
            reach = []
            for key in ("dice_large", "dice_small"):
                hits = [e for e in (_first_epoch(r["epochs"], key, settings.target_dice) for r in chosen) if e]
                reach.append(
                    f"{statistics.fmean(hits):.1f} ({len(hits)}/{len(chosen)})" if hits else f"never (0/{len(chosen)})"
                )
            cells.append(" / ".join(reach))
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            f"{data.class_names[2]} after the last epoch, each loss at its better learning rate: centreline Dice "
            "(clDice as a metric), |connected components of the prediction - of the truth| (26-connected), 95th "
            "percentile Hausdorff distance in voxels (cases where both are non-empty), seconds per epoch.",
            "",
            "| loss | lr | clDice | components error | HD95 | s / epoch |",
            "|---|---|---|---|---|---|",
        ]
        for loss_name in settings.losses:
            best = _best_lr(runs, data.name, loss_name, settings.learning_rates)
            chosen = [r for r in runs if r["dataset"] == data.name and r["loss"] == loss_name and r["lr"] == best]
            hd95 = [r["hd95"] for r in chosen if not math.isnan(r["hd95"])]
            lines.append(
                f"| {loss_name} | {best:g} | {_mean_std([r['cldice'] for r in chosen])} | "
                f"{_mean_std([r['components_error'] for r in chosen])} | {_mean_std(hd95)} | "
                f"{statistics.fmean(r['seconds'] for r in chosen) / settings.epochs:.2f} |"
            )
        lines.append("")
    lines += ["Losses: " + "; ".join(f"`{n}` {LOSSES[n][1]}" for n in settings.losses) + ".", ""]
    text = "\n".join(lines)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    return text


def _write_figures(runs: list[dict], datasets: list[_Data], settings: StudySettings) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(settings.losses, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2))
    fig, axes = plt.subplots(2, len(datasets), figsize=(4 * len(datasets), 6.4), squeeze=False, sharey=True)
    best_lr = {}
    for col, data in enumerate(datasets):
        for loss_name in settings.losses:
            chosen = {
                lr: [r for r in runs if r["dataset"] == data.name and r["loss"] == loss_name and r["lr"] == lr]
                for lr in settings.learning_rates
            }
            lr = max(chosen, key=lambda k: statistics.fmean(r["epochs"][-1]["dice_mean"] for r in chosen[k]))
            best_lr[data.name, loss_name] = lr
            for row, key in enumerate(("dice_large", "dice_small")):
                curve = np.mean([[e[key] for e in r["epochs"]] for r in chosen[lr]], axis=0)
                axes[row][col].plot(range(1, len(curve) + 1), curve, color=colours[loss_name], label=loss_name)
        for row, cls in enumerate((data.class_names[1], data.class_names[2])):
            axes[row][col].set_title(f"{data.name}: {cls}", fontsize=9)
            axes[row][col].set_xlabel("epoch", fontsize=8)
        axes[0][col].set_ylim(0, 1)
    axes[0][0].set_ylabel("validation Dice (mean over seeds, best lr)")
    axes[1][0].set_ylabel("validation Dice")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(settings.out, "dice_curves.png"), dpi=80)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(datasets), figsize=(4 * len(datasets), 3.6), squeeze=False)
    for col, data in enumerate(datasets):
        ax = axes[0][col]
        for loss_name in settings.losses:
            chosen = [r for r in runs if r["dataset"] == data.name and r["loss"] == loss_name]
            ax.scatter(
                [e["dice_mean"] for r in chosen for e in r["epochs"]],
                [1 - e["val_loss"] for r in chosen for e in r["epochs"]],
                s=6,
                color=colours[loss_name],
                label=loss_name,
            )
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set_xlabel("measured validation Dice (mean of the structures)", fontsize=8)
        ax.set_title(data.name, fontsize=9)
    axes[0][0].set_ylabel("1 - validation loss")
    axes[0][-1].legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(os.path.join(settings.out, "loss_vs_dice.png"), dpi=80)
    plt.close(fig)


def run_study(settings: StudySettings, log: Callable[[str], None] = print) -> str:
    """Train every (dataset, loss, learning rate, seed), write the tables and figures; returns summary.md's text."""
    unknown = [n for n in settings.losses if n not in LOSSES]
    if unknown:
        raise SystemExit(f"error: unknown loss(es) {unknown}; choose from {list(LOSSES)}.")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    os.makedirs(settings.out, exist_ok=True)
    start = time.perf_counter()
    datasets = _datasets(settings, os.path.join(settings.out, "data"))
    runs = []
    total = len(datasets) * len(settings.losses) * len(settings.learning_rates) * len(settings.seeds)
    for data in datasets:
        log(f"{data.name}: {data.note}")
        for loss_name in settings.losses:
            for lr in settings.learning_rates:
                for seed in settings.seeds:
                    run = _train_one(data, loss_name, lr, seed, settings)
                    runs.append(run)
                    last = run["epochs"][-1]
                    log(
                        f"[{len(runs)}/{total}] {data.name} {loss_name} lr {lr:g} seed {seed}: Dice "
                        f"{data.class_names[1]} {last['dice_large']:.3f} "
                        f"{data.class_names[2]} {last['dice_small']:.3f} "
                        f"({run['seconds']:.0f} s)"
                    )
    text = _write_tables(runs, datasets, settings, time.perf_counter() - start)
    _write_figures(runs, datasets, settings)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_gdl.study", description=__doc__.split("\n\n")[0])
    defaults = StudySettings()
    parser.add_argument("--out", default=defaults.out)
    parser.add_argument("--quick", action="store_true", help="a smoke run of about two minutes (tests)")
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        help="synthetic_<percent of voxels> ..., thin and/or hippocampus (default: the four of the Dice or GDL study)",
    )
    parser.add_argument(
        "--losses",
        nargs="+",
        default=None,
        choices=[*LOSSES, "structures"],
        help="losses to train (default: the Dice or GDL study's); 'structures' names the small and thin "
        "structures study's: " + " ".join(STRUCTURES),
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--lrs", type=float, nargs="+", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--hippocampus",
        default=os.path.join("..", "shared", "data", "Task04_Hippocampus"),
        help="the MSD Task04 folder (default: ../shared/data/Task04_Hippocampus)",
    )
    parser.add_argument("--target_dice", type=float, default=defaults.target_dice)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: PyTorch's choice)")
    args = parser.parse_args(argv)
    if args.quick:
        settings = StudySettings(
            datasets=("synthetic_1", "thin"),
            losses=tuple(LOSSES),
            seeds=(0,),
            learning_rates=(3e-3,),
            epochs=2,
            synthetic_cases=8,
            synthetic_shape=(24, 24, 24),
            channels=(4, 8, 16),
        )
    else:
        settings = StudySettings()
    settings.out, settings.hippocampus, settings.target_dice = args.out, args.hippocampus, args.target_dice
    settings.threads = args.threads
    for name, value in (
        ("datasets", args.datasets),
        ("losses", args.losses),
        ("seeds", args.seeds),
        ("learning_rates", args.lrs),
        ("epochs", args.epochs),
    ):
        if value is not None:
            setattr(settings, name, value)
    if "structures" in settings.losses:
        settings.losses = tuple(
            dict.fromkeys(n for name in settings.losses for n in (STRUCTURES if name == "structures" else (name,)))
        )
    if settings.epochs < 1:
        print(f"error: --epochs {settings.epochs}: train at least 1 epoch.", file=sys.stderr)
        return 1
    print(run_study(settings))
    print(f"written to {settings.out}: summary.md, runs.csv, curves.csv, dice_curves.png, loss_vs_dice.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
