"""The benchmark command runs, prints its table and tells the memory of the methods apart
(no timing is asserted: speed is the benchmark's job, not the tests')."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_benchmark_prints_a_table_and_measures_extra_memory(tmp_path):
    """One run (each row costs two fresh processes): the Dice rows tell the memory of the methods apart, the
    compound rows compare with MONAI's compound and with the Dice alone."""
    out_json = tmp_path / "bench.json"
    methods = ["vnet_fused", "monai_dice", "vnet_ce_fused", "monai_dice_ce", "gdl_focal_fused"]
    cmd = [sys.executable, "-m", "monai_gdl.benchmark", "--classes", "4", "--sizes", "48", "--targets", "label"]
    cmd += ["--methods", *methods, "--reps", "1", "--warmup", "1", "--json", str(out_json)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "## target=label C=4 48^3 (fused backend: " in out.stdout
    assert "error" not in out.stdout
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in out.stdout.splitlines()
        if line.startswith("| ") and "method" not in line
    }
    fused = rows["V-Net Dice, fused (ours)"]
    assert float(fused[1]) > 0 and fused[3].endswith("x") and fused[7].endswith("%")
    assert rows["V-Net Dice + CE, fused (ours)"][3].endswith("x")  # against MONAI DiceCELoss
    assert float(rows["V-Net Dice + CE, fused (ours)"][5]) > 0  # time relative to the Dice alone
    assert float(rows["GDL + focal, fused (ours)"][5]) > 0
    (case,) = json.loads(out_json.read_text())
    logits_bytes = 2 * 4 * 48**3 * 4
    ours, monai = case["results"]["vnet_fused"]["extra_bytes"], case["results"]["monai_dice"]["extra_bytes"]
    assert monai > 2 * logits_bytes, monai  # MONAI's one-hot and products: several volumes
    assert ours < logits_bytes // 4, ours  # the fused pass: no volume-sized temporary
