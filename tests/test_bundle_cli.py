"""Every bad argument to the bundle ends, through MONAI's CLI, with one short error block naming the argument
and the fix as the last thing printed, exit code 1 (never MONAI's wrapper as the last word, never an abort)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY

from monai_gdl.bundle.datasets import write_synthetic_dataset

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CONFIGS = os.path.join(REPO, "configs")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    with_json = write_synthetic_dataset(str(root / "named"), num_cases=4, shape=(24, 24, 16), seed=3)
    bare = write_synthetic_dataset(str(root / "bare"), num_cases=4, shape=(24, 24, 16), seed=3)
    os.remove(os.path.join(bare, "dataset.json"))  # labels found only by reading them
    return {"named": with_json, "bare": bare, "root": str(root)}


def _run(files: list[str], *args: str, cwd: str) -> subprocess.CompletedProcess:
    config = "[" + ",".join(f"'{os.path.join(CONFIGS, f)}'" for f in files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *TINY, *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def _error_block(run: subprocess.CompletedProcess) -> str:
    """The error, checked to be the last thing printed, one block, after no traceback, with exit code 1."""
    assert run.returncode == 1, (run.returncode, run.stderr[-3000:])
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), lines[-5:]
    assert "Traceback" not in run.stderr and "Failed to evaluate" not in run.stderr, run.stderr[-3000:]
    assert "terminate called" not in run.stderr
    return lines[-1]


CASES = [
    ("typo", ["--epoch", "2"], "named", "unknown key(s) on the command line: --epoch (did you mean --epochs?)"),
    (
        "nested_typo",
        ["--network_def#channel", "[8,16,32,64]"],
        "named",
        "--network_def#channel (network_def has no key 'channel': did you mean --network_def#channels",
    ),
    ("epochs", ["--epochs", "0"], "named", "epochs=0; it must be a whole number >= 1"),
    ("patch", ["--patch_size", "[20,20,20]"], "named", "patch_size=[20, 20, 20] does not fit the network"),
    ("dataset", ["--dataset_dir", "/nowhere/at/all"], None, "dataset_dir='/nowhere/at/all' does not exist"),
    ("classes_json", ["--num_classes", "2"], "named", "num_classes=2 but"),
    ("classes_found", ["--num_classes", "2"], "bare", "label file(s) cannot be used with num_classes=2"),
    ("device", ["--device", "cuda:7"], "named", "device='cuda:7'"),
    ("output", ["--output_dir", "/proc/version/out"], "named", "output_dir='/proc/version/out' is not writable"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,args,dataset,message", CASES, ids=[c[0] for c in CASES])
def test_bad_training_argument_ends_with_one_error_block(name, args, dataset, message, data, tmp_path):
    extra = ["--dataset_dir", data[dataset]] if dataset else []
    out = ["--output_dir", str(tmp_path / "out")] if name != "output" else []
    run = _run(["train.json"], "--bundle_root", str(tmp_path), *extra, *out, *args, cwd=str(tmp_path))
    last = _error_block(run)
    assert message in last, last
    if name == "classes_found":
        assert "holds class 2 but num_classes=2" in last and "Pass --num_classes 3" in last
        assert os.path.join(data["bare"], "labelsTr", "synth_00") in last  # names the files
    assert not os.path.exists(tmp_path / "out" / "models")  # nothing trained


@pytest.mark.slow
def test_classes_never_seen_are_a_warning_naming_them(data, tmp_path):
    run = _run(
        ["train.json"],
        "--bundle_root",
        str(tmp_path),
        "--dataset_dir",
        data["bare"],
        "--num_classes",
        "4",
        "--epochs",
        "1",
        cwd=str(tmp_path),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    first = run.stdout.splitlines()[0]
    assert first.startswith("warning: num_classes=4 but class(es) 3 (class_3) never appear in the 4 label files")
    assert "pass --num_classes 3" in first
    # what the warning says is what the numbers show: nan for the absent class, left out of the mean
    assert "scores a class absent from a label as nan and leaves it out of the mean" in first
    epoch_line = next(line for line in run.stdout.splitlines() if line.startswith("epoch 1/1"))
    assert "class_3 nan" in epoch_line
    with open(tmp_path / "logs" / "history.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["val_dice_class_3"] == "nan"
    present = [float(row[f"val_dice_{n}"]) for n in ("class_1", "class_2")]
    assert float(row["val_mean_dice"]) == pytest.approx(sum(present) / 2, abs=1e-4)


@pytest.mark.slow
def test_a_bad_label_met_while_caching_exits_1_without_an_abort(data, tmp_path):
    """A NaN voxel is only seen when the cache reads the image (in CacheDataset's worker thread): the error
    still ends the run with exit code 1 naming the file, not with 'terminate called' (exit 134)."""
    dataset = write_synthetic_dataset(str(tmp_path / "ds"), num_cases=4, shape=(24, 24, 16), seed=3)
    path = os.path.join(dataset, "imagesTr", "synth_001.nii.gz")
    img = nib.load(path)
    voxels = np.asarray(img.dataobj).copy()
    voxels[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(voxels, img.affine), path)
    run = _run(
        ["train.json"],
        "--bundle_root",
        str(tmp_path),
        "--dataset_dir",
        dataset,
        "--epochs",
        "1",
        "--output_dir",
        str(tmp_path / "out"),
        cwd=str(tmp_path),
    )
    assert f"image file {path} holds 1 NaN or inf voxel(s)" in _error_block(run)


@pytest.mark.slow
def test_evaluate_and_infer_without_a_checkpoint(data, tmp_path):
    evaluate = _run(
        ["train.json", "evaluate.json"],
        "--bundle_root",
        str(tmp_path),
        "--dataset_dir",
        data["named"],
        cwd=str(tmp_path),
    )
    assert f"no checkpoint at {tmp_path}/models/model.pt; train first" in _error_block(evaluate)
    infer = _run(
        ["inference.json"], "--bundle_root", str(tmp_path), "--input_dir", str(tmp_path / "none"), cwd=str(tmp_path)
    )
    assert "no checkpoint at" in _error_block(infer)


@pytest.mark.slow
def test_verbose_shows_the_library_log_and_the_traceback(data, tmp_path):
    run = _run(
        ["train.json"],
        "--bundle_root",
        str(tmp_path),
        "--dataset_dir",
        data["named"],
        "--epochs",
        "0",
        "--verbose",
        "true",
        cwd=str(tmp_path),
    )
    assert run.returncode == 1 and "Traceback" in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: epochs=0")


def test_unknown_keys_lists_close_matches(tmp_path):
    from monai_gdl.bundle.console import unknown_keys

    files = [os.path.join(CONFIGS, "train.json")]
    assert unknown_keys(files, ["epochs", "network_def#channels", "+initialize", "tracking"]) == []
    assert unknown_keys(files, ["lerning_rate"]) == ["--lerning_rate (did you mean --learning_rate?)"]
    assert unknown_keys(files, ["tracking_uri"]) != [] and unknown_keys(files, ["tracking_uri"], tracking=True) == []
    assert unknown_keys(files, ["zzz"]) == ["--zzz (no config key is close)"]
    assert json.loads(json.dumps(unknown_keys(files, ["epoch"])))
    # nested keys: a typo inside a component, an index past a list, a key under a plain value
    assert unknown_keys(files, ["loss#softmaxx"]) == [
        "--loss#softmaxx (loss has no key 'softmaxx': did you mean --loss#softmax?)"
    ]
    assert unknown_keys(files, ["network_def#channels#9"]) == [
        "--network_def#channels#9 (network_def#channels is a list of 4: use an index 0..3)"
    ]
    assert unknown_keys(files, ["epochs#x"]) == [
        "--epochs#x (epochs is a value (60), not a dict or list: override --epochs itself)"
    ]
    # a new argument that the component's _target_ takes is fine (MONAI's UNet has dropout; Adam has weight_decay)
    assert unknown_keys(files, ["network_def#dropout", "optimizer#weight_decay", "network_def#channels#3"]) == []


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda c: c.check_training("cpu", 2, 0, 2, 0.002), "val_interval=0; it must be a whole number >= 1"),
        (lambda c: c.check_training("cpu", 2.5, 1, 2, 0.002), "epochs=2.5"),
        (lambda c: c.check_training("cpu", 2, 1, 0, 0.002), "batch_size=0"),
        (lambda c: c.check_training("cpu", 2, 1, 2, -1), "learning_rate=-1; it must be a positive number"),
        (lambda c: c.check_training("cpu", 2, 1, 2, float("nan")), "learning_rate=nan"),
        (lambda c: c.check_training("gpu", 2, 1, 2, 0.002), "device='gpu' is not a device"),
        (lambda c: c.check_network(_unet(), [16, 16], 3), "patch_size=[16, 16]; give three whole numbers"),
        (lambda c: c.check_network(_unet(), [16, 16, 16], 4), "network_def#out_channels=3 but num_classes=4"),
        (lambda c: c.check_network(_unet(), [16, 16, 16], 1), "num_classes=1"),
    ],
)
def test_argument_checks_name_the_argument_and_the_fix(call, message):
    """The same checks the CLI cases above run, for the values not worth a subprocess each."""
    from monai_gdl.bundle import checks

    with pytest.raises(checks.ArgumentError) as info:
        call(checks)
    assert message in str(info.value)


def _unet():
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16, 32), strides=(2, 2, 2))


def test_an_unwritable_output_dir_is_refused_naming_it(tmp_path):
    from monai_gdl.bundle.checks import OutputDirError, check_output_dir

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputDirError, match=r"output_dir=.*a_file/out.* is not writable"):
        check_output_dir(str(tmp_path / "a_file" / "out"))


def test_flag_parses_every_spelling_and_refuses_the_rest():
    from monai_gdl.bundle.checks import ArgumentError, flag

    for value in (True, 1, "true", "TRUE", " yes ", "On", "1"):
        assert flag("amp", value) is True
    for value in (False, 0, "false", "False", "no", "OFF", "0"):
        assert flag("amp", value) is False
    for value in ("ture", "", 2, None, 0.5):
        with pytest.raises(ArgumentError, match=r"amp=.* is not a boolean; pass --amp true or --amp false"):
            flag("amp", value)


def test_the_04_module_paths_are_gone_in_06():
    """``monai_gdl.bundle.cli`` and ``.handlers`` forwarded with a FutureWarning through 0.5 and are removed in 0.6."""
    import monai_gdl.bundle

    for name in ("cli", "handlers"):
        with pytest.raises(AttributeError):
            getattr(monai_gdl.bundle, name)


@pytest.mark.slow
def test_a_second_training_into_the_same_output_dir_is_refused_until_the_first_ends(data, tmp_path):
    """Two runs into one folder once both exited 0 with their history.csv rows mixed. The lock is the OS's: a
    killed holder (kill -9) frees it, so the next run trains."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from monai_gdl.bundle.lock import hold_output_dir; "
            f"hold_output_dir({str(out)!r}); print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["--bundle_root", str(tmp_path), "--dataset_dir", data["bare"], "--output_dir", str(out)]
        second = _run(["train.json"], *args, "--epochs", "1", cwd=str(tmp_path))
        assert second.returncode == 1
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: output_dir={str(out)!r} is in use by another training (pid {holder.pid}")
        assert "pass another --output_dir" in last and not (out / "logs").exists()  # refused before training
    finally:
        holder.kill()  # SIGKILL: no clean-up runs in the holder
        holder.wait()
    third = _run(["train.json"], *args, "--epochs", "1", cwd=str(tmp_path))
    assert third.returncode == 0, third.stderr[-3000:]
    assert (out / "logs" / "history.csv").exists()


@pytest.mark.slow
def test_a_boolean_typed_as_text_is_understood_or_refused_before_loading(data, tmp_path):
    """``--include_background false`` reached the loss as the truthy string "false" (background silently scored);
    ``--loss#softmax true`` failed at the first step with a type error, after loading the data."""
    nested = _run(
        ["train.json"],
        "--bundle_root",
        str(tmp_path),
        "--dataset_dir",
        data["bare"],
        "--loss#softmax",
        "true",
        cwd=str(tmp_path),
    )
    assert nested.returncode == 1
    last = nested.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --loss#softmax true: loss#softmax is a boolean") and "--loss#softmax True" in last
    assert not (tmp_path / "logs").exists()  # refused before any data was loaded


def test_top_level_boolean_knobs_parse_text_as_the_command_line_gives_it():
    import monai_gdl  # noqa: F401  (the configs' expressions name it)
    from monai_gdl.bundle.files import load_config

    for text, expected in (("false", False), ("TRUE", True), (False, False)):
        loss = load_config("train", include_background=text).get_parsed_content("loss")
        assert loss.include_background is expected
    from monai_gdl.bundle.checks import ArgumentError

    with pytest.raises(Exception) as info:
        load_config("train", include_background="flase").get_parsed_content("loss")
    err = info.value
    while err is not None and not isinstance(err, ArgumentError):
        err = err.__cause__ or err.__context__
    assert err is not None and "include_background='flase' is not a boolean" in str(err)
