"""The MONAI bundle: every config parses and overrides; metadata is valid; train/evaluate/infer end to end."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from monai_gdl.bundle.datasets import write_synthetic_dataset
from monai_gdl.bundle.handlers import CheckpointError, load_network_checkpoint

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CONFIGS = os.path.join(REPO, "configs")
TINY = ["--patch_size", "[16,16,16]", "--channels", "[4,8,16,32]", "--spacing", "[2.0,2.0,2.0]"]
KNOBS = ["dataset_dir", "output_dir", "epochs", "patch_size", "num_classes", "device", "amp", "val_interval", "seed",
         "cache_rate", "num_workers", "learning_rate", "batch_size", "spacing", "intensity", "resume"]


def _parser(*files: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([os.path.join(CONFIGS, f) for f in files])
    parser.update(overrides)
    return parser


def test_every_config_file_is_valid_json():
    for name in os.listdir(CONFIGS):
        if name.endswith(".json"):
            with open(os.path.join(CONFIGS, name)) as f:
                json.load(f)


def test_train_config_has_every_knob_at_top_level():
    parser = _parser("train.json")
    for key in KNOBS:
        assert key in parser.get(), key


@pytest.mark.parametrize(
    "files,overrides,expected",
    [
        (["train.json"], {}, "VNetDiceLoss"),
        (["train.json", "loss_gdl.json"], {}, "SudreGeneralizedDiceLoss"),
        (["train.json", "loss_gdl.json", "loss_vnet_dice.json"], {}, "VNetDiceLoss"),
        (["train.json"], {"loss#_target_": "SudreGeneralizedDiceLoss"}, "SudreGeneralizedDiceLoss"),
        (["train.json", "loss_dice_ce.json"], {}, "VNetDiceCELoss"),
        (["train.json", "loss_gdl_ce.json"], {}, "SudreGeneralizedDiceCELoss"),
        (["train.json", "loss_dice_focal.json"], {}, "VNetDiceFocalLoss"),
    ],
)
def test_loss_is_one_override(files, overrides, expected):
    loss = _parser(*files, **overrides).get_parsed_content("loss")
    assert type(loss).__name__ == expected


def test_train_components_instantiate(tmp_path):
    ds = write_synthetic_dataset(str(tmp_path / "ds"), num_cases=4, shape=(16, 16, 8))
    parser = _parser("train.json", dataset_dir=ds, output_dir=str(tmp_path / "out"), num_classes=3)
    network = parser.get_parsed_content("network")
    assert network(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)
    assert len(parser.get_parsed_content("train#datalist")) == 3
    assert parser.get_parsed_content("class_names") == ["background", "large", "small"]


def test_multi_gpu_config_makes_the_loss_a_global_batch_dice():
    """Merged after train.json, the parsed loss object pools over the batch (and so all-reduces under DDP)."""
    single = _parser("train.json").get_parsed_content("loss")
    multi = _parser("train.json", "multi_gpu_train.json").get_parsed_content("loss")
    assert type(multi) is type(single) and single.batch is False and multi.batch is True and multi.distributed


def test_inference_config_shares_the_network_and_transforms():
    parser = _parser("inference.json", input_dir="", num_classes=3)
    for key in ("num_classes", "channels", "patch_size", "spacing", "intensity"):
        assert parser.get(key) == _parser("train.json").get(key), key
    assert parser.get("network_def#_target_") == _parser("train.json").get("network_def#_target_")


def test_metadata_has_the_bundle_schema_fields():
    """What MONAI's verify_metadata checks against the model-zoo schema, checked offline."""
    meta = json.load(open(os.path.join(CONFIGS, "metadata.json")))
    strings = ["version", "monai_version", "pytorch_version", "numpy_version", "task", "description", "authors", "copyright"]
    for key in strings:
        assert isinstance(meta.get(key), str) and meta[key], key
    assert isinstance(meta["required_packages_version"], dict) and "monai_gdl" in meta["required_packages_version"]
    assert meta["changelog"][meta["version"]]
    for section, name in (("inputs", "image"), ("outputs", "pred")):
        spec = meta["network_data_format"][section][name]
        for key in ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data", "channel_def"):
            assert key in spec, (section, key)
        assert len(spec["channel_def"]) == spec["num_channels"]
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == _parser("train.json").get("num_classes")


def test_checkpoint_from_another_network_is_explained(tmp_path):
    from monai_gdl.bundle.network import segmentation_unet

    path = str(tmp_path / "model.pt")
    torch.save(segmentation_unet(3, channels=(4, 8, 16, 32)).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"saved from a different network .*checkpoint \(8, 3, 3, 3, 3\) vs network \(8, 5"):
        load_network_checkpoint(path, segmentation_unet(5, channels=(4, 8, 16, 32)))
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*train first"):
        load_network_checkpoint(str(tmp_path / "none.pt"), segmentation_unet(3))


def _bundle(config_files: list[str], *args: str, cwd: str, env: dict | None = None) -> subprocess.CompletedProcess:
    files = "[" + ",".join(f"'{os.path.join(CONFIGS, f)}'" for f in config_files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--bundle_root", REPO, *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return write_synthetic_dataset(str(tmp_path_factory.mktemp("data") / "ds"), num_cases=5, shape=(24, 24, 16), seed=2)


@pytest.mark.slow
@pytest.mark.parametrize("loss_file", ["loss_vnet_dice.json", "loss_gdl.json", "loss_dice_ce.json"])
def test_train_evaluate_infer_end_to_end(tmp_path, tiny_dataset, loss_file):
    out, pred = str(tmp_path / "out"), str(tmp_path / "pred")
    common = ["--dataset_dir", tiny_dataset, "--output_dir", out, *TINY]
    # The backend users get (native C kernel on CPU where a compiler exists), not the suite's eager default.
    users_default = dict(os.environ, MONAI_GDL_BACKEND="auto")
    train = _bundle(["train.json", loss_file], "--epochs", "2", *common, cwd=str(tmp_path), env=users_default)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "epoch 2/2 loss" in train.stdout and "val_mean_dice" in train.stdout
    for name in ("last.pt", "model.pt", "history.csv"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert os.listdir(os.path.join(out, "tensorboard"))
    with open(os.path.join(out, "history.csv")) as f:
        history = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in history] == [1, 2] and all(0 <= float(r["val_mean_dice"]) <= 1 for r in history)
    assert torch.load(os.path.join(out, "last.pt"), weights_only=True)["epoch"] == 2

    evaluate = _bundle(["train.json", loss_file, "evaluate.json"], *common, cwd=str(tmp_path))
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    summary = json.load(open(os.path.join(out, "evaluation", "summary.json")))
    assert summary["num_cases"] == 1 and 0 <= summary["mean_dice"] <= 1 and 0 <= summary["gdl_score"] <= 1
    assert {"dice_large", "dice_small"} <= set(summary)
    assert any(f.startswith("overlay_") for f in os.listdir(os.path.join(out, "evaluation")))

    images = os.path.join(tiny_dataset, "imagesTr")
    infer = _bundle(["inference.json"], "--input_dir", images, "--output_dir", out, "--prediction_dir", pred,
                    *TINY, cwd=str(tmp_path))
    assert infer.returncode == 0, infer.stderr[-3000:]
    for name in sorted(os.listdir(images)):
        case = name.split(".nii")[0]
        written = [f for f in os.listdir(pred) if case in f]
        assert len(written) == 1, (case, os.listdir(pred))
        src, seg = nib.load(os.path.join(images, name)), nib.load(os.path.join(pred, written[0]))
        assert seg.shape == src.shape
        np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}

    report = subprocess.run([sys.executable, "-m", "monai_gdl.report", out], capture_output=True, text=True)
    assert report.returncode == 0 and os.path.isfile(os.path.join(out, "training_curves.png"))


@pytest.mark.slow
def test_interrupted_training_resumes_from_last_checkpoint(tmp_path, tiny_dataset):
    out = str(tmp_path / "out")
    args = ["--dataset_dir", tiny_dataset, "--output_dir", out, "--epochs", "40", *TINY]
    files = "[" + ",".join(f"'{os.path.join(CONFIGS, f)}'" for f in ["train.json"]) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--bundle_root", REPO, *args]
    proc = subprocess.Popen(cmd, cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = os.path.join(out, "last.pt")
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.isfile(last) and torch.load(last, weights_only=True)["epoch"] >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(last, weights_only=True)["epoch"]
    assert 2 <= killed_at < 40
    resumed = _bundle(["train.json"], *args[:-len(TINY) - 2], "--epochs", str(killed_at + 2), *TINY, cwd=str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {last} at epoch {killed_at}" in resumed.stdout
    assert f"epoch {killed_at + 1}/{killed_at + 2} loss" in resumed.stdout
    assert "epoch 1/" not in resumed.stdout
    assert torch.load(last, weights_only=True)["epoch"] == killed_at + 2
    with open(os.path.join(out, "history.csv")) as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, killed_at + 3))


@pytest.mark.slow
def test_bundle_cli_errors_are_clear(tmp_path, tiny_dataset):
    missing = _bundle(["train.json"], "--dataset_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o"),
                      "--epochs", "1", *TINY, cwd=str(tmp_path))
    assert missing.returncode != 0 and "does not exist; pass --dataset_dir DIR" in missing.stderr
    no_ckpt = _bundle(["inference.json"], "--input_dir", os.path.join(tiny_dataset, "imagesTr"),
                      "--output_dir", str(tmp_path / "empty"), *TINY, cwd=str(tmp_path))
    assert no_ckpt.returncode != 0 and "no checkpoint at" in no_ckpt.stderr


@pytest.mark.slow
def test_multi_gpu_config_runs_under_torchrun_on_two_cpu_ranks(tmp_path):
    """The DDP override really trains (gloo backend on CPU here; nccl on GPUs)."""
    out = str(tmp_path / "out")
    files = "[" + ",".join(f"'{os.path.join(CONFIGS, f)}'" for f in ["train.json", "multi_gpu_train.json"]) + "]"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run",
           "--config_file", files, "--bundle_root", REPO, "--output_dir", out, "--epochs", "1", *TINY]
    run = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("epoch 1/1 loss") == 1  # rank 0 alone reports and writes
    assert torch.load(os.path.join(out, "last.pt"), weights_only=True)["epoch"] == 1
