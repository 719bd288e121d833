"""``python -m monai_gdl.study --quick`` as a user runs it: a subprocess that writes every table and figure."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from monai_gdl.study import LOSSES, STRUCTURES, write_imbalance_dataset, write_tube_dataset


@pytest.mark.slow
def test_quick_study_writes_tables_and_figures(tmp_path):
    out = tmp_path / "study"
    run = subprocess.run(
        [sys.executable, "-m", "monai_gdl.study", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(tmp_path),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("summary.md", "runs.csv", "curves.csv", "dice_curves.png", "loss_vs_dice.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["loss"] for r in rows} == set(LOSSES) and {r["class"] for r in rows} == {"large", "small"}
    assert set(STRUCTURES) <= set(LOSSES) and {r["dataset"] for r in rows} == {"synthetic_1", "thin"}
    assert all(0.0 <= float(r["final_dice"]) <= 1.0 for r in rows)
    small = [r for r in rows if r["class"] == "small"]
    assert all(0.0 <= float(r["cldice"]) <= 1.0 and float(r["components_error"]) >= 0 for r in small)
    with open(out / "curves.csv") as f:
        curves = list(csv.DictReader(f))
    assert len(curves) == 2 * 2 * len(LOSSES)  # two datasets, two epochs per loss
    summary = (out / "summary.md").read_text()
    assert "## synthetic_1" in summary and "## thin" in summary
    assert all(f"| {name} |" in summary for name in LOSSES) and "| loss | lr | clDice | components error |" in summary
    assert summary in run.stdout


def test_imbalance_dataset_has_the_requested_small_share(tmp_path):
    for fraction in (0.001, 0.01, 0.05):
        _, share = write_imbalance_dataset(str(tmp_path / f"d{fraction}"), fraction, 3, (40, 40, 40), seed=0)
        assert share == pytest.approx(fraction, rel=0.25)


def test_tube_dataset_is_thin_connected_and_beside_the_large_structure(tmp_path):
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    folder, share = write_tube_dataset(str(tmp_path / "thin"), 3, (32, 32, 32), seed=0)
    assert 0.002 < share < 0.05
    for i in range(3):
        label = np.asarray(nib.load(f"{folder}/labelsTr/thin_{i:03d}.nii.gz").dataobj)
        tubes = label == 2
        assert ndimage.label(tubes, structure=np.ones((3, 3, 3)))[1] == 1  # one branching tree
        assert ndimage.distance_transform_edt(tubes).max() <= 2.5  # radius 1-2 voxels
        assert (label == 1).mean() > 0.1


@pytest.mark.slow
def test_unknown_dataset_and_bad_epochs_are_clear_errors(tmp_path):
    bad = subprocess.run(
        [sys.executable, "-m", "monai_gdl.study", "--quick", "--datasets", "mnist", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "unknown dataset 'mnist'" in bad.stderr
    zero = subprocess.run(
        [sys.executable, "-m", "monai_gdl.study", "--quick", "--epochs", "0", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert zero.returncode == 1 and "train at least 1 epoch" in zero.stderr
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai_gdl.study",
            "--quick",
            "--datasets",
            "hippocampus",
            "--hippocampus",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode != 0 and "needs --hippocampus DIR" in missing.stderr
