"""The benchmark command runs and prints its table (a smoke test: no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys


def test_benchmark_prints_a_table():
    cmd = [sys.executable, "-m", "monai_gdl.benchmark", "--classes", "3", "--sizes", "16", "--targets", "onehot",
           "--methods", "vnet_fused", "monai_dice", "--reps", "1", "--warmup", "1", "--huge-pages"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "## target=onehot C=3 16^3 (fused backend: " in out.stdout
    assert "THP_MEM_ALLOC_ENABLE=1 for all" in out.stdout
    fused = next(line for line in out.stdout.splitlines() if line.startswith("| V-Net Dice, fused"))
    cells = [c.strip() for c in fused.strip("|").split("|")]
    assert float(cells[1]) > 0 and float(cells[2]) >= 0 and cells[3].endswith("x") and cells[6].endswith("%")
