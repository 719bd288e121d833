"""The reference documentation builds with warnings as errors (API pages from the docstrings), and every relative
link in the README and the pages points at a file that exists."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "reference"


def _markdown_files() -> list[pathlib.Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def test_relative_links_point_at_files_that_exist():
    missing = []
    for page in _markdown_files():
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            path = target.split("#", 1)[0]
            if not path or "://" in path:
                continue
            if not (page.parent / path).exists():
                missing.append(f"{page.relative_to(REPO)}: {target}")
    assert not missing, missing


def test_the_readme_is_a_quick_start():
    """The two commands and the loss table on the first screen; the rest in the reference."""
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) < 300
    first_screen = "\n".join(lines[:60])
    assert "| `VNetDiceLoss` |" in first_screen
    text = "\n".join(lines)
    assert "python -m monai.bundle run --config_file configs/train.json --bundle_root ." in text
    assert "python -m pytest -n 2 -q" in text


def test_wheel_install_commands_name_the_wheel_this_version_builds():
    """A copied `pip install monai_gdl-X.whl` must name the file `pip wheel .` writes for this checkout."""
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), flags=re.M).group(1)
    stale = []
    for page in [*_markdown_files(), REPO / "docs" / "README.md"]:
        for name in re.findall(r"monai_gdl-([0-9][^-\s]*)-py3-none-any\.whl", page.read_text()):
            if name != version:
                stale.append(f"{page.relative_to(REPO)}: monai_gdl-{name} (pyproject.toml: {version})")
    assert not stale, stale


@pytest.mark.slow
def test_sphinx_builds_with_warnings_as_errors(tmp_path):
    out = tmp_path / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    vnet = (out / "vnet_dice.html").read_text()
    assert "VNetDiceLoss" in vnet and "squared_pred" in vnet  # the class's docstring, rendered
    assert (out / "integrations.html").exists() and (out / "tools.html").exists()
