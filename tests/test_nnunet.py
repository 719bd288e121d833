"""The nnU-Net v2 trainers: the fused losses against nnU-Net's own loss modules (values and gradients, on
nnU-Net's own deep-supervision target lists), the trainers' losses against ``nnUNetTrainer._build_loss``,
nnU-Net's external trainer search finding them, and the refusals. The end-to-end run is in
``test_nnunet_e2e.py``."""

from __future__ import annotations

import copy
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest
import torch

if os.environ.get("MONAI_GDL_REQUIRE_NNUNET") != "1":
    pytest.importorskip("nnunetv2", reason='nnU-Net v2 is not installed (pip install "monai_gdl[nnunet]")')

# nnU-Net reads its folders when imported; its trainers write logs under nnUNet_results.
os.environ.setdefault("nnUNet_results", tempfile.mkdtemp(prefix="nnunet_results_"))

from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import (  # noqa: E402
    DownsampleSegForDSTransform,
)
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss  # noqa: E402
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss  # noqa: E402
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class  # noqa: E402

from monai_gdl.integrations import nnunet  # noqa: E402
from monai_gdl.integrations.nnunet import (  # noqa: E402
    NNUNetDiceBCELoss,
    NNUNetDiceCELoss,
    nnUNetTrainerFusedDiceBCE,
    nnUNetTrainerFusedDiceCE,
    nnUNetTrainerFusedSkeletonRecall,
)
from monai_gdl.structure_maps import tubed_skeleton  # noqa: E402

DATA = pathlib.Path(__file__).parent / "data" / "nnunet"
#: nnU-Net sums its Dice statistics in float32 whatever the input dtype: equal up to float32 rounding.
TOLERANCE = dict(rtol=2e-5, atol=2e-6)


def _nnunet_label_loss(batch_dice, ignore_label):
    """nnU-Net's label-map loss exactly as ``nnUNetTrainer._build_loss`` builds it (no DDP)."""
    soft_dice = {"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}
    return DC_and_CE_loss(soft_dice, {}, weight_ce=1, weight_dice=1, ignore_label=ignore_label,
                          dice_class=MemoryEfficientSoftDiceLoss)  # fmt: skip


def _nnunet_region_loss(batch_dice, use_ignore_label):
    soft_dice = {"batch_dice": batch_dice, "do_bg": True, "smooth": 1e-5, "ddp": False}
    return DC_and_BCE_loss({}, soft_dice, use_ignore_label=use_ignore_label, dice_class=MemoryEfficientSoftDiceLoss)


def _value_and_grads(loss, outputs, target):
    outputs = [o.detach().clone().requires_grad_(True) for o in outputs]
    value = loss(outputs if len(outputs) > 1 else outputs[0], target)
    value.backward()
    return value.detach(), [o.grad for o in outputs]


def _assert_same(ours, theirs):
    torch.testing.assert_close(ours[0], theirs[0].to(ours[0].dtype), **TOLERANCE)
    for a, b in zip(ours[1], theirs[1]):
        if a is None or b is None:  # a level of weight 0: skipped (no gradient) or zeros
            assert not (a if a is not None else b if b is not None else torch.zeros(1)).any()
            continue
        torch.testing.assert_close(a, b, **TOLERANCE)


@pytest.mark.parametrize("spatial", [(24, 20), (12, 10, 8)], ids=["2d", "3d"])
@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("ignore_label", [None, 4])
@pytest.mark.parametrize("target_dtype", [torch.int16, torch.float32])
def test_label_loss_equals_nnunets_dc_and_ce(spatial, batch_dice, ignore_label, target_dtype):
    """Same value (nnU-Net's -Dice convention, not 1 - Dice) and gradient as nnU-Net's ``DC_and_CE_loss``."""
    g = torch.Generator().manual_seed(len(spatial) + 2 * batch_dice)
    logits = torch.randn(3, 4, *spatial, generator=g)
    top = 5 if ignore_label is not None else 4  # label 4 = the ignore label nnU-Net puts after the classes
    target = torch.randint(0, top, (3, 1, *spatial), generator=g).to(target_dtype)
    ours = _value_and_grads(NNUNetDiceCELoss(batch_dice, ignore_label), [logits], target)
    theirs = _value_and_grads(_nnunet_label_loss(batch_dice, ignore_label), [logits], target)
    _assert_same(ours, theirs)


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("use_ignore_label", [False, True])
def test_region_loss_equals_nnunets_dc_and_bce(batch_dice, use_ignore_label):
    """Region targets are bool one-hot (nnU-Net's ConvertSegmentationToRegionsTransform), the ignore label its
    last channel; the masked BCE is nnU-Net's sum over regions per unmasked voxel."""
    g = torch.Generator().manual_seed(7 + batch_dice)
    logits = torch.randn(2, 3, 10, 9, 8, generator=g)
    target = torch.rand(2, 3 + use_ignore_label, 10, 9, 8, generator=g) > 0.6
    ours = _value_and_grads(NNUNetDiceBCELoss(batch_dice, 3, use_ignore_label), [logits], target)
    theirs = _value_and_grads(_nnunet_region_loss(batch_dice, use_ignore_label), [logits], target)
    _assert_same(ours, theirs)


def _plans() -> dict:
    plans = json.loads((DATA / "hippocampus_plans.json").read_text())
    plans["continue_training"] = False  # what nnUNetv2_train adds before building a trainer
    return plans


def _dataset_json(kind: str) -> dict:
    dataset = json.loads((DATA / "hippocampus_dataset.json").read_text())
    if kind == "ignore":
        dataset["labels"] = {**dataset["labels"], "ignore": 3}
    elif kind in ("regions", "regions_ignore"):
        dataset["labels"] = {"background": 0, "hippocampus": [1, 2], "posterior": 2}
        dataset["regions_class_order"] = [1, 2]
        if kind == "regions_ignore":
            dataset["labels"]["ignore"] = 3
    return dataset


def _trainer(cls, kind: str):
    return cls(_plans(), "3d_fullres", 0, _dataset_json(kind), device=torch.device("cpu"))


def _deep_supervision_batch(trainer, channels, g, top):
    """Network-shaped outputs at the plan's deep-supervision scales and nnU-Net's own target list (its
    DownsampleSegForDSTransform, sample by sample, then stacked as its data loader does)."""
    patch = trainer.configuration_manager.patch_size
    scales = trainer._get_deep_supervision_scales()
    sizes = [[round(p * s) for p, s in zip(patch, scale)] for scale in scales]
    outputs = [torch.randn(2, channels, *size, generator=g) for size in sizes]
    segs = [torch.randint(0, top, (1, *patch), generator=g).to(torch.int16) for _ in range(2)]
    per_sample = [DownsampleSegForDSTransform(scales)(segmentation=s)["segmentation"] for s in segs]
    targets = [torch.stack(level) for level in zip(*per_sample)]
    return outputs, targets


@pytest.mark.parametrize("kind", ["labels", "ignore"])
def test_label_trainer_loss_equals_nnunets_on_its_deep_supervision_lists(kind):
    ours_trainer, nnunet_trainer = _trainer(nnUNetTrainerFusedDiceCE, kind), _trainer(nnUNetTrainer, kind)
    g = torch.Generator().manual_seed(3)
    outputs, targets = _deep_supervision_batch(ours_trainer, 3, g, top=4 if kind == "ignore" else 3)
    assert len(outputs) == 3  # three resolutions for this plan, the lowest weighted 0
    ours = _value_and_grads(ours_trainer._build_loss(), outputs, targets)
    theirs = _value_and_grads(nnunet_trainer._build_loss(), outputs, targets)
    _assert_same(ours, theirs)
    assert ours[1][-1] is None or not ours[1][-1].any()  # the lowest level has weight 0 in both


@pytest.mark.parametrize("kind", ["regions", "regions_ignore"])
def test_region_trainer_loss_equals_nnunets_on_its_deep_supervision_lists(kind):
    from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform

    ours_trainer, nnunet_trainer = _trainer(nnUNetTrainerFusedDiceBCE, kind), _trainer(nnUNetTrainer, kind)
    manager = ours_trainer.label_manager
    regions = list(manager.foreground_regions) + ([manager.ignore_label] if manager.has_ignore_label else [])
    g = torch.Generator().manual_seed(4)
    outputs, label_lists = _deep_supervision_batch(ours_trainer, 2, g, top=4 if "ignore" in kind else 3)
    to_regions = ConvertSegmentationToRegionsTransform(regions, channel_in_seg=0)
    targets = [
        torch.stack([to_regions(segmentation=sample)["segmentation"] for sample in level]) for level in label_lists
    ]
    assert targets[0].dtype == torch.bool
    ours = _value_and_grads(ours_trainer._build_loss(), outputs, targets)
    theirs = _value_and_grads(nnunet_trainer._build_loss(), outputs, targets)
    _assert_same(ours, theirs)


def test_deep_supervision_weights_are_nnunets_with_and_without_ddp():
    assert nnunet.nnunet_deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    ddp = nnunet.nnunet_deep_supervision_weights(3, ddp_without_compile=True)
    assert ddp == pytest.approx([1 / (1.5 + 1e-6), 0.5 / (1.5 + 1e-6), 1e-6 / (1.5 + 1e-6)])


@pytest.mark.parametrize(
    "cls,kind,fix",
    [
        (nnUNetTrainerFusedDiceCE, "regions", "-tr nnUNetTrainerFusedDiceBCE"),
        (nnUNetTrainerFusedDiceBCE, "labels", "-tr nnUNetTrainerFusedDiceCE"),
        (nnUNetTrainerFusedSkeletonRecall, "regions", "-tr nnUNetTrainerFusedDiceBCE"),
    ],
)
def test_a_plan_the_trainer_cannot_serve_is_refused_naming_the_other(cls, kind, fix):
    with pytest.raises(ValueError, match=f"{cls.__name__} cannot train this plan.*{fix}"):
        _trainer(cls, kind)


def test_region_loss_refuses_a_target_with_the_wrong_channel_count():
    loss = NNUNetDiceBCELoss(False, 2, use_ignore_label=True)
    with pytest.raises(nnunet.LossInputError, match="target needs 3 channels"):
        loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4, dtype=torch.bool))


def test_nnunets_external_trainer_search_finds_the_trainers():
    """The exact call nnU-Net makes for each folder in nnUNet_extTrainer, on the folder the command prints."""
    printed = subprocess.run(
        [sys.executable, "-m", "monai_gdl.integrations.nnunet", "path"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert pathlib.Path(printed) == nnunet.TRAINER_FOLDER and nnunet.TRAINER_FOLDER.is_dir()
    for name in ("nnUNetTrainerFusedDiceCE", "nnUNetTrainerFusedDiceBCE", "nnUNetTrainerFusedSkeletonRecall"):
        found = recursive_find_python_class(
            printed, name, None, base_folder=printed, verbose=False, cleanup_imports_from_base_folder=True
        )
        assert found is getattr(nnunet, name) and issubclass(found, nnUNetTrainer)


def test_an_nnunet_without_external_trainers_gets_the_minimum_version(monkeypatch, capsys):
    monkeypatch.setattr(nnunet.metadata, "version", lambda name: "2.6.2")
    assert nnunet.main(["path"]) == 2
    assert "nnunetv2 2.6.2 does not look for trainers outside its package" in capsys.readouterr().err
    assert "nnunetv2>=2.8.1" in str(pytest.raises(RuntimeError, nnunet.trainer_folder).value)


def test_missing_nnunet_gives_one_line_naming_the_extra():
    code = "import sys; sys.modules['nnunetv2'] = None; import monai_gdl.integrations.nnunet"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: monai_gdl.integrations.nnunet needs nnU-Net v2")
    assert 'pip install "monai_gdl[nnunet]"' in last


def test_installing_nnunet_kept_the_cpu_torch_and_pulled_no_torchvision():
    """.ci/run installs nnU-Net with --no-deps from an explicit list: torch stays the CPU build it was."""
    import importlib.util

    if os.environ.get("MONAI_GDL_REQUIRE_NNUNET") == "1":
        assert torch.version.cuda is None, torch.__version__
    assert importlib.util.find_spec("torchvision") is None or torch.version.cuda is not None


def test_the_trainer_keeps_nnunets_constructor_record():
    """nnU-Net re-creates a trainer from ``my_init_kwargs`` (checkpoints, inference): same names as its own."""
    trainer = _trainer(nnUNetTrainerFusedDiceCE, "labels")
    assert list(trainer.my_init_kwargs) == ["plans", "configuration", "fold", "dataset_json", "device"]
    assert copy.deepcopy(trainer.my_init_kwargs["configuration"]) == "3d_fullres"


def _recall_float64(output, label, skeleton, batch_dice, smooth=1e-5):
    """Skeleton Recall as its authors add it to nnU-Net's loss: -mean over foreground classes (and samples unless
    batch_dice) of (sum p_c s_c + smooth) / (sum s_c + smooth), p the softmax; float64, written from the paper."""
    p = torch.softmax(output.double(), 1)[:, 1:]
    classes = torch.arange(1, output.shape[1]).view(1, -1, *[1] * (output.ndim - 2))
    s = (skeleton == classes).double()
    axes = [0, *range(2, output.ndim)] if batch_dice else list(range(2, output.ndim))
    return -((p * s).sum(axes) + smooth).div(s.sum(axes) + smooth).mean()


@pytest.mark.parametrize("batch_dice", [False, True])
def test_skeleton_recall_trainer_loss_is_nnunets_plus_the_recall_term(batch_dice):
    """nnU-Net's own DC_and_CE_loss (its trainer's deep-supervised loss) plus the recall term per level with
    nnU-Net's weights, on targets whose second channel is the skeleton, as the trainer's transforms make them."""
    trainer = _trainer(nnUNetTrainerFusedSkeletonRecall, "labels")
    trainer.configuration_manager.configuration["batch_dice"] = batch_dice
    reference = _trainer(nnUNetTrainer, "labels")
    reference.configuration_manager.configuration["batch_dice"] = batch_dice
    g = torch.Generator().manual_seed(9)
    outputs, labels = _deep_supervision_batch(trainer, 3, g, top=3)
    skeletons = [(torch.rand(t.shape, generator=g) < 0.1).to(t.dtype) * t for t in labels]
    targets = [torch.cat([t, s], 1) for t, s in zip(labels, skeletons)]
    ours = _value_and_grads(trainer._build_loss(), outputs, targets)
    weights = nnunet.nnunet_deep_supervision_weights(len(outputs))
    nnunet_loss = reference._build_loss()

    def theirs_fn(outs, _):
        recall = sum(w * _recall_float64(o, t, s, batch_dice) for w, o, t, s in zip(weights, outs, labels, skeletons))
        return nnunet_loss(outs, labels) + recall.float()

    theirs = _value_and_grads(theirs_fn, outputs, targets)
    _assert_same(ours, theirs)
    # nnU-Net's validation batches carry no skeleton: the Dice + CE part alone, as the plain fused trainer
    plain = _value_and_grads(_trainer(nnUNetTrainerFusedDiceCE, "labels")._build_loss(), outputs, labels)
    _assert_same(_value_and_grads(trainer._build_loss(), outputs, labels), plain)


def test_skeleton_recall_transforms_append_the_skeleton_at_every_level():
    """nnU-Net's own training transforms with the skeleton step: each level's target is label + tubed skeleton
    of the augmented label (at full size exactly tubed_skeleton of it), downsampled together."""
    trainer = _trainer(nnUNetTrainerFusedSkeletonRecall, "labels")
    patch = trainer.configuration_manager.patch_size
    rotation, dummy_2d, _, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    scales = trainer._get_deep_supervision_scales()
    transforms = trainer.get_training_transforms(
        patch, rotation, scales, mirror_axes, dummy_2d, use_mask_for_norm=[False],
        foreground_labels=trainer.label_manager.foreground_labels,
    )  # fmt: skip
    seg = torch.zeros(1, *patch, dtype=torch.int16)
    seg[0, 10:30, 20:28, 12:28] = 1  # a slab and a rod, the kinds of shape a skeleton thins
    seg[0, 18:23, 30:50, 18:23] = 2
    torch.manual_seed(0)
    out = transforms(image=torch.randn(1, *patch), segmentation=seg)["segmentation"]
    assert [tuple(t.shape) for t in out] == [(2, *[round(p * s) for p, s in zip(patch, sc)]) for sc in scales]
    label, skeleton = out[0][0], out[0][1]
    assert skeleton.any() and torch.equal(skeleton, torch.from_numpy(tubed_skeleton(label.numpy(), 3)).to(torch.int16))
