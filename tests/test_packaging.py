"""What a non-editable install gets: the wheel, installed on its own, runs the loss on the native kernel;
the losses alone pull no bundle dependencies."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.join(os.path.dirname(__file__), "..")

_USE_INSTALLED = """
import json, torch, monai_gdl
from monai_gdl.kernels import native, resolve_backend
x = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
y = torch.randint(0, 3, (2, 1, 8, 8, 8))
value = monai_gdl.VNetDiceLoss(softmax=True, to_onehot_y=True)(x, y)
value.backward()
print(json.dumps({"file": monai_gdl.__file__, "value": float(value), "native": native.available(),
                  "backend": resolve_backend(x.reshape(2, 3, -1), y.reshape(2, 1, -1), None, True)}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("wheel")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out_dir), REPO],
        capture_output=True, text=True, timeout=300,
    )
    if out.returncode != 0 and ("No module named" in out.stderr or "bdist_wheel" in out.stderr):
        pytest.skip(f"no build backend in this environment: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr[-2000:]
    (path,) = out_dir.glob("monai_gdl-*.whl")
    return path


@pytest.mark.slow
def test_wheel_metadata_keeps_the_losses_lean(wheel):
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    assert "monai_gdl/kernels/native.c" in names and "monai_gdl/kernels/native.py" in names
    metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    unconditional = sorted(r.split(">")[0].split("=")[0].split(";")[0].strip() for r in requires if "extra ==" not in r)
    assert unconditional == ["monai", "numpy", "torch"], unconditional
    for heavy in ("tensorboard", "matplotlib", "pytorch-ignite"):
        assert any(r.startswith(heavy) and 'extra == "bundle"' in r for r in requires), heavy
    assert "License-Expression: Apache-2.0" in metadata


@pytest.mark.slow
def test_installed_wheel_builds_and_runs_the_native_kernel(wheel, tmp_path):
    """Installed into a fresh folder (not the checkout), with a fresh kernel cache: the C source ships
    in the wheel, builds there, and the default backend is the native kernel."""
    target = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                          str(wheel)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=str(target), MONAI_GDL_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("MONAI_GDL_BACKEND", None)
    run = subprocess.run([sys.executable, "-c", _USE_INSTALLED], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = __import__("json").loads(run.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(target))
    assert 0.0 < result["value"] < 1.0
    assert result["native"] and result["backend"] == "native"
    assert list((tmp_path / "cache").glob("native-*.so"))
