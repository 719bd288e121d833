"""Deprecated (0.5): the console and error hook moved to :mod:`monai_gdl.bundle.console`, ``as_bool`` to
:func:`monai_gdl.bundle.checks.flag`. The old names work until 0.6, with a FutureWarning."""

from monai_gdl.bundle._moved import forward_moved

__getattr__ = forward_moved(
    __name__,
    {
        "start": "monai_gdl.bundle.console.start",
        "project_error": "monai_gdl.bundle.console.project_error",
        "unknown_keys": "monai_gdl.bundle.console.unknown_keys",
        "UnknownKeyError": "monai_gdl.bundle.console.UnknownKeyError",
        "as_bool": "monai_gdl.bundle.checks.flag_value",
    },
)
