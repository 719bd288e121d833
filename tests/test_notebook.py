"""The notebook's code cells run top to bottom (so it cannot silently go stale)."""

from __future__ import annotations

import contextlib
import io
import json
import os

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "explore_losses.ipynb")


def test_notebook_code_cells_run():
    with open(NOTEBOOK) as f:
        cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for cell in cells:
            exec(compile("".join(cell["source"]), NOTEBOOK, "exec"), namespace)
    text = out.getvalue()
    assert "softmax with a multi-hot target -> softmax=True but the target's channels sum to" in text
    assert float(text.split("hand-written 'Dice': ")[1].split()[0]) > 1.0
    assert float(text.split("max gradient difference: ")[1].split()[0]) < 1e-10
    assert text.split("auto backend for float32 CPU logits: ")[1].split()[0] in ("native", "compile", "eager")
    assert " eager: " in text and text.strip().endswith("ms")
