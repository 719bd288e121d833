"""The backend registry (``kernels/backends.py``): what ``auto`` picks, what an explicit choice refuses, the
warning when the native kernel is not used."""

from __future__ import annotations

import pytest
import torch
from conftest import needs_native

from monai_gdl import VNetDiceLoss, kernels, use_backend
from monai_gdl.kernels import native, native_build


@needs_native
def test_auto_steps_aside_for_what_the_kernel_does_not_cover():
    """It takes contiguous and channels-last logits; strided views with gaps, float64 and int16 go elsewhere."""
    x = torch.randn(2, 3, 10)
    labels = torch.randint(0, 3, (2, 1, 10))
    with use_backend("auto"):
        assert kernels.resolve_backend(x, labels, None, True) == "native"
        assert kernels.resolve_backend(x.double(), labels, None, True) == "eager"
        assert kernels.resolve_backend(x.transpose(1, 2).contiguous().transpose(1, 2), labels, None, True) == "native"
        assert kernels.resolve_backend(torch.randn(2, 3, 20)[:, :, ::2], labels, None, True) == "eager"  # gaps
        assert kernels.resolve_backend(x, labels.to(torch.int16), None, True) == "eager"
        assert kernels.resolve_backend(x, torch.rand(2, 3, 10, dtype=torch.float64), None, False) == "eager"


@needs_native
def test_explicit_native_backend_names_what_it_cannot_take():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with use_backend("native"), pytest.raises(RuntimeError, match=r"backend 'native'.*dtype torch.float64.*'auto'"):
        VNetDiceLoss(softmax=True, to_onehot_y=True)(x, torch.randint(0, 3, (2, 1, 4, 4)))


def test_no_compiler_warns_once_with_cost_and_fix_and_falls_back(monkeypatch, caplog):
    from monai_gdl.kernels import backends as dispatch

    monkeypatch.setattr(native_build, "_compiler", lambda: None)
    monkeypatch.setattr(dispatch, "_warned", set())
    native.load.cache_clear()
    try:
        assert not native.available()
        with use_backend("auto"), caplog.at_level("WARNING", logger="monai_gdl.kernels"):
            assert (
                kernels.resolve_backend(torch.randn(1, 2, 5), torch.zeros(1, 1, 5, dtype=torch.long), None, True)
                == "eager"
            )
            for _ in range(3):
                value = VNetDiceLoss(softmax=True, to_onehot_y=True)(
                    torch.randn(1, 2, 5), torch.randint(0, 2, (1, 1, 5))
                )
                assert 0.0 <= float(value) <= 1.0
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        text = warnings[0].getMessage()
        assert (
            "no C compiler found" in text
            and "about 3-5x" in text
            and "python -m monai_gdl.benchmark" in text
            and "install a C compiler" in text
        )
        assert "MONAI_GDL_BACKEND" in text
        caplog.clear()
        with use_backend("eager"), caplog.at_level("WARNING", logger="monai_gdl.kernels"):
            monkeypatch.setattr(dispatch, "_warned", set())
            VNetDiceLoss(softmax=True, to_onehot_y=True)(torch.randn(1, 2, 5), torch.randint(0, 2, (1, 1, 5)))
        assert not caplog.records  # an explicit choice is silent
    finally:
        native.load.cache_clear()


@needs_native
def test_float16_goes_elsewhere_where_the_compiler_lacks_it(monkeypatch):
    monkeypatch.setattr(native, "_float16_supported", lambda: False)
    labels = torch.zeros(1, 1, 10, dtype=torch.long)
    with use_backend("auto"):
        assert kernels.resolve_backend(torch.zeros(1, 2, 10, dtype=torch.float16), labels, None, True) == "eager"
        assert kernels.resolve_backend(torch.zeros(1, 2, 10, dtype=torch.bfloat16), labels, None, True) == "native"


def test_auto_backend_on_cpu():
    """auto: the native kernel where it applies and builds; float64 (which it does not cover) stays off it."""
    labels = torch.zeros(1, 1, 3, dtype=torch.long)
    with use_backend("auto"):
        expected = "native" if native.available() else "eager"
        assert kernels.resolve_backend(torch.zeros(1, 2, 3), labels, None, True) == expected
        assert kernels.resolve_backend(torch.zeros(1, 2, 3, dtype=torch.float64), labels, None, True) == "eager"
        assert (
            kernels.resolve_backend(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3, dtype=torch.float64), None, False)
            == "eager"
        )
