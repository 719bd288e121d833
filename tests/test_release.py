"""The release step is one command: ``python -m build`` makes an sdist and a wheel that a strict metadata checker
accepts; the sdist carries the C source, the bundle's files and the nnU-Net trainer folder, and a wheel built
from the sdist alone has the same files as one built from the checkout."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tarfile
import zipfile

import pytest

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
IN_SDIST = [
    "monai_gdl/kernels/native.c",
    "monai_gdl/bundle/configs/train.json",
    "monai_gdl/bundle/configs/inference.json",
    "monai_gdl/bundle/models/model.pt",
    "monai_gdl/bundle/docs/README.md",
    "monai_gdl/bundle/LICENSE",
    "monai_gdl/integrations/nnunet_trainers/monai_gdl_nnunet_trainers.py",
    "README.md",
    "LICENSE",
    "pyproject.toml",
]


def _build(source: pathlib.Path, out: pathlib.Path, *kinds: str) -> None:
    # --no-isolation: the test environment's setuptools (the [release] extra), no download
    command = [sys.executable, "-m", "build", *kinds, "--no-isolation", "--outdir", str(out), str(source)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]


def test_build_twine_check_and_a_complete_sdist(tmp_path):
    dist = tmp_path / "dist"
    _build(REPO, dist, "--sdist", "--wheel")
    sdist, wheel = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    assert len(sdist) == 1 and len(wheel) == 1
    command = [sys.executable, "-m", "twine", "check", "--strict", str(sdist[0]), str(wheel[0])]
    check = subprocess.run(command, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    with tarfile.open(sdist[0]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert not [f for f in IN_SDIST if f not in names], sorted(names)
    root = next((tmp_path / "unpacked").iterdir())
    _build(root, tmp_path / "from_sdist", "--wheel")
    rebuilt = next((tmp_path / "from_sdist").glob("*.whl"))
    files = [sorted(zipfile.ZipFile(w).namelist()) for w in (wheel[0], rebuilt)]
    assert files[0] == files[1]
