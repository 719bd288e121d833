"""What a non-editable install gets: the wheel, installed on its own, runs the loss on the native kernel;
the losses alone pull no bundle dependencies."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest
from conftest import TINY

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
        capture_output=True,
        text=True,
        timeout=300,
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
    for name in (
        "configs/train.json",
        "configs/evaluate.json",
        "configs/inference.json",
        "configs/metadata.json",
        "configs/logging.conf",
        "docs/README.md",
        "docs/data_license.txt",
        "models/README.md",
        "models/model.pt",
        "models/model.ts",
        "large_files.yml",
        "LICENSE",
    ):
        assert f"monai_gdl/bundle/{name}" in names, name
    repo_configs = sorted(f for f in os.listdir(os.path.join(REPO, "configs")))
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("monai_gdl/bundle/configs/")) == repo_configs
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
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=str(target), MONAI_GDL_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("MONAI_GDL_BACKEND", None)
    run = subprocess.run(
        [sys.executable, "-c", _USE_INSTALLED], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = __import__("json").loads(run.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(target))
    assert 0.0 < result["value"] < 1.0
    assert result["native"] and result["backend"] == "native"
    assert list((tmp_path / "cache").glob("native-*.so"))


def _fresh_venv(path, wheel) -> str:
    """A new virtual environment holding the wheel; its dependencies (torch, MONAI, ...) come from this test
    environment's site-packages, added as a plain path so that its editable checkout of monai_gdl is not."""
    import site
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = str(path / "bin" / "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    with open(os.path.join(purelib, "test_dependencies.pth"), "w") as f:
        f.write("\n".join(dict.fromkeys(deps)) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return python


@pytest.mark.slow
def test_the_wheel_in_a_fresh_venv_trains_and_infers_outside_any_checkout(wheel, tmp_path):
    """What the README gives a pip user: the bundle ships in the wheel; `python -m monai_gdl.bundle init DIR`
    copies it; MONAI's CLI trains one short epoch and infers from that copy; `path` points at the installed one."""
    python = _fresh_venv(tmp_path / "venv", wheel)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, MONAI_GDL_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("PYTHONPATH", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([python, *args], capture_output=True, text=True, cwd=work, env=env, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        return result

    where = run("-c", "import monai_gdl; print(monai_gdl.__file__)").stdout.strip()
    assert where.startswith(str(tmp_path / "venv")), where
    installed = run("-m", "monai_gdl.bundle", "path").stdout.strip()
    assert installed.startswith(str(tmp_path / "venv")) and os.path.isfile(
        os.path.join(installed, "configs", "train.json")
    )
    assert run("-m", "monai_gdl.bundle", "path", "train").stdout.strip() == os.path.join(
        installed, "configs", "train.json"
    )
    run("-m", "monai_gdl.bundle", "init", "my_bundle")
    for name in (
        "configs/train.json",
        "configs/inference.json",
        "configs/metadata.json",
        "docs/README.md",
        "LICENSE",
        "models/README.md",
    ):
        assert (work / "my_bundle" / name).is_file(), name
    tiny = list(TINY)
    run("-m", "monai_gdl.data", "synth", "--out", "data", "--cases", "3", "--shape", "24", "24", "16")
    tiny += ["--dataset_dir", "data"]
    train = run(
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "my_bundle/configs/train.json",
        "--bundle_root",
        "my_bundle",
        "--epochs",
        "1",
        *tiny,
    )
    assert "epoch 1/1 loss" in train.stdout
    assert (work / "my_bundle" / "models" / "model.pt").is_file()
    infer = run(
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "my_bundle/configs/inference.json",
        "--bundle_root",
        "my_bundle",
        "--input_dir",
        "data/imagesTr",
        *tiny,
    )
    assert "wrote 3 segmentation(s) of 3 image(s)" in infer.stdout
    assert len(list((work / "my_bundle" / "predictions").glob("*_seg.nii.gz"))) == 3
    # The installed configs directly, outputs elsewhere (the package folder is never written to).
    again = run(
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        os.path.join(installed, "configs", "train.json"),
        "--bundle_root",
        "elsewhere",
        "--epochs",
        "1",
        *tiny,
    )
    assert "epoch 1/1 loss" in again.stdout and (work / "elsewhere" / "models" / "model.pt").is_file()
    assert not os.path.exists(os.path.join(installed, "runs")) and not os.path.exists(os.path.join(installed, "logs"))
