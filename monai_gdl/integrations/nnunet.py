"""nnU-Net v2 trainers that train with the fused losses: the same loss nnU-Net builds, one pass, same numbers.

nnU-Net's default loss (``nnUNetTrainer._build_loss``) is, for label maps, ``DC_and_CE_loss`` with
``MemoryEfficientSoftDiceLoss`` (softmax, ``do_bg=False``, ``smooth=1e-5``, ``batch_dice`` from the plans,
the ignore label excluded) and, for region-based training, ``DC_and_BCE_loss`` (sigmoid, ``do_bg=True``,
the ignore label as the target's last channel), wrapped in its deep supervision (weights ``1/2^i``, the
lowest resolution's 0, normalised; ``1e-6`` instead of 0 under DDP without ``torch.compile``). Per level::

    labels:   -mean_{b,c>=1} D[b, c] + CE                     D = (2 I + s) / (P + G + s), s = 1e-5
    regions:  -mean_{b,c} D[b, c] + BCE                        (mean over b only without batch_dice)

Here the same loss is :class:`~monai_gdl.VNetDiceCELoss` / :class:`~monai_gdl.VNetDiceBCELoss`
(``squared_pred=False``, ``smooth_nr = smooth_dr = 1e-5``) minus ``lambda_dice``, because nnU-Net logs
``-Dice`` where ours is ``1 - Dice``: the value nnU-Net logs is the same number with either trainer, so
curves do not jump when switching. nnU-Net's masked BCE (ignore label with regions) divides the sum over
the region channels by the voxel count, i.e. the per-element mean times the number of regions; the region
loss reproduces that with ``lambda_ce`` = the number of regions.

Use (nnU-Net >= 2.8.1 finds trainers outside its package through ``nnUNet_extTrainer``)::

    export nnUNet_extTrainer=$(python -m monai_gdl.integrations.nnunet path)
    nnUNetv2_train DATASET 3d_fullres 0 -tr nnUNetTrainerFusedDiceCE     # label maps
    nnUNetv2_train DATASET 3d_fullres 0 -tr nnUNetTrainerFusedDiceBCE    # region-based plans
    nnUNetv2_train DATASET 3d_fullres 0 -tr nnUNetTrainerFusedSkeletonRecall   # + Skeleton Recall (thin structures)

Skeleton Recall (Kirchhoff et al., ECCV 2024) as its authors train it in nnU-Net: the tubed skeleton of each
augmented training patch is computed in the data pipeline (:class:`TubedSkeletonTransform`, appended as a
second segmentation channel, so nnU-Net's deep-supervision downsampling carries it to every level) and the
loss adds ``-recall`` of the skeleton per foreground class (``weight_srec = 1``), fused into the same pass.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_gdl.losses import (
    DeepSupervisionWrapper,
    LossInputError,
    VNetDiceBCELoss,
    VNetDiceCELoss,
    VNetDiceCESkeletonRecallLoss,
)
from monai_gdl.structure_maps import tubed_skeleton

#: nnU-Net's ``recursive_find_trainer_class_by_name`` reads ``nnUNet_extTrainer`` from this release on.
MIN_NNUNET_FOR_DISCOVERY = (2, 8, 1)
#: The folder ``nnUNet_extTrainer`` points at: one module that re-exports the trainers below.
TRAINER_FOLDER = Path(__file__).resolve().parent / "nnunet_trainers"
INSTALL_HINT = 'pip install "monai_gdl[nnunet]"'

try:
    from batchgeneratorsv2.transforms.base.basic_transform import SegOnlyTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
except ImportError as error:  # one line naming the fix, not nnU-Net's import chain
    raise ImportError(f"monai_gdl.integrations.nnunet needs nnU-Net v2 ({error}); install it: {INSTALL_HINT}") from None

__all__ = [
    "NNUNetDiceBCELoss",
    "NNUNetDiceCELoss",
    "NNUNetDiceCESkeletonRecallLoss",
    "TubedSkeletonTransform",
    "nnUNetTrainerFusedDiceBCE",
    "nnUNetTrainerFusedDiceCE",
    "nnUNetTrainerFusedSkeletonRecall",
    "nnunet_deep_supervision_weights",
]

NNUNET_SMOOTH = 1e-5


def _label_loss_options(
    batch_dice: bool, ignore_label: int | None, weight_ce: float, weight_dice: float, smooth: float
) -> dict[str, Any]:
    """nnU-Net's label-map Dice + CE settings in our options: softmax, background out of the Dice, plain
    (not squared) denominators, one smoothing term, the ignore label excluded."""
    return {
        "include_background": False,
        "to_onehot_y": True,
        "softmax": True,
        "squared_pred": False,
        "batch": batch_dice,
        "smooth_nr": smooth,
        "smooth_dr": smooth,
        "ignore_index": ignore_label,
        "lambda_dice": weight_dice,
        "lambda_ce": weight_ce,
    }


class NNUNetDiceCELoss(nn.Module):
    """nnU-Net's ``DC_and_CE_loss`` (its label-map loss), fused: ``VNetDiceCELoss - weight_dice``.

    ``forward(net_output, target)``: ``B x C x spatial`` logits and nnU-Net's ``B x 1 x spatial`` label map
    (any integer or float dtype; ``ignore_label`` voxels count in neither part). Returns a scalar:
    ``weight_ce * CE - weight_dice * mean Dice`` over the foreground classes (per sample, or pooled over the
    batch with ``batch_dice``, all-reduced under DDP).
    """

    def __init__(
        self,
        batch_dice: bool,
        ignore_label: int | None = None,
        weight_ce: float = 1.0,
        weight_dice: float = 1.0,
        smooth: float = NNUNET_SMOOTH,
    ) -> None:
        super().__init__()
        self.weight_dice = float(weight_dice)
        self.loss = VNetDiceCELoss(**_label_loss_options(batch_dice, ignore_label, weight_ce, weight_dice, smooth))

    def forward(self, net_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(net_output, target) - self.weight_dice


class NNUNetDiceBCELoss(nn.Module):
    """nnU-Net's ``DC_and_BCE_loss`` (region-based training), fused: ``VNetDiceBCELoss - weight_dice``.

    ``forward(net_output, target)``: ``B x R x spatial`` logits, one per region, and nnU-Net's one-hot region
    target (bool or float), ``B x R x spatial``, or ``B x (R + 1) x spatial`` with ``use_ignore_label`` (the
    last channel marks the ignored voxels). With the ignore label the BCE is nnU-Net's: the masked sum over
    the regions divided by the number of unmasked voxels (``lambda_ce = R`` on our per-element mean).
    """

    def __init__(
        self,
        batch_dice: bool,
        num_regions: int,
        use_ignore_label: bool = False,
        weight_ce: float = 1.0,
        weight_dice: float = 1.0,
        smooth: float = NNUNET_SMOOTH,
    ) -> None:
        super().__init__()
        if not isinstance(num_regions, int) or num_regions < 1:
            raise LossInputError(f"num_regions={num_regions!r}: give the number of regions the network predicts.")
        self.num_regions = num_regions
        self.use_ignore_label = bool(use_ignore_label)
        self.weight_dice = float(weight_dice)
        self.loss = VNetDiceBCELoss(
            include_background=True,
            sigmoid=True,
            squared_pred=False,
            batch=batch_dice,
            smooth_nr=smooth,
            smooth_dr=smooth,
            lambda_dice=weight_dice,
            lambda_ce=weight_ce * (num_regions if use_ignore_label else 1),
        )

    def forward(self, net_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        channels = self.num_regions + self.use_ignore_label
        if net_output.shape[1] != self.num_regions or target.shape[1] != channels:
            raise LossInputError(
                f"net_output has {net_output.shape[1]} channels and target {target.shape[1]}; this loss was built for "
                f"{self.num_regions} regions, so the target needs {channels} channels"
                + (" (the regions, then the ignore channel)." if self.use_ignore_label else ".")
            )
        if not self.use_ignore_label:
            return self.loss(net_output, target) - self.weight_dice
        ignored = target[:, -1:]
        return self.loss(net_output, target[:, :-1], mask=ignored == 0) - self.weight_dice


class NNUNetDiceCESkeletonRecallLoss(nn.Module):
    """nnU-Net's ``DC_and_CE_loss`` plus Skeleton Recall as its authors add it (``-recall`` per foreground class,
    ``weight_srec``), fused: ``VNetDiceCESkeletonRecallLoss - weight_dice - weight_srec``.

    ``forward(net_output, target)``: ``target`` ``B x 2 x spatial``, the label map then its tubed skeleton
    (:class:`TubedSkeletonTransform`); a ``B x 1 x spatial`` target (nnU-Net's validation batches, which carry
    no skeleton) gets the Dice + CE part alone, as :class:`NNUNetDiceCELoss`.
    """

    def __init__(
        self,
        batch_dice: bool,
        ignore_label: int | None = None,
        weight_ce: float = 1.0,
        weight_dice: float = 1.0,
        weight_srec: float = 1.0,
        smooth: float = NNUNET_SMOOTH,
    ) -> None:
        super().__init__()
        self.offset = float(weight_dice) + float(weight_srec)
        self.loss = VNetDiceCESkeletonRecallLoss(
            **_label_loss_options(batch_dice, ignore_label, weight_ce, weight_dice, smooth), lambda_skel=weight_srec
        )
        self.without_skeleton = NNUNetDiceCELoss(batch_dice, ignore_label, weight_ce, weight_dice, smooth)

    def forward(self, net_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape[1] == 1:
            return self.without_skeleton(net_output, target)
        return self.loss(net_output, target) - self.offset


class TubedSkeletonTransform(SegOnlyTransform):
    """nnU-Net data-augmentation step: append the tubed skeleton of the (augmented) label map as a second
    segmentation channel (:func:`~monai_gdl.tubed_skeleton`, ``dilations`` as the paper's 2; ignored voxels
    have no skeleton). Runs per sample in nnU-Net's augmentation workers, before the deep-supervision
    downsampling, so every level gets the skeleton picked by the same nearest-neighbour selection as its label."""

    def __init__(self, num_classes: int, ignore_label: int | None = None, dilations: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.dilations = dilations

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params: object) -> torch.Tensor:
        label = segmentation[0]
        if self.ignore_label is not None:
            label = torch.where(label == self.ignore_label, torch.zeros_like(label), label)
        skeleton = tubed_skeleton(label.numpy(), self.num_classes, dilations=self.dilations)
        return torch.cat([segmentation, torch.from_numpy(skeleton).to(segmentation.dtype)[None]])


def nnunet_deep_supervision_weights(levels: int, ddp_without_compile: bool = False) -> list[float]:
    """nnU-Net v2's deep-supervision weights: ``1/2^i``, the lowest level's 0 (``1e-6`` under DDP without
    ``torch.compile``, where nnU-Net keeps that head's parameters in use), normalised to sum 1."""
    weights = [0.5**i for i in range(levels)]
    if levels > 1:
        weights[-1] = 1e-6 if ddp_without_compile else 0.0
    total = sum(weights)
    return [w / total for w in weights]


class _FusedLossTrainer(nnUNetTrainer):
    """An ``nnUNetTrainer`` whose ``_build_loss`` builds the fused loss; everything else is nnU-Net's."""

    regions: bool  # the label kind this trainer's loss serves
    other_trainer: str

    # nnU-Net records its constructor's arguments by this signature's names (``my_init_kwargs``): keep it.
    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 (nnU-Net's own default)
    ) -> None:
        has_regions = PlansManager(plans).get_label_manager(dataset_json).has_regions
        if has_regions != self.regions:  # refused before nnU-Net makes its output folders
            plan = "region-based (sigmoid outputs)" if has_regions else "label maps (softmax)"
            raise ValueError(
                f"{type(self).__name__} cannot train this plan: its labels are {plan}. Use -tr {self.other_trainer}."
            )
        super().__init__(plans, configuration, fold, dataset_json, device)

    def _single_level_loss(self) -> nn.Module:
        raise NotImplementedError

    def _build_loss(self) -> nn.Module:
        loss = self._single_level_loss()
        if not self.enable_deep_supervision:
            return loss
        levels = len(self._get_deep_supervision_scales())
        weights = nnunet_deep_supervision_weights(levels, self.is_ddp and not self._do_i_compile())
        return DeepSupervisionWrapper(loss, weights=weights)


class nnUNetTrainerFusedDiceCE(_FusedLossTrainer):
    """nnU-Net's trainer with its label-map loss (``DC_and_CE_loss``) fused: same values, one pass."""

    regions = False
    other_trainer = "nnUNetTrainerFusedDiceBCE"

    def _single_level_loss(self) -> nn.Module:
        return NNUNetDiceCELoss(
            batch_dice=self.configuration_manager.batch_dice, ignore_label=self.label_manager.ignore_label
        )


class nnUNetTrainerFusedDiceBCE(_FusedLossTrainer):
    """nnU-Net's trainer with its region loss (``DC_and_BCE_loss``) fused: same values, one pass."""

    regions = True
    other_trainer = "nnUNetTrainerFusedDiceCE"

    def _single_level_loss(self) -> nn.Module:
        return NNUNetDiceBCELoss(
            batch_dice=self.configuration_manager.batch_dice,
            num_regions=len(self.label_manager.foreground_regions),
            use_ignore_label=self.label_manager.has_ignore_label,
        )


class nnUNetTrainerFusedSkeletonRecall(nnUNetTrainerFusedDiceCE):
    """nnU-Net's trainer with Dice + CE + Skeleton Recall (its authors' recipe), fused in one pass; the tubed
    skeleton is made per training patch after augmentation (:class:`TubedSkeletonTransform`)."""

    other_trainer = "nnUNetTrainerFusedDiceBCE (Skeleton Recall is for label maps, not regions)"

    def _single_level_loss(self) -> nn.Module:
        return NNUNetDiceCESkeletonRecallLoss(
            batch_dice=self.configuration_manager.batch_dice, ignore_label=self.label_manager.ignore_label
        )

    @staticmethod
    def get_training_transforms(*args: Any, **kwargs: Any) -> ComposeTransforms:  # type: ignore[override]
        """nnU-Net's training transforms with :class:`TubedSkeletonTransform` just before its deep-supervision
        downsampling (or last, without deep supervision)."""
        composed = nnUNetTrainer.get_training_transforms(*args, **kwargs)
        bound = inspect.signature(nnUNetTrainer.get_training_transforms).bind(*args, **kwargs)
        labels = bound.arguments.get("foreground_labels") or [1]
        ignore_label = bound.arguments.get("ignore_label")
        step = TubedSkeletonTransform(max(label for label in labels if label != ignore_label) + 1, ignore_label)
        transforms = list(composed.transforms)
        at = next((i for i, t in enumerate(transforms) if isinstance(t, DownsampleSegForDSTransform)), len(transforms))
        transforms.insert(at, step)
        return ComposeTransforms(transforms)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def trainer_folder() -> Path:
    """The folder to export as ``nnUNet_extTrainer``; refuses an nnU-Net that does not read that variable."""
    version = metadata.version("nnunetv2")
    if _version_tuple(version) < MIN_NNUNET_FOR_DISCOVERY:
        minimum = ".".join(map(str, MIN_NNUNET_FOR_DISCOVERY))
        raise RuntimeError(
            f"nnunetv2 {version} does not look for trainers outside its package (nnUNet_extTrainer arrived in "
            f"{minimum}); upgrade: pip install 'nnunetv2>={minimum}'"
        )
    return TRAINER_FOLDER


def _rss_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def measure_loss_step(
    plans_file: str, dataset_json_file: str, configuration: str, loss: str, reps: int, what_if: dict | None = None
) -> dict:
    """One loss of a plan (``"nnunet"``: ``nnUNetTrainer._build_loss``; ``"fused"``: ours) on network-shaped
    deep-supervision outputs (the plan's batch and patch, random logits) and nnU-Net's target list (its
    ``DownsampleSegForDSTransform`` on an int16 label map, as its loader hands): median forward + backward
    time after 3 warm-up steps, and the step's peak resident memory above the resident memory after warm-up
    (inputs in place, their gradients freed), read on Linux from VmHWM after resetting it. ``what_if``
    overrides the plan's ``patch_size`` / ``batch_size`` and the number of classes (``num_classes``)."""
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

    os.environ.setdefault("nnUNet_results", tempfile.mkdtemp(prefix="nnunet_results_"))
    with open(plans_file) as f:
        plans = json.load(f)
    with open(dataset_json_file) as f:
        dataset_json = json.load(f)
    plans["continue_training"] = False
    what_if = what_if or {}
    config = plans["configurations"][configuration]
    for key in ("patch_size", "batch_size"):
        if what_if.get(key) is not None:
            config[key] = what_if[key]
    if what_if.get("num_classes") is not None:
        dataset_json["labels"] = {"background": 0, **{f"class_{i}": i for i in range(1, what_if["num_classes"])}}
    cls = nnUNetTrainerFusedDiceCE if loss == "fused" else nnUNetTrainer
    trainer = cls(plans, configuration, 0, dataset_json, device=torch.device("cpu"))
    loss_fn = trainer._build_loss()
    patch = trainer.configuration_manager.patch_size
    batch, classes = trainer.configuration_manager.batch_size, trainer.label_manager.num_segmentation_heads
    scales = trainer._get_deep_supervision_scales() or [[1.0] * len(patch)]
    g = torch.Generator().manual_seed(0)
    sizes = [[round(p * s) for p, s in zip(patch, scale)] for scale in scales]
    outputs = [torch.randn(batch, classes, *size, generator=g).requires_grad_(True) for size in sizes]
    labels = [torch.randint(0, classes, (1, *patch), generator=g).to(torch.int16) for _ in range(batch)]
    per_sample = [DownsampleSegForDSTransform(scales)(segmentation=s)["segmentation"] for s in labels]
    targets = [torch.stack(level) for level in zip(*per_sample)]

    def step() -> None:
        for o in outputs:
            o.grad = None
        value = loss_fn(outputs if len(outputs) > 1 else outputs[0], targets if len(targets) > 1 else targets[0])
        value.backward()

    for _ in range(3):
        step()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    for o in outputs:
        o.grad = None
    base = _rss_kib("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step()
    peak = _rss_kib("VmHWM:")
    return {
        "loss": type(loss_fn.loss if hasattr(loss_fn, "loss") else loss_fn).__name__,
        "ms": 1000 * statistics.median(times),
        "extra_mib": (peak - base) / 1024,
        "shape": f"{batch} x {classes} x {' x '.join(map(str, patch))}, {len(outputs)} outputs",
    }


def compare_losses(
    plans_file: str, dataset_json_file: str, configuration: str, rounds: int, reps: int, what_if: dict
) -> list[dict]:
    """nnU-Net's loss and ours, each in a fresh process (memory readings unaffected by the other), alternated."""
    results = []
    for _ in range(rounds):
        for loss in ("nnunet", "fused"):
            arguments = [plans_file, dataset_json_file, configuration, loss, reps, what_if]
            code = (
                "import json; from monai_gdl.integrations.nnunet import measure_loss_step; "
                f"print(json.dumps(measure_loss_step(*{arguments!r})))"
            )
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            results.append(json.loads(run.stdout.strip().splitlines()[-1]))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monai_gdl.integrations.nnunet",
        description="nnU-Net v2 trainers with the fused losses: export nnUNet_extTrainer=$(... path), then "
        "nnUNetv2_train DATASET CONFIG FOLD -tr nnUNetTrainerFusedDiceCE (or nnUNetTrainerFusedDiceBCE for regions).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("path", help="print the folder to export as nnUNet_extTrainer")
    compare = commands.add_parser(
        "compare-loss", help="time and peak extra memory of one loss step, nnU-Net's loss vs the fused one, for a plan"
    )
    compare.add_argument("--plans", required=True, help="nnUNetPlans.json from nnUNet_preprocessed/DATASET")
    compare.add_argument("--dataset-json", required=True, help="dataset.json from nnUNet_preprocessed/DATASET")
    compare.add_argument("--configuration", default="3d_fullres")
    compare.add_argument("--rounds", type=int, default=2, help="alternations, one fresh process per loss each")
    compare.add_argument("--reps", type=int, default=10, help="timed steps per process (after 3 warm-up steps)")
    compare.add_argument("--patch-size", type=int, nargs="+", help="what if: this patch instead of the plan's")
    compare.add_argument("--batch-size", type=int, help="what if: this batch size instead of the plan's")
    compare.add_argument("--num-classes", type=int, help="what if: this many classes (background included)")
    args = parser.parse_args(argv)
    if args.command == "compare-loss":
        for path in (args.plans, args.dataset_json):
            if not Path(path).is_file():
                message = f"error: {path} is not a file; give nnU-Net's preprocessed plans and dataset.json"
                print(message, file=sys.stderr)
                return 2
        what_if = {"patch_size": args.patch_size, "batch_size": args.batch_size, "num_classes": args.num_classes}
        results = compare_losses(args.plans, args.dataset_json, args.configuration, args.rounds, args.reps, what_if)
        print(f"{results[0]['shape']} (CPU, {torch.get_num_threads()} threads, median of {args.reps} steps)")
        print("| loss | forward + backward ms | peak extra MiB |\n|---|---:|---:|")
        for r in results:
            print(f"| {r['loss']} | {r['ms']:.1f} | {r['extra_mib']:.1f} |")
        return 0
    try:
        print(trainer_folder())
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
