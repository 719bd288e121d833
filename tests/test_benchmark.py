"""The benchmark command runs, prints its table and tells the memory of the methods apart
(no timing is asserted: speed is the benchmark's job, not the tests')."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_benchmark_prints_a_table_and_measures_extra_memory(tmp_path):
    out_json = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "monai_gdl.benchmark",
        "--classes",
        "4",
        "--sizes",
        "48",
        "--targets",
        "label",
        "--methods",
        "vnet_fused",
        "monai_dice",
        "--reps",
        "1",
        "--warmup",
        "1",
        "--json",
        str(out_json),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "## target=label C=4 48^3 (fused backend: " in out.stdout
    fused = next(line for line in out.stdout.splitlines() if line.startswith("| V-Net Dice, fused"))
    cells = [c.strip() for c in fused.strip("|").split("|")]
    assert float(cells[1]) > 0 and cells[3].endswith("x") and cells[7].endswith("%")
    (case,) = json.loads(out_json.read_text())
    logits_bytes = 2 * 4 * 48**3 * 4
    ours, monai = case["results"]["vnet_fused"]["extra_bytes"], case["results"]["monai_dice"]["extra_bytes"]
    assert monai > 2 * logits_bytes, monai  # MONAI's one-hot and products: several volumes
    assert ours < logits_bytes // 4, ours  # the fused pass: no volume-sized temporary


@pytest.mark.slow
def test_benchmark_compound_rows_compare_with_monai_and_the_dice_alone(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "monai_gdl.benchmark",
        "--classes",
        "3",
        "--sizes",
        "24",
        "--targets",
        "label",
        "--methods",
        "vnet_fused",
        "vnet_ce_fused",
        "vnet_plus_ce",
        "gdl_focal_fused",
        "monai_dice_ce",
        "monai_gdl_focal",
        "--reps",
        "1",
        "--warmup",
        "1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in out.stdout.splitlines()
        if line.startswith("| ") and "method" not in line
    }
    assert rows["V-Net Dice + CE, fused (ours)"][3].endswith("x")  # against MONAI DiceCELoss
    assert float(rows["V-Net Dice + CE, fused (ours)"][5]) > 0  # time relative to the Dice alone
    assert rows["GDL + focal, fused (ours)"][3].endswith("x")
    assert "error" not in out.stdout
