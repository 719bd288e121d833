"""Loss and kernel reliability (issue #11, items 1-5): misuse never crashes the process or returns a
silent wrong value; a corrupt kernel cache or a hanging compiler is survived with a warning; the
fused and reference paths agree on gradients, torch.func transforms and empty inputs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from monai.losses import DiceLoss

from monai_gdl import (
    LossInputError,
    SudreGeneralizedDiceCELoss,
    SudreGeneralizedDiceLoss,
    VNetDiceBCELoss,
    VNetDiceCELoss,
    VNetDiceLoss,
    use_backend,
)
from monai_gdl.kernels import native

needs_native = pytest.mark.skipif(not native.available(), reason="no C compiler for the native CPU kernel")


def _run(code: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, env=full
    )


# 1. validate=False keeps every shape/dtype/layout check: a wrong target is an error, never SIGSEGV or NaN.
@needs_native
def test_validate_false_with_wrong_shapes_is_an_error_not_a_crash():
    result = _run("""
        import torch
        from monai_gdl import LossInputError, VNetDiceLoss, SudreGeneralizedDiceLoss, VNetDiceCELoss
        cases = 0
        for size in (5, 16, 33, 64):
            x = torch.randn(2, 3, size, size, size)
            float_map = torch.randint(0, 3, (2, 1, size, size, size)).float()
            for loss in (VNetDiceLoss(softmax=True, validate=False), SudreGeneralizedDiceLoss(softmax=True,
                         validate=False), VNetDiceCELoss(validate=False)):
                for target in (float_map, float_map[:, :, :-1], torch.zeros(2, 3, size, size, 1),
                               torch.zeros(1, 3, size, size, size)):
                    try:
                        loss(x, target)
                    except LossInputError:
                        cases += 1
            labels = torch.randint(0, 3, (2, 1, size, size, size))
            for bad in (labels[:, :, :-1], labels.expand(2, 3, -1, -1, -1), labels[:1]):
                try:
                    VNetDiceLoss(softmax=True, to_onehot_y=True, validate=False)(x, bad)
                except LossInputError:
                    cases += 1
        print("refused", cases)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused 60" in result.stdout


# 2. The kernel cache: a corrupt library is detected and rebuilt; a hanging compiler times out with a warning.
@needs_native
def test_a_truncated_cached_library_is_rebuilt_with_a_warning(tmp_path):
    env = {"MONAI_GDL_CACHE_DIR": str(tmp_path / "cache")}
    probe = """
        import logging, torch
        logging.basicConfig(level=logging.WARNING)
        from monai_gdl.kernels import native, native_build
        from monai_gdl import VNetDiceLoss
        x, y = torch.randn(2, 3, 16, 16, 16), torch.randint(0, 3, (2, 1, 16, 16, 16))
        loss = VNetDiceLoss(softmax=True, to_onehot_y=True)(x, y)
        ref = VNetDiceLoss(softmax=True, to_onehot_y=True, implementation="reference")(x, y)
        assert native.available(), native.unavailable_reason()
        assert torch.allclose(loss, ref, atol=1e-6)
        print("ok", native_build.library_path().name)
    """
    first = _run(probe, env)
    assert first.returncode == 0, first.stderr[-2000:]
    (library,) = (tmp_path / "cache").glob("native-*.so")
    for damage in (lambda b: b[: len(b) // 3], lambda b: b[:4096] + bytes(len(b) - 4096)):
        library.write_bytes(damage(library.read_bytes()))
        again = _run(probe, env)
        assert again.returncode == 0, again.stderr[-2000:]  # was SIGBUS, in every later process
        assert "does not match the checksum" in again.stderr
        assert f"ok {library.name}" in again.stdout  # rebuilt, same content, same name
    clean = _run(probe, env)
    assert "checksum" not in clean.stderr and clean.returncode == 0


@needs_native
def test_a_killed_builds_leftovers_are_removed(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    leftover = cache / ".build-0123456789abcdef-xyz.so"
    leftover.write_bytes(b"half a library")
    old = time.time() - 3600
    os.utime(leftover, (old, old))
    result = _run(
        "from monai_gdl.kernels import native; print(native.available())", {"MONAI_GDL_CACHE_DIR": str(cache)}
    )
    assert result.stdout.strip() == "True", result.stderr[-2000:]
    assert not leftover.exists()
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []


def test_a_hanging_compiler_is_stopped_and_the_loss_still_runs(tmp_path):
    compiler = tmp_path / "cc-hangs"
    compiler.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo 'hanging cc 1.0'; exit 0; }\nexec sleep 600\n")
    compiler.chmod(0o755)
    env = {"CC": str(compiler), "MONAI_GDL_CACHE_DIR": str(tmp_path / "cache"), "MONAI_GDL_BUILD_TIMEOUT_S": "3"}
    start = time.monotonic()
    result = _run(
        """
        import torch
        from monai_gdl import VNetDiceLoss
        x, y = torch.randn(1, 3, 8, 8, 8), torch.randint(0, 3, (1, 1, 8, 8, 8))
        print(float(VNetDiceLoss(softmax=True, to_onehot_y=True)(x, y)))
    """,
        env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.monotonic() - start < 60
    assert "took over 3 s and was stopped" in result.stderr and "MONAI_GDL_BUILD_TIMEOUT_S" in result.stderr
    assert 0.0 <= float(result.stdout.split()[-1]) <= 1.0


@pytest.mark.parametrize("variable", ["MONAI_GDL_BACKEND", "MONAI_GDL_CHUNK_ELEMENTS", "MONAI_GDL_BUILD_TIMEOUT_S"])
def test_an_invalid_environment_variable_is_an_error_naming_it(variable):
    result = _run("import monai_gdl", {variable: "fast"})
    assert result.returncode != 0
    assert f"environment variable {variable}='fast'" in result.stderr.strip().splitlines()[-1]


# 3. A soft target that requires grad gets the same gradient on every path.
def _soft_target(shape, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(shape, generator=g, dtype=torch.float64) ** 2
    return t / t.sum(1, keepdim=True)


SOFT_TARGET_LOSSES = [
    lambda **kw: VNetDiceLoss(softmax=True, squared_pred=False, **kw),  # min(p, g) intersection
    lambda **kw: VNetDiceLoss(softmax=True, squared_pred=True, **kw),
    lambda **kw: SudreGeneralizedDiceLoss(softmax=True, **kw),
    lambda **kw: VNetDiceCELoss(**kw),
    lambda **kw: SudreGeneralizedDiceCELoss(**kw),
    lambda **kw: VNetDiceBCELoss(**kw),
]


@pytest.mark.parametrize("make", SOFT_TARGET_LOSSES)
@pytest.mark.parametrize("backend", ["auto", "eager"])
def test_a_soft_target_gets_the_reference_gradient_on_the_fused_path(make, backend):
    shape = (2, 3, 7, 6, 5)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    target = _soft_target(shape, 4)
    grads = {}
    for impl, dtype in (("reference", torch.float64), ("auto", torch.float32)):
        xx = x.to(dtype).detach().clone().requires_grad_(True)
        tt = target.to(dtype).detach().clone().requires_grad_(True)
        with use_backend(backend):
            make(implementation=impl)(xx, tt).backward()
        assert tt.grad is not None, f"{impl}: the target got no gradient"
        grads[impl] = (xx.grad.double(), tt.grad.double())
    torch.testing.assert_close(grads["auto"][0], grads["reference"][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads["auto"][1], grads["reference"][1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: VNetDiceCELoss(implementation="fused", squared_pred=True),
        lambda: VNetDiceLoss(softmax=True, squared_pred=False, implementation="fused"),
        lambda: VNetDiceBCELoss(implementation="fused"),
    ],
)
def test_the_soft_target_gradient_matches_finite_differences(make):
    """Float64 central differences of the loss in the target: the independent check of the fused target gradient
    (through the intersection, the target's own sums and the voxel term)."""
    shape = (1, 3, 4, 3, 2)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    target = _soft_target(shape, 6).requires_grad_(True)
    loss = make()
    with use_backend("eager"):
        loss(x, target).backward()
        eps = 1e-6
        for index in [(0, 0, 0, 0, 0), (0, 1, 2, 1, 1), (0, 2, 3, 2, 0)]:
            plus, minus = target.detach().clone(), target.detach().clone()
            plus[index] += eps
            minus[index] -= eps
            numeric = (loss(x, plus) - loss(x, minus)) / (2 * eps)
            assert abs(float(numeric) - float(target.grad[index])) < 1e-6


# 4. Empty inputs, torch.func transforms, double backward.
@pytest.mark.parametrize(
    "make",
    [
        lambda: VNetDiceLoss(softmax=True, to_onehot_y=True),
        lambda: SudreGeneralizedDiceLoss(softmax=True, to_onehot_y=True),
        lambda: VNetDiceCELoss(to_onehot_y=True),
    ],
)
@pytest.mark.parametrize("shape", [(0, 3, 8, 8, 8), (2, 3, 0, 8, 8), (2, 3, 8, 0)])
def test_an_empty_batch_or_volume_is_a_loss_input_error(make, shape):
    x = torch.randn(shape)
    y = torch.zeros((shape[0], 1, *shape[2:]), dtype=torch.long)
    with pytest.raises(LossInputError, match=r"no voxels to score"):
        make()(x, y)


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: VNetDiceLoss(softmax=True, to_onehot_y=True, **kw),
        lambda **kw: SudreGeneralizedDiceLoss(softmax=True, to_onehot_y=True, **kw),
        lambda **kw: VNetDiceCELoss(to_onehot_y=True, **kw),
    ],
)
def test_torch_func_grad_and_vmap_work_on_the_default_path(make):
    x = torch.randn(2, 3, 6, 5, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 1, 6, 5, 4))
    loss = make()
    got = torch.func.grad(lambda v: loss(v, y))(x)
    xx = x.clone().requires_grad_(True)
    loss(xx, y).backward()
    torch.testing.assert_close(got, xx.grad)
    per_sample = torch.vmap(lambda xi, yi: loss(xi[None], yi[None]))(x, y)
    torch.testing.assert_close(per_sample, torch.stack([loss(x[i : i + 1], y[i : i + 1]) for i in range(2)]))
    with pytest.raises(LossInputError, match=r"holds labels in \[0, 9\]"):  # value checks still run inside
        torch.func.grad(lambda v: loss(v, y * 3 + 3 * (y > 0)))(x)
    with pytest.raises(LossInputError, match=r"implementation='fused' cannot run inside torch.func.*'reference'"):
        torch.func.grad(lambda v: make(implementation="fused")(v, y))(x)


def test_double_backward_says_to_use_the_reference_path():
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    y = torch.randint(0, 3, (2, 1, 6, 6))
    (grad,) = torch.autograd.grad(VNetDiceLoss(softmax=True, to_onehot_y=True)(x, y), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"implementation='reference'"):
        grad.sum().backward()
    xr = x.detach().double().requires_grad_(True)
    (grad,) = torch.autograd.grad(
        VNetDiceLoss(softmax=True, to_onehot_y=True, implementation="reference")(xr, y), xr, create_graph=True
    )
    grad.pow(2).sum().backward()
    assert xr.grad is not None and torch.isfinite(xr.grad).all()


# 5. ignore_index equal to a scored class: refused; ignoring an unscored background is allowed.
@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: VNetDiceLoss(softmax=True, to_onehot_y=True, **kw),
        lambda **kw: SudreGeneralizedDiceLoss(softmax=True, to_onehot_y=True, **kw),
        lambda **kw: VNetDiceCELoss(to_onehot_y=True, **kw),
    ],
)
@pytest.mark.parametrize("ignore_index,include_background", [(2, True), (1, False), (0, True)])
def test_ignore_index_of_a_scored_class_is_refused(make, ignore_index, include_background):
    x = torch.randn(2, 3, 6, 6)
    y = torch.randint(0, 3, (2, 1, 6, 6))
    with pytest.raises(LossInputError, match=rf"ignore_index={ignore_index} is one of the classes the loss scores"):
        make(ignore_index=ignore_index, include_background=include_background)(x, y)


def test_ignoring_the_unscored_background_equals_monai():
    x = torch.randn(2, 3, 6, 7, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 1, 6, 7, 5))
    ours = VNetDiceLoss(
        softmax=True, to_onehot_y=True, include_background=False, ignore_index=0, squared_pred=False, soft_label=False
    )(x, y)
    theirs = DiceLoss(softmax=True, to_onehot_y=True, include_background=False, ignore_index=0)(x, y)
    torch.testing.assert_close(ours, theirs)


def test_zero_smoothing_scores_an_empty_unpredicted_class_as_a_match_not_nan():
    """``smooth_nr = smooth_dr = 0`` and a class with P = G = 0 (softmax probabilities underflow at logits
    of 30x scale): 0/0 was NaN (found by the range property test); it is the empty-set match, loss 0."""
    x = torch.tensor([[[30.0], [-60.0], [-60.0]]], requires_grad=True)  # class 2: p underflows to 0, absent
    y = torch.zeros(1, 1, 1, dtype=torch.long)
    loss = VNetDiceLoss(
        softmax=True, to_onehot_y=True, smooth_nr=0.0, smooth_dr=0.0, reduction="none", implementation="reference"
    )(x, y)
    assert torch.isfinite(loss).all() and float(loss.flatten()[2]) == 0.0
    loss.sum().backward()
    assert torch.isfinite(x.grad).all()
