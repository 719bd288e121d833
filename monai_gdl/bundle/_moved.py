"""Old import paths of names that moved (0.5), kept working for one version with a warning.

Users' own bundle configs may still say ``$monai_gdl.bundle.cli.start(...)`` or
``monai_gdl.bundle.handlers.EpochSummary``; the old modules forward each name to its new room.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping

__all__ = ["forward_moved"]


def forward_moved(old_module: str, moved: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` that returns ``moved[name]`` (``"package.module.attribute"``) with a FutureWarning."""

    def __getattr__(name: str) -> object:
        if name not in moved:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        module, _, attribute = moved[name].rpartition(".")
        warnings.warn(
            f"{old_module}.{name} moved to {moved[name]} in monai_gdl 0.5; the old path works until 0.6. "
            "Update your config or import.",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), attribute)

    return __getattr__
