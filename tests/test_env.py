"""Environment variables (``_env.py``): a bad value is an error naming the variable, never a silent default."""

from __future__ import annotations

import pytest
from conftest import run_python


@pytest.mark.parametrize("variable", ["MONAI_GDL_BACKEND", "MONAI_GDL_CHUNK_ELEMENTS", "MONAI_GDL_BUILD_TIMEOUT_S"])
def test_an_invalid_environment_variable_is_an_error_naming_it(variable):
    result = run_python("import monai_gdl", {variable: "fast"})
    assert result.returncode != 0
    assert f"environment variable {variable}='fast'" in result.stderr.strip().splitlines()[-1]
