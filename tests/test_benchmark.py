"""The benchmark command runs, prints its table and tells the memory of the methods apart
(no timing is asserted: speed is the benchmark's job, not the tests')."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_benchmark_prints_a_table_and_measures_extra_memory(tmp_path):
    """One run (each row costs two fresh processes): the Dice rows tell the memory of the methods apart, the
    compound rows compare with MONAI's compound and with the Dice alone."""
    out_json = tmp_path / "bench.json"
    methods = ["vnet_fused", "monai_dice", "vnet_ce_fused", "monai_dice_ce"]
    cmd = [sys.executable, "-m", "monai_gdl.benchmark", "--classes", "4", "--sizes", "48", "--targets", "label"]
    cmd += ["--methods", *methods, "--reps", "1", "--warmup", "1", "--json", str(out_json)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "## target=label (int64) C=4 48^3 (fused backend: " in out.stdout
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
    (case,) = json.loads(out_json.read_text())
    logits_bytes = 2 * 4 * 48**3 * 4
    ours, monai = case["results"]["vnet_fused"]["extra_bytes"], case["results"]["monai_dice"]["extra_bytes"]
    assert monai > 2 * logits_bytes, monai  # MONAI's one-hot and products: several volumes
    assert ours < logits_bytes // 4, ours  # the fused pass: no volume-sized temporary


_MEMORY_SCRIPT = r"""
import json, sys
import torch
from monai_gdl import benchmark

real = benchmark._loss_callable


def planted(method, target_kind):
    loss = real(method, target_kind)

    def with_copy(x, target, labels, maps):
        copy = target.clone()  # a label-sized temporary, freed before the backward
        del copy
        return loss(x, target, labels, maps)

    return with_copy


spec = dict(device="cpu", dtype="float32", batch=2, classes=4, size=96, method="vnet_fused", target="label",
            measure="memory", warmup=1, reps=1)
out = {}
for dtype in ("int64", "float32", "int32", "uint8"):
    out[dtype] = benchmark._worker(dict(spec, label_dtype=dtype))["extra_bytes"]
benchmark._loss_callable = planted
out["planted_int64"] = benchmark._worker(dict(spec, label_dtype="int64"))["extra_bytes"]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_memory_figure_is_flat_in_the_label_dtype_and_catches_a_planted_copy():
    """The fused V-Net Dice makes no copy of a label map of any dtype (the value scan included), and the
    benchmark's memory reading sees a label-sized temporary that the forward makes and frees, which a reading
    over the whole step would hide under the gradient the backward allocates later. Run as the benchmark runs
    its memory workers: glibc returns freed blocks at once."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    extra = json.loads(out.stdout.strip().splitlines()[-1])
    voxels = 2 * 96**3
    for dtype, size in (("int64", 8), ("float32", 4), ("int32", 4), ("uint8", 1)):
        assert extra[dtype] < 2 * 2**20, (dtype, extra)  # the scan's two reused 256 Ki-value buffers at most
        assert extra[dtype] < voxels * size / 4 or dtype == "uint8", (dtype, extra)
    assert extra["planted_int64"] > 0.9 * voxels * 8, extra


def _busy_loops_running() -> list[str]:
    from monai_gdl.benchmark import BUSY_LOOP

    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if BUSY_LOOP.encode() in f.read():
                    found.append(entry)
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="lists processes through /proc")
def test_busy_times_beside_spinning_processes_and_stops_them():
    """``--busy N`` runs the timing beside N spin loops (as beside data-loading workers) and leaves none behind;
    a negative count is refused naming the value."""
    cmd = [sys.executable, "-m", "monai_gdl.benchmark", "--classes", "3", "--sizes", "16", "--targets", "onehot"]
    cmd += ["--methods", "vnet_fused", "--reps", "1", "--warmup", "1", "--busy", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "timed beside 2 busy processes" in out.stdout
    assert "V-Net Dice, fused (ours)" in out.stdout and "error" not in out.stdout
    assert not _busy_loops_running()
    bad = subprocess.run([*cmd[:-1], "-1"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--busy is a number of processes, 0 or more; got -1" in bad.stderr
