"""Data and training reliability (issue #11, items 6-10): misaligned or broken data is refused before
training, output is never lost or torn, and a run killed with SIGKILL and resumed equals the
uninterrupted run epoch by epoch."""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY

from monai_gdl.bundle import atomic, checks, epoch_summary
from monai_gdl.bundle.datasets import write_synthetic_dataset

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CONFIGS = os.path.join(REPO, "configs")


def _train(*args: str, cwd: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        os.path.join(CONFIGS, "train.json"),
        "--bundle_root",
        REPO,
        *TINY,
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def _history(out: str) -> list[dict]:
    with open(os.path.join(out, "logs", "history.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def dataset(tmp_path):
    return write_synthetic_dataset(str(tmp_path / "ds"), num_cases=5, shape=(24, 24, 16), seed=2)


def _rewrite(path: str, data=None, affine=None) -> None:
    img = nib.load(path)
    values = np.asarray(img.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(values, img.affine if affine is None else affine), path)


# 10. kill -9 mid-epoch, resume: every logged number equals the uninterrupted run's.
KILL_DURING_EPOCH_3 = """
    import json, os, signal, sys
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow
    overrides = json.loads(sys.argv[2])
    workflow = ConfigWorkflow(config_file=sys.argv[1], workflow_type="train", **overrides)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    def die(engine):
        if engine.state.epoch == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: as a crash or an OOM kill
    trainer.add_event_handler(Events.ITERATION_COMPLETED, die)
    workflow.run()
"""


@pytest.mark.slow
def test_a_run_killed_and_resumed_equals_the_uninterrupted_run(tmp_path, dataset):
    common = ["--dataset_dir", dataset, "--epochs", "4", "--val_interval", "2"]  # killed after a validated epoch
    whole = _train(*common, "--output_dir", str(tmp_path / "whole"), cwd=str(tmp_path))
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed_out = str(tmp_path / "killed")
    overrides = {
        "bundle_root": REPO,
        "dataset_dir": dataset,
        "output_dir": killed_out,
        "epochs": 4,
        "val_interval": 2,
        "patch_size": [16, 16, 16],
        "network_def#channels": [4, 8, 16, 32],
        "spacing": [2.0, 2.0, 2.0],
        "progress": False,
    }
    killer = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(KILL_DURING_EPOCH_3),
            os.path.join(CONFIGS, "train.json"),
            json.dumps(overrides),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killer.returncode == -9, killer.stderr[-3000:]
    assert [int(r["epoch"]) for r in _history(killed_out)] == [1, 2]
    resumed = _train(*common, "--output_dir", killed_out, cwd=str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    want, got = _history(str(tmp_path / "whole")), _history(killed_out)
    assert [r["epoch"] for r in got] == ["1", "2", "3", "4"]
    for a, b in zip(want, got):
        for key in set(a) - {"epoch_s"}:  # all but the wall time
            assert (a[key] == "") == (b[key] == ""), (a["epoch"], key, a, b)  # validated at the same epochs
            same = a[key] == "" or math.isclose(float(a[key]), float(b[key]), rel_tol=1e-4, abs_tol=1e-4)
            assert same, (a["epoch"], key, a, b)
    assert not [f for _, _, files in os.walk(killed_out) for f in files if ".tmp-" in f]


@pytest.mark.slow
def test_raising_epochs_on_a_finished_run_continues_on_the_longer_schedule(tmp_path, dataset):
    out = str(tmp_path / "out")
    assert _train("--dataset_dir", dataset, "--output_dir", out, "--epochs", "2", cwd=str(tmp_path)).returncode == 0
    more = _train("--dataset_dir", dataset, "--output_dir", out, "--epochs", "4", cwd=str(tmp_path))
    assert more.returncode == 0, more.stderr[-3000:]
    rates = [float(r["lr"]) for r in _history(out)]
    cosine = [0.002 * (1 + math.cos(math.pi * e / 4)) / 2 for e in (2, 3)]  # the 4-epoch cosine at epochs 3, 4
    assert rates[2:] == pytest.approx(cosine, rel=1e-6)  # not lr 0, then climbing back


# 9. Atomic history and checkpoints; leftovers of a kill are removed; a truncated last.pt explains the fix.
def test_a_kill_during_the_history_write_leaves_the_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "history.csv")
    epoch_summary.write_history(path, {"epoch": 1, "loss": 0.5})
    epoch_summary.write_history(path, {"epoch": 2, "loss": 0.4})

    def killed(*_args):
        raise KeyboardInterrupt  # the process dies between writing the new file and renaming it

    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        epoch_summary.write_history(path, {"epoch": 3, "loss": 0.3})
    monkeypatch.undo()
    with open(path) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    assert os.listdir(tmp_path) == ["history.csv"]


def test_leftovers_of_a_killed_writer_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name in (f"last.pt.tmp-{dead.pid}", f"history.csv.tmp-{dead.pid}", f"model.pt.tmp-{os.getppid()}"):
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / f"synthetic_data.tmp-{dead.pid}").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / f"last.pt.tmp-{dead.pid}").write_bytes(b"partial")
    checks.check_output_dir(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [f"model.pt.tmp-{os.getppid()}", "models"]  # its writer (our parent) runs
    assert os.listdir(tmp_path / "models") == []


@pytest.mark.slow
def test_a_truncated_last_checkpoint_says_how_to_go_on(tmp_path, dataset):
    out = str(tmp_path / "out")
    assert _train("--dataset_dir", dataset, "--output_dir", out, "--epochs", "1", cwd=str(tmp_path)).returncode == 0
    last = os.path.join(out, "models", "last.pt")
    with open(last, "r+b") as f:
        f.truncate(os.path.getsize(last) // 2)
    again = _train("--dataset_dir", dataset, "--output_dir", out, "--epochs", "2", cwd=str(tmp_path))
    assert again.returncode != 0
    assert f"cannot resume: {last} is truncated or corrupt" in again.stderr
    assert "--resume false" in again.stderr and "model.pt" in again.stderr
    fresh = _train(
        "--dataset_dir", dataset, "--output_dir", out, "--epochs", "1", "--resume", "false", cwd=str(tmp_path)
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]


# 8. An output folder that cannot be written fails before any data is loaded.
@pytest.mark.slow
def test_an_unwritable_output_dir_fails_before_training(tmp_path, dataset):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    bad = str(blocker / "out")
    run = _train("--dataset_dir", dataset, "--output_dir", bad, "--epochs", "1", cwd=str(tmp_path))
    assert run.returncode != 0
    assert f"output_dir={bad!r} is not writable" in run.stderr and "pass --output_dir" in run.stderr
    assert "epoch 1/1" not in run.stdout + run.stderr


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_dir_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    with pytest.raises(checks.OutputDirError, match=r"is not writable"):
        checks.check_output_dir(str(folder))


def test_a_folder_where_a_file_is_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(checks.OutputDirError, match=r"output_dir=.*f/out.*is not writable.*pass --output_dir"):
        checks.check_output_dir(str(tmp_path / "f" / "out"))


# 6 and 7. Misaligned pairs and broken files: `data check` lists every problem; training refuses first.
def _data_check(dataset: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai_gdl.data", "check", dataset, *extra], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "change,what",
    [
        ("shift", "origin"),
        ("spacing", "spacing"),
        ("flip", "orientation"),
        ("shape", "shape"),
    ],
)
def test_a_misaligned_pair_is_refused_by_data_check(dataset, change, what):
    label = os.path.join(dataset, "labelsTr", "synth_001.nii.gz")
    img = nib.load(label)
    affine, data = img.affine.copy(), np.asarray(img.dataobj)
    if change == "shift":
        affine[:3, 3] += [10.0, 0.0, 0.0]
    elif change == "spacing":
        affine[:3, :3] *= 1.1
    elif change == "flip":
        affine[:, 1] *= -1
    else:
        data = data[:, :, :-2]
    _rewrite(label, data, affine)
    result = _data_check(dataset)
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if "not on the same voxel grid" in line]
    assert "imagesTr/synth_001.nii.gz" in line and "labelsTr/synth_001.nii.gz" in line and f"({what} " in line


@pytest.mark.slow
def test_training_refuses_a_label_shifted_by_10_mm_before_any_step(tmp_path, dataset):
    label = os.path.join(dataset, "labelsTr", "synth_003.nii.gz")
    affine = nib.load(label).affine.copy()
    affine[:3, 3] += [0.0, 10.0, 0.0]
    _rewrite(label, affine=affine)
    run = _train("--dataset_dir", dataset, "--output_dir", str(tmp_path / "out"), "--epochs", "1", cwd=str(tmp_path))
    assert run.returncode != 0
    assert "synth_003.nii.gz are not on the same voxel grid (origin" in run.stderr and "shifted by 10 mm" in run.stderr
    assert not os.path.exists(tmp_path / "out" / "models" / "last.pt")


@pytest.mark.slow
def test_data_check_reports_every_problem_one_line_each(dataset, tmp_path):
    images, labels = os.path.join(dataset, "imagesTr"), os.path.join(dataset, "labelsTr")
    case = lambda i, kind: os.path.join(images if kind == "image" else labels, f"synth_{i:03d}.nii.gz")  # noqa: E731
    raw = gzip.decompress(open(case(0, "image"), "rb").read())
    with open(case(0, "image"), "wb") as f:
        f.write(gzip.compress(raw[: len(raw) // 2]))  # truncated: the header still reads
    four_d = np.asarray(nib.load(case(1, "image")).dataobj)[..., None].repeat(2, -1)
    _rewrite(case(1, "image"), four_d)
    nan_image = np.asarray(nib.load(case(2, "image")).dataobj).copy()
    nan_image[3, 4, 5] = np.nan
    nan_image[4, 4, 5] = np.inf
    _rewrite(case(2, "image"), nan_image)
    _rewrite(case(3, "label"), np.asarray(nib.load(case(3, "label")).dataobj).astype(np.float32) * 0.5)
    high = np.asarray(nib.load(case(4, "label")).dataobj).copy()
    high[0, 0, 0] = 7
    _rewrite(case(4, "label"), high)
    meta_path = os.path.join(dataset, "dataset.json")
    meta = json.load(open(meta_path))
    meta["training"].append({"image": "./imagesTr/gone.nii.gz", "label": "./labelsTr/gone.nii.gz"})
    json.dump(meta, open(meta_path, "w"))
    result = _data_check(dataset)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    expected = [
        (case(0, "image"), "cannot be read, truncated or corrupt"),
        (case(1, "image"), "a 4-D image"),
        (case(2, "image"), "2 NaN or inf voxel(s)"),
        (case(3, "label"), "non-integer values"),
        (case(4, "label"), "holds class 7 but num_classes=3"),
        (os.path.join(images, "gone.nii.gz"), "listed in dataset.json 'training'[5] but missing"),
        (os.path.join(labels, "gone.nii.gz"), "listed in dataset.json 'training'[5] but missing"),
    ]
    for path, message in expected:
        assert [line for line in lines if path in line and message in line], (path, message, lines)
    assert len(lines) == len(expected), lines
    assert f"{len(expected)} problem(s)" in result.stderr.splitlines()[-1]
    assert _data_check(dataset, "--num_classes", "8").stderr.count("holds class 7") == 0


@pytest.mark.slow
def test_data_check_passes_a_clean_dataset(dataset):
    result = _data_check(dataset)
    assert result.returncode == 0, result.stderr
    assert "checked 5 cases: no problems found" in result.stdout


@pytest.mark.slow
def test_nan_voxels_met_in_training_name_the_file(tmp_path, dataset):
    path = os.path.join(dataset, "imagesTr", "synth_002.nii.gz")
    image = np.asarray(nib.load(path).dataobj).copy()
    image[5, 5, 5] = np.nan
    _rewrite(path, image)
    run = _train("--dataset_dir", dataset, "--output_dir", str(tmp_path / "out"), "--epochs", "1", cwd=str(tmp_path))
    assert run.returncode != 0
    assert f"image file {path} holds 1 NaN or inf voxel(s)" in run.stderr
    assert "learning rate" not in run.stderr


def test_the_training_lists_refuse_a_4d_image_and_accept_a_trailing_unit_axis(dataset):
    from monai_gdl.bundle.datasets import DatasetError, msd_datalist

    path = os.path.join(dataset, "imagesTr", "synth_001.nii.gz")
    volume = np.asarray(nib.load(path).dataobj)
    _rewrite(path, volume[..., None])  # X x Y x Z x 1: one channel, accepted
    assert len(msd_datalist(dataset, "training")) + len(msd_datalist(dataset, "validation")) == 5
    _rewrite(path, volume[..., None].repeat(2, -1))
    with pytest.raises(DatasetError, match=r"synth_001.nii.gz: a 4-D image of shape \(24, 24, 16, 2\)"):
        msd_datalist(dataset, "training") + msd_datalist(dataset, "validation")


_FULL_DISK = """
import errno, os
_fsync = os.fsync
def fsync(fd):
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = ""
    if "last.pt.tmp-" in target:
        raise OSError(errno.ENOSPC, "No space left on device")
    return _fsync(fd)
os.fsync = fsync
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to find the file being synced")
def test_a_full_disk_ends_with_its_cause_the_path_and_the_fix(dataset, tmp_path):
    """The disk fills while last.pt is written: the run's last lines say so (not MONAI's generic "Failed to
    evaluate ConfigExpression" with the cause buried mid-traceback), and the rerun trains on."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_FULL_DISK)
    out = str(tmp_path / "out")
    env = dict(os.environ, PYTHONPATH=str(hook))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", os.path.join(CONFIGS, "train.json")]
    cmd += ["--bundle_root", REPO, *TINY, "--dataset_dir", dataset, "--output_dir", out, "--epochs", "2"]
    full = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert full.returncode == 1
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: could not write {os.path.join(out, 'models', 'last.pt')}: no space left on device")
    assert "run the same command again" in last and "Traceback" not in full.stderr
    assert not [f for f in os.listdir(os.path.join(out, "models")) if ".tmp-" in f]  # no half-written file left
    again = _train("--dataset_dir", dataset, "--output_dir", out, "--epochs", "2", cwd=str(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert [int(r["epoch"]) for r in _history(out)] == [1, 2]


def test_a_label_stored_in_another_orientation_over_the_same_voxels_is_accepted(dataset):
    """LPS vs RAS: the same voxels, stored mirrored, with the affine that says so. The pipeline reorients both to
    RAS, so the pair is fine (it was refused as "shifted by 55 mm ... misaligned"); a grid really turned round
    is still refused, naming the orientation and what differs once both are reoriented."""
    from monai_gdl.bundle.datasets import msd_datalist, pair_mismatch

    image = nib.load(os.path.join(dataset, "imagesTr", "synth_001.nii.gz"))
    path = os.path.join(dataset, "labelsTr", "synth_001.nii.gz")
    label = nib.load(path)
    to_ras = nib.orientations.ornt_transform(nib.io_orientation(label.affine), nib.orientations.axcodes2ornt("RAS"))
    ras = label.as_reoriented(to_ras)  # the synthetic cases are stored LPS: this label now RAS, same voxels
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S") and nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert pair_mismatch(image, ras) is None
    nib.save(ras, path)
    assert len(msd_datalist(dataset, "training", 0.2, 0)) + len(msd_datalist(dataset, "validation", 0.2, 0)) == 5
    flipped = label.affine.copy()
    flipped[:, 1] *= -1  # one axis turned round about the origin: other voxels in world space
    diff = pair_mismatch(image, nib.Nifti1Image(np.asarray(label.dataobj), flipped))
    assert diff is not None and diff.startswith("orientation LPS vs LAS, and reoriented to RAS alike they still differ")
    assert "origin" in diff


def test_output_inside_the_installed_package_is_refused(tmp_path):
    """``--bundle_root $(python -m monai_gdl.bundle path)`` without ``--output_dir`` would write models, logs and
    the synthetic data into site-packages: refused before anything is written, naming ``init``."""
    from monai_gdl.bundle.datasets import resolve_dataset_dir
    from monai_gdl.bundle.files import bundle_dir

    package_bundle = bundle_dir()
    before = sorted(os.listdir(package_bundle))
    for call in (lambda: checks.check_output_dir(package_bundle), lambda: resolve_dataset_dir("", package_bundle)):
        with pytest.raises(checks.OutputDirError, match=r"inside the installed monai_gdl package.*bundle init DIR"):
            call()
    assert sorted(os.listdir(package_bundle)) == before
    assert checks.check_output_dir(str(tmp_path / "out")) == str(tmp_path / "out")  # elsewhere: fine


def test_training_curves_name_the_run_and_loss_and_mark_the_best_epoch(tmp_path):
    """The curve figure says which run and loss it shows and where ``model.pt`` (the best epoch) is."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from monai_gdl.bundle import curves

    log_dir = tmp_path / "my_run" / "logs"
    log_dir.mkdir(parents=True)
    rows = ["epoch,loss,lr,val_mean_dice,val_dice_A", "1,0.9,1e-3,0.5,0.5", "2,0.8,1e-3,0.7,0.7", "3,0.7,1e-3,0.7,0.6"]
    (log_dir / "history.csv").write_text("\n".join(rows) + "\n")
    seen = {}
    real_savefig = plt.Figure.savefig

    def capture(fig, *args, **kwargs):
        seen["title"] = fig._suptitle.get_text()
        ax = fig.axes[1]
        seen["labels"] = [line.get_label() for line in ax.get_lines()]
        seen["best"] = [line.get_xydata().tolist() for line in ax.get_lines() if line.get_label().startswith("best")]
        return real_savefig(fig, *args, **kwargs)

    plt.Figure.savefig = capture
    try:
        curves.plot_training_curves(str(log_dir), loss_name="VNetDiceCELoss")
    finally:
        plt.Figure.savefig = real_savefig
    assert seen["title"] == "my_run: VNetDiceCELoss"
    assert "best 0.700 (model.pt)" in seen["labels"]
    assert seen["best"] == [[[2.0, 0.7]]]  # the first epoch reaching the best, as the checkpoint keeps it


@pytest.mark.parametrize(
    ("interval", "max_epochs", "validated"),
    [(5, 12, [5, 10, 12]), (5, 10, [5, 10]), (1, 3, [1, 2, 3]), (4, 2, [2])],
)
def test_validation_runs_every_interval_and_after_the_last_epoch(interval, max_epochs, validated):
    from ignite.engine import Engine

    from monai_gdl.bundle.validation_schedule import IntervalAndLastValidation

    class Recorder:
        def __init__(self):
            self.epochs = []

        def run(self, epoch):
            self.epochs.append(epoch)

    handler = IntervalAndLastValidation(interval=interval)
    handler.validator = Recorder()  # MONAI's handler asks for an Evaluator; only run(epoch) is called
    trainer = Engine(lambda engine, batch: None)
    handler.attach(trainer)
    trainer.run([0], max_epochs=max_epochs)
    assert handler.validator.epochs == validated
    if max_epochs == 12:  # resumed with more epochs: the new last epoch is validated, the old one as any other
        trainer.run([0], max_epochs=14)
        assert handler.validator.epochs == [*validated, 14]
