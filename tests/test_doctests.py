"""The docstrings' examples run, and every public loss and functional has one (``Example:``)."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import monai_gdl
import monai_gdl.losses

LOSS_MODULES = sorted(m.name for m in pkgutil.iter_modules(monai_gdl.losses.__path__, "monai_gdl.losses."))


@pytest.mark.parametrize("name", LOSS_MODULES)
def test_the_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def _public_losses_and_functionals():
    for name in monai_gdl.__all__:
        obj = getattr(monai_gdl, name)
        defined_in_losses = getattr(obj, "__module__", "").startswith("monai_gdl.losses")
        if defined_in_losses and (inspect.isfunction(obj) or (inspect.isclass(obj) and hasattr(obj, "forward"))):
            yield name, obj


@pytest.mark.parametrize("name,obj", list(_public_losses_and_functionals()))
def test_every_public_loss_and_functional_has_an_example(name, obj):
    assert "Example:" in (obj.__doc__ or ""), f"{name} has no Example: section"
    assert doctest.DocTestFinder().find(obj, name)[0].examples, f"{name}'s example has no >>> lines"
