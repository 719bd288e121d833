"""Soft labels: the loss is 0 exactly when p == g, for every option; hard targets are unchanged."""

from __future__ import annotations

import itertools

import pytest
import torch

from monai_gdl import (
    SudreGeneralizedDiceCELoss,
    SudreGeneralizedDiceLoss,
    VNetDiceBCELoss,
    VNetDiceCELoss,
    VNetDiceLoss,
    use_backend,
)

LOSSES = [
    ("vnet_plain", lambda **kw: VNetDiceLoss(squared_pred=False, **kw)),
    ("vnet_squared", lambda **kw: VNetDiceLoss(squared_pred=True, **kw)),
    *[
        (f"gdl_{w}_{a}", lambda w=w, a=a, **kw: SudreGeneralizedDiceLoss(w_type=w, absent_class=a, **kw))
        for w, a in itertools.product(["square", "simple", "uniform"], ["max", "zero"])
    ],
]


def _matching_pair(activation: str, dtype: torch.dtype, seed: int = 0):
    """Logits x and a soft target g with activation(x) == g (to rounding)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 6, 5, 4, generator=g, dtype=torch.float64)
    if activation == "softmax":
        target = torch.softmax(x, dim=1)
    elif activation == "sigmoid":
        target = torch.sigmoid(x)
    else:
        x = torch.rand(2, 3, 6, 5, 4, generator=g, dtype=torch.float64)
        target = x.clone()
    return x.to(dtype), target.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid", "none"])
@pytest.mark.parametrize("name,make", LOSSES, ids=[n for n, _ in LOSSES])
def test_prediction_equal_to_soft_target_is_the_minimum(name, make, activation, batch, masked, dtype):
    x, target = _matching_pair(activation, dtype)
    mask = (torch.rand(2, 1, 6, 5, 4, generator=torch.Generator().manual_seed(1)) > 0.3) if masked else None
    act = {"softmax": dict(softmax=True), "sigmoid": dict(sigmoid=True), "none": {}}[activation]
    loss = make(batch=batch, **act)
    xx = x.clone().requires_grad_(True)
    value = loss(xx, target, mask)
    (grad,) = torch.autograd.grad(value, xx)
    assert abs(float(value)) < (1e-12 if dtype == torch.float64 else 2e-6), float(value)
    if dtype == torch.float64:  # exact ties: a stationary point (float32 rounding moves p off g by an ulp)
        assert float(grad.abs().max()) < 1e-10
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    other = 0.5 * x + 0.25 if activation == "none" else x + 0.5 * noise
    assert float(loss(other, target, mask)) > float(value) + 1e-4


def test_uniform_half_target_minimum_moves_to_p_equal_g():
    """The repro from the issue: with g = 0.5 everywhere the product form scores p == g at 0.5 and
    scores p = 1 everywhere *lower*; the soft-label form gives 0 for p == g and more for anything else."""
    target = torch.full((1, 2, 8, 8, 8), 0.5)
    ones = torch.ones(1, 2, 8, 8, 8)
    for cls in (VNetDiceLoss, SudreGeneralizedDiceLoss):
        product = cls(squared_pred=False, soft_label=False)
        assert abs(float(product(target, target)) - 0.5) < 1e-5
        assert float(product(ones, target)) < float(product(target, target)) - 0.1  # its minimum is elsewhere
        loss = cls(squared_pred=False)
        assert float(loss(target, target)) < 1e-6
        assert float(loss(ones, target)) > 0.3


@pytest.mark.parametrize("implementation", ["reference", "auto"])
def test_hard_targets_same_value_and_gradient_with_either_intersection(implementation):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 7, 6, generator=g)
    onehot = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 7, 6), generator=g), 4).movedim(-1, 1).float()
    results = []
    for soft_label in (True, False):
        xx = x.clone().requires_grad_(True)
        value = VNetDiceLoss(softmax=True, squared_pred=False, soft_label=soft_label, implementation=implementation)(
            xx, onehot
        )
        results.append((value.detach(), torch.autograd.grad(value, xx)[0]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-6, atol=1e-9)


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
