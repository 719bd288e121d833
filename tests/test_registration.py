"""Registration in monai.losses and short-name resolution from bundle configs."""

from __future__ import annotations

import inspect
import warnings

import monai
import monai.losses
import pytest
import torch
from monai.bundle import ConfigParser

import monai_gdl


def test_losses_are_attributes_of_monai_losses():
    assert monai.losses.VNetDiceLoss is monai_gdl.VNetDiceLoss
    assert monai.losses.SudreGeneralizedDiceLoss is monai_gdl.SudreGeneralizedDiceLoss
    assert monai.losses.DiceLoss.__module__.startswith("monai.losses")
    assert monai.losses.GeneralizedDiceLoss.__module__.startswith("monai.losses")


def test_no_public_name_shadows_a_monai_component():
    from monai.bundle.config_item import ComponentLocator

    locator = ComponentLocator()
    ours = {
        name
        for mod in (
            "monai_gdl",
            "monai_gdl.losses.modules",
            "monai_gdl.losses.functional",
            "monai_gdl.losses.formulas",
            "monai_gdl.losses.validation",
            "monai_gdl.kernels.backends",
            "monai_gdl.losses.options",
            "monai_gdl.losses.terms",
            "monai_gdl.losses.sums",
            "monai_gdl.losses.compound",
            "monai_gdl.kernels.contract",
        )
        for name, obj in inspect.getmembers(__import__(mod, fromlist=["_"]))
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == mod
    }
    clashes = {
        n: locator.get_component_module_name(n) for n in ours if isinstance(locator.get_component_module_name(n), list)
    }
    assert not clashes


def test_registration_refuses_to_replace(monkeypatch):
    monkeypatch.setattr(monai.losses, "VNetDiceLoss", object(), raising=False)
    with pytest.raises(RuntimeError, match="not replacing"):
        monai_gdl.register_with_monai()


@pytest.mark.parametrize("name", ["VNetDiceLoss", "SudreGeneralizedDiceLoss"])
def test_bundle_short_name_resolves_without_warning(name):
    parser = ConfigParser(
        {"imports": ["$import monai_gdl"], "loss": {"_target_": name, "softmax": True, "to_onehot_y": True}}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = parser.get_parsed_content("loss")
    assert type(loss).__name__ == name
    value = loss(torch.randn(1, 3, 8, 8, 8), torch.randint(0, 3, (1, 1, 8, 8, 8)))
    assert 0 <= float(value) <= 1
