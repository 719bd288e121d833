"""The cross-validation table (``python -m monai_gdl.report FOLD_DIRS``, ``monai_gdl/bundle/crossval.py``): numbers
against hand computation on folds written here, the checks that the folders are folds of one cross-validation,
and the command in a subprocess."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from monai_gdl.bundle.crossval import CrossValidationError, format_folds, summarise_folds

#: fold -> (validation cases, history rows: epoch, val mean, class A, class B, seconds; "" = not validated)
FOLDS = {
    0: (["c0", "c1"], [(1, "0.5", "0.4", "0.6", 10.0), (2, "0.7", "0.6", "0.8", 11.0), (3, "0.6", "0.5", "0.7", 12.0)]),
    1: (["c2", "c3", "c4"], [(1, "0.8", "0.9", "0.7", 20.0), (2, "", "", "", 5.0)]),
    2: (["c5", "c6", "c7"], [(1, "0.9", "0.95", "0.85", 30.0), (2, "0.9", "0.9", "nan", 30.0)]),
}


def _write_fold(root, fold, cases, rows, num_folds=3, seed=0, dataset="/data/set", val_fraction=0.2):
    out = root / f"fold{fold}"
    (out / "logs").mkdir(parents=True)
    split = {"dataset_dir": dataset, "seed": seed, "val_fraction": val_fraction, "fold": fold if num_folds else 0}
    split |= {"num_folds": num_folds, "training": [], "validation": cases}
    (out / "split.json").write_text(json.dumps(split))
    with open(out / "logs" / "history.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "lr", "val_mean_dice", "val_dice_A", "val_dice_B", "epoch_s"])
        for epoch, mean, a, b, seconds in rows:
            writer.writerow([epoch, 0.5, 0.001, mean, a, b, seconds])
    return str(out)


@pytest.fixture
def folds(tmp_path):
    return [_write_fold(tmp_path, k, *FOLDS[k]) for k in (2, 0, 1)]  # any order


def test_the_table_matches_hand_computation(folds):
    results = summarise_folds(folds)
    assert [r.fold for r in results] == [0, 1, 2]
    zero, one, two = results
    # fold 0: the last validated epoch is 3 (0.6), the best is epoch 2 (0.7); fold 1's last epoch has no validation
    assert (zero.last_epoch, zero.last_mean, zero.best_epoch, zero.best_mean) == (3, 0.6, 2, 0.7)
    assert (one.epochs, one.last_epoch, one.last_mean, one.seconds) == (2, 1, 0.8, 25.0)
    assert two.best_epoch == 1  # a tie keeps the first best, as the checkpoint does
    table = format_folds(results)
    mean_row = next(line for line in table.splitlines() if line.startswith("| mean over cases"))
    cells = [c.strip() for c in mean_row.strip("|").split("|")]
    # weighted by validation cases (2, 3, 3): (2 * 0.6 + 3 * 0.8 + 3 * 0.9) / 8
    assert cells[1] == "8" and float(cells[3]) == pytest.approx((1.2 + 2.4 + 2.7) / 8, abs=5e-5)
    assert float(cells[4]) == pytest.approx((2 * 0.5 + 3 * 0.9 + 3 * 0.9) / 8, abs=5e-5)
    assert float(cells[5]) == pytest.approx((2 * 0.7 + 3 * 0.7) / 5, abs=5e-5)  # a nan class left out
    assert float(cells[6]) == pytest.approx((2 * 0.7 + 3 * 0.8 + 3 * 0.9) / 8, abs=5e-5)
    assert cells[7] == f"{(33 + 25 + 60) / 60:.1f} min"
    assert "not given" not in table


def test_missing_folds_are_named_with_what_the_mean_covers(folds):
    table = format_folds(summarise_folds(folds[:2]))  # folds 2 and 0
    assert "fold 1 of 3 not given: the mean covers the 5 cases" in table


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_folds": 5}, "--num_folds 3 against 5"),
        ({"seed": 1}, "--split_seed 0 against 1"),
        ({"dataset": "/other"}, "dataset '/data/set' against '/other'"),
        ({"num_folds": 0}, "--val_fraction 0.2 split, not on a cross-validation fold"),
    ],
)
def test_folders_of_other_runs_are_refused_naming_both(tmp_path, folds, change, message):
    odd = _write_fold(tmp_path / "odd", 1, ["c8"], FOLDS[1][1], **change)
    with pytest.raises(CrossValidationError, match=message.replace("(", r"\(").replace("'", ".")):
        summarise_folds([folds[1], odd])


def test_a_fold_twice_overlapping_cases_no_split_and_no_validation_are_refused(tmp_path, folds):
    again = _write_fold(tmp_path / "again", 0, ["c9"], FOLDS[0][1])
    with pytest.raises(CrossValidationError, match="fold 0 is given twice"):
        summarise_folds([folds[1], again])
    overlap = _write_fold(tmp_path / "overlap", 1, ["c1"], FOLDS[1][1])
    with pytest.raises(CrossValidationError, match="case c1 is a validation case of fold 0 and of fold 1"):
        summarise_folds([folds[1], overlap])
    with pytest.raises(CrossValidationError, match="has no split.json: not a training output folder"):
        summarise_folds([str(tmp_path)])
    early = _write_fold(tmp_path / "early", 1, ["c10"], [(1, "", "", "", 3.0)])
    with pytest.raises(CrossValidationError, match="has no validated epoch yet"):
        summarise_folds([early])


def test_the_report_command_prints_the_table_or_the_error(folds, tmp_path):
    report = [sys.executable, "-m", "monai_gdl.report"]
    run = subprocess.run(report + folds, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "| fold | validation cases | epochs | val mean Dice (last) | A | B | best (epoch) |" in run.stdout
    assert "| 0 | 2 | 3 | 0.6000 | 0.5000 | 0.7000 | 0.7000 (2) | 0.6 min |" in run.stdout
    bad = subprocess.run(report + [folds[0], str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
