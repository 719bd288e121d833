"""``python -m monai_gdl.study --quick`` as a user runs it: a subprocess that writes every table and figure."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from monai_gdl.study import LOSSES, write_imbalance_dataset


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
    assert all(0.0 <= float(r["final_dice"]) <= 1.0 for r in rows)
    with open(out / "curves.csv") as f:
        curves = list(csv.DictReader(f))
    assert len(curves) == 2 * len(LOSSES)  # two epochs per loss
    summary = (out / "summary.md").read_text()
    assert "## synthetic_1" in summary and all(f"| {name} |" in summary for name in LOSSES)
    assert summary in run.stdout


def test_imbalance_dataset_has_the_requested_small_share(tmp_path):
    for fraction in (0.001, 0.01, 0.05):
        _, share = write_imbalance_dataset(str(tmp_path / f"d{fraction}"), fraction, 3, (40, 40, 40), seed=0)
        assert share == pytest.approx(fraction, rel=0.25)


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
