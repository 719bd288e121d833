"""Where the bundle's files are, and a copy of them a user can edit.

The one source of the bundle is the repository's top level (``configs/``, ``docs/README.md``,
``docs/data_license.txt``, ``models/`` with the shipped weights, ``large_files.yml``, ``LICENSE``); this
package links to them and the wheel ships
them as package data, so an installed ``monai_gdl`` carries the same bundle as the checkout.
"""

from __future__ import annotations

import os
import shutil

__all__ = ["BUNDLE_FILES", "bundle_dir", "config_file", "init_bundle", "load_config"]

#: What a bundle folder holds (model-zoo layout), relative to its root.
BUNDLE_FILES = (
    "configs",
    "docs/README.md",
    "docs/data_license.txt",
    "models/README.md",
    "models/model.pt",
    "models/model.ts",
    "large_files.yml",
    "LICENSE",
)


def bundle_dir() -> str:
    """The folder of the installed bundle (it holds ``configs/``, ``docs/``, ``models/`` and ``LICENSE``)."""
    return os.path.dirname(os.path.abspath(__file__))


def config_file(name: str) -> str:
    """The path of one config of the installed bundle: ``"train"`` or ``"train.json"``."""
    name = name if name.endswith((".json", ".conf")) else f"{name}.json"
    path = os.path.join(bundle_dir(), "configs", name)
    if not os.path.isfile(path):
        available = sorted(os.listdir(os.path.join(bundle_dir(), "configs")))
        raise FileNotFoundError(f"the bundle has no config {name!r}; it has {', '.join(available)}.")
    return path


def load_config(*names: str, **overrides):
    """The bundle's configs ``names`` merged in order (``load_config("train", "loss_gdl")``), with overrides
    (``num_classes=3``), as a MONAI ``ConfigParser``: the pieces are then ``parser.get_parsed_content(id)``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([config_file(n) for n in names])
    parser.update(overrides)
    return parser


def init_bundle(destination: str, overwrite: bool = False) -> list[str]:
    """Copy the bundle into ``destination`` (created) and return the paths written. An existing bundle there
    is left alone unless ``overwrite``: its configs may hold the user's edits and ``models/`` their weights."""
    existing = [f for f in BUNDLE_FILES if os.path.exists(os.path.join(destination, f))]
    if existing and not overwrite:
        raise FileExistsError(
            f"{destination} already holds {', '.join(existing)}; choose an empty folder, or pass --overwrite to "
            "replace the configs and docs (weights already in models/ are never touched)."
        )
    written = []
    for name in BUNDLE_FILES:
        source, target = os.path.join(bundle_dir(), name), os.path.join(destination, name)
        if name.startswith("models/model.") and os.path.exists(target):
            continue  # the user's own weights (trained into this bundle) stay
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isdir(source):
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, target)
        written.append(target)
    return written
