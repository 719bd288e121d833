"""The backend registry (``kernels/backends.py``): what ``auto`` picks, what an explicit choice refuses, the
warning when the native kernel is not used."""

from __future__ import annotations

import pytest
import torch
from conftest import needs_native, skip_without_triton

from monai_gdl import VNetDiceLoss, kernels, use_backend
from monai_gdl.kernels import native, native_build


@needs_native
def test_auto_steps_aside_for_what_the_kernel_does_not_cover():
    """It takes contiguous and channels-last logits; strided views with gaps, float64 logits and float16 labels go
    elsewhere."""
    x = torch.randn(2, 3, 10)
    labels = torch.randint(0, 3, (2, 1, 10))
    with use_backend("auto"):
        assert kernels.resolve_backend(x, labels, None, True) == "native"
        assert kernels.resolve_backend(x.double(), labels, None, True) == "eager"
        assert kernels.resolve_backend(x.transpose(1, 2).contiguous().transpose(1, 2), labels, None, True) == "native"
        assert kernels.resolve_backend(torch.randn(2, 3, 20)[:, :, ::2], labels, None, True) == "eager"  # gaps
        assert kernels.resolve_backend(x, labels.to(torch.float16), None, True) == "eager"
        assert kernels.resolve_backend(x, torch.rand(2, 3, 10, dtype=torch.float64), None, False) == "eager"


@needs_native
def test_explicit_native_backend_names_what_it_cannot_take():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    pattern = r"backend 'native'.*float64 logits: float64 is for checking .*train in float32.*'auto'"
    with use_backend("native"), pytest.raises(RuntimeError, match=pattern):
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


def _triton_for_auto_on_cpu(monkeypatch, forward=None):
    """Let ``auto`` consider Triton for CPU tensors (its interpreter runs them), as it does for CUDA ones, with
    a fresh self-check cache and, optionally, another forward kernel."""
    import dataclasses

    from monai_gdl.kernels import backends

    triton = backends.REGISTRY["triton"]
    skip_without_triton()  # the real kernels run (under the interpreter) in these tests
    changes = {"why_not_auto": backends._runs_anything}
    if forward is not None:
        changes["forward"] = forward
    monkeypatch.setitem(backends.REGISTRY, "triton", dataclasses.replace(triton, **changes))
    monkeypatch.setattr(backends, "_checked", {})
    return backends


def _case():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 3, 9, 8, 7, generator=g), torch.randint(0, 3, (2, 1, 9, 8, 7), generator=g)


def _value_and_grad(loss, x, y):
    x = x.clone().requires_grad_(True)
    value = loss(x, y)
    value.backward()
    return value.detach(), x.grad


def test_auto_trusts_triton_only_after_its_self_check_and_checks_each_case_once(monkeypatch):
    backends = _triton_for_auto_on_cpu(monkeypatch)
    x, y = _case()
    flat, labels = x.reshape(2, 3, -1), y.reshape(2, 1, -1)
    options = ("softmax", True, False, "softmax", 0.0)
    assert backends.resolve_backend(flat, labels, None, True, "auto", None, False, options) == "triton"
    assert len(backends._checked) == 1 and next(iter(backends._checked.values())) is None
    backends.resolve_backend(flat, labels, None, True, "auto", None, False, options)
    assert len(backends._checked) == 1  # cached: once per case per process
    backends.resolve_backend(flat, labels, None, True, "auto", None, False, ("softmax", False, False, "none", 0.0))
    assert len(backends._checked) == 2  # another kernel variant is another case


@pytest.mark.parametrize("fault", ["raises", "wrong"])
def test_a_failing_or_wrong_triton_kernel_falls_back_with_one_warning(monkeypatch, caplog, fault):
    from monai_gdl.kernels import triton_backend

    def broken(*args):
        if fault == "raises":
            raise RuntimeError("PTX: unsupported architecture sm_1000")
        return triton_backend.forward(*args) * 1.01

    backends = _triton_for_auto_on_cpu(monkeypatch, forward=broken)
    x, y = _case()
    loss = VNetDiceLoss(softmax=True, to_onehot_y=True)
    with caplog.at_level("WARNING", logger="monai_gdl.kernels"):
        got = [_value_and_grad(loss, x, y) for _ in range(2)]
    warnings = [r.getMessage() for r in caplog.records if "checked on a slice" in r.getMessage()]
    assert len(warnings) == 1, warnings
    expected = "failed on this case (RuntimeError: PTX" if fault == "raises" else "its sums disagree with the eager"
    assert expected in warnings[0] and "python -m monai_gdl.gpu_check" in warnings[0]
    want = _value_and_grad(VNetDiceLoss(softmax=True, to_onehot_y=True, implementation="eager"), x, y)
    for value, grad in got:  # the same result as without the fallback
        torch.testing.assert_close(value, want[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, want[1], rtol=1e-4, atol=1e-7)
    assert [v for k, v in backends._checked.items() if k[0] == "triton"][0] is not None
    if fault == "raises":  # an explicit choice skips the check and raises
        with pytest.raises(RuntimeError, match="PTX"):
            VNetDiceLoss(softmax=True, to_onehot_y=True, implementation="triton")(x, y)


@pytest.mark.slow
def test_gpu_check_runs_its_table_under_the_interpreter(tmp_path):
    import os
    import subprocess
    import sys

    args = [
        "--device",
        "cpu",
        "--quick",
        "--size",
        "6",
        "--no-benchmark",
        "--losses",
        "VNetDiceCELoss",
        "VNetDiceCEBoundaryLoss",
        "VNetDiceCESkeletonRecallLoss",
    ]
    run = subprocess.run(
        [sys.executable, "-m", "monai_gdl.gpu_check", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, TRITON_INTERPRET="1"),
        cwd=str(tmp_path),
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| VNet")]
    assert len(rows) == 3 and all(line.endswith("| pass |") for line in rows)
    assert "all rows pass." in run.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "monai_gdl.gpu_check"], capture_output=True, text=True, cwd=str(tmp_path), timeout=300
    )
    if not torch.cuda.is_available():
        assert missing.returncode == 2 and "no CUDA device here" in missing.stdout


def test_a_machine_with_a_compiler_runs_the_native_kernel():
    """Not skipped like the native tests: where a C compiler exists, a failed build or a failed self-check
    (the built kernel against the reference math) fails the suite instead of silently skipping them."""
    if native_build._compiler() is None:
        pytest.skip("no C compiler: the other backends run")
    assert native.available(), native.unavailable_reason()
