"""Gradients against finite differences, and the loss range [0, 1] as a property over random cases."""

from __future__ import annotations

import pytest
import torch
from conftest import random_case
from hypothesis import given, settings
from hypothesis import strategies as st

from monai_gdl import SudreGeneralizedDiceLoss, VNetDiceLoss, generalized_dice_loss, vnet_dice_loss


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("label_map", [True, False])
@pytest.mark.parametrize("act", [dict(softmax=True), dict(sigmoid=True)])
@pytest.mark.parametrize("loss_fn", [vnet_dice_loss, generalized_dice_loss])
def test_gradcheck_float64(impl, label_map, act, loss_fn):
    logits, labels, onehot = random_case((2, 3, 4, 3, 5), seed=2)
    target = labels if label_map else onehot
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: loss_fn(t, target, to_onehot_y=label_map, implementation=impl, **act), (x,), eps=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_gradcheck_masked_soft_labels_batch(impl):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, generator=g).requires_grad_(True)
    soft = torch.rand(2, 3, 5, 4, dtype=torch.float64, generator=g)
    mask = torch.rand(2, 1, 5, 4, generator=g) > 0.3
    for fn in (vnet_dice_loss, generalized_dice_loss):
        assert torch.autograd.gradcheck(
            lambda t, fn=fn: fn(t, soft, sigmoid=True, batch=True, squared_pred=True, mask=mask, implementation=impl),
            (x,),
            eps=1e-6,
            atol=1e-7,
        )


@st.composite
def loss_cases(draw):
    b = draw(st.integers(1, 3))
    c = draw(st.integers(1, 5))
    spatial = draw(st.lists(st.integers(1, 7), min_size=1, max_size=3))
    act = draw(st.sampled_from(["softmax", "sigmoid", "none"]))
    if act == "softmax" and c == 1:
        act = "sigmoid"
    kind = draw(st.sampled_from(["label", "onehot", "soft"]))
    if (kind == "soft" and act == "softmax") or (kind == "label" and c == 1):
        kind = "onehot"  # a soft target cannot go with softmax; one channel has no label map
    opts = dict(
        batch=draw(st.booleans()),
        include_background=c == 1 or draw(st.booleans()),
        squared_pred=draw(st.booleans()),
        implementation=draw(st.sampled_from(["reference", "fused"])),
        reduction=draw(st.sampled_from(["mean", "none"])),
    )
    smooth_dr = draw(st.sampled_from([0.0, 1e-5, 1.0]))
    opts.update(smooth_dr=smooth_dr, smooth_nr=draw(st.sampled_from([0.0, smooth_dr])))
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([0.1, 1.0, 30.0]))
    return b, c, spatial, act, kind, opts, seed, scale


@settings(max_examples=150, deadline=None)
@given(
    loss_cases(),
    st.sampled_from(["vnet", "gdl"]),
    st.sampled_from(["square", "simple", "uniform"]),
    st.sampled_from(["max", "zero"]),
)
def test_loss_is_in_unit_interval(case, which, w_type, absent):
    b, c, spatial, act, kind, opts, seed, scale = case
    g = torch.Generator().manual_seed(seed)
    shape = (b, c, *spatial)
    x = torch.randn(shape, generator=g) * scale
    if act == "none":
        x = torch.rand(shape, generator=g)
    labels = torch.randint(0, c, (b, 1, *spatial), generator=g)
    if kind == "label":
        target, opts["to_onehot_y"] = labels, True
    elif kind == "onehot":
        target = torch.nn.functional.one_hot(labels[:, 0], c).movedim(-1, 1).float()
    else:
        target = torch.rand(shape, generator=g)
    act_opts = {"softmax": dict(softmax=True), "sigmoid": dict(sigmoid=True), "none": {}}[act]
    if which == "vnet":
        loss = VNetDiceLoss(**act_opts, **opts)
    else:
        loss = SudreGeneralizedDiceLoss(w_type=w_type, absent_class=absent, **act_opts, **opts)
    value = loss(x.requires_grad_(True), target)
    assert torch.isfinite(value).all()
    assert value.min() >= -1e-6 and value.max() <= 1 + 1e-6
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("absent", ["max", "zero"])
@pytest.mark.parametrize("w_type", ["square", "simple"])
@pytest.mark.parametrize("batch", [False, True])
def test_absent_class_never_inf_or_nan(absent, w_type, batch):
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    labels = torch.zeros(2, 1, 6, 6, dtype=torch.long)
    labels[0, 0, :2] = 1  # sample 0: classes 0, 1; classes 2, 3 absent everywhere
    value = SudreGeneralizedDiceLoss(softmax=True, to_onehot_y=True, w_type=w_type, absent_class=absent, batch=batch)(
        x, labels
    )
    (grad,) = torch.autograd.grad(value, x)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_all_absent_sample_still_penalises_false_positives(impl):
    """Every scored class absent: the loss must still push predicted foreground down."""
    x = torch.zeros(1, 3, 8, 8, requires_grad=True)
    labels = torch.zeros(1, 1, 8, 8, dtype=torch.long)  # background only, background not scored
    loss = SudreGeneralizedDiceLoss(softmax=True, to_onehot_y=True, include_background=False, implementation=impl)
    value = loss(x, labels)
    (grad,) = torch.autograd.grad(value, x)
    assert value > 0.99  # predicting 2/3 foreground where there is none is (nearly) all error
    assert (grad[:, 1:] > 0).all()  # raising a foreground logit raises the loss


def test_normalized_weights_are_not_swamped_by_smoothing():
    """Raw 1/V^2 weights on big classes shrink w*I to the size of smooth_nr, biasing the loss towards 0."""
    labels = torch.zeros(1, 1, 64, 64, 64, dtype=torch.long)
    labels[..., 32:] = 1
    undecided = torch.full((1, 2, 64, 64, 64), 0.5)  # per class I = V/2, P = G = V: GDL = 1 - V/(2V) = 1/2
    raw = SudreGeneralizedDiceLoss(to_onehot_y=True, normalize_weights=False)(undecided, labels)
    normalized = SudreGeneralizedDiceLoss(to_onehot_y=True)(undecided, labels)
    assert abs(float(normalized) - 0.5) < 1e-5
    assert abs(float(raw) - 0.5) > 0.05


@pytest.mark.parametrize("implementation", ["fused", "reference"])
def test_a_class_whose_squared_probabilities_are_subnormal_keeps_a_finite_gradient(implementation):
    """Found by the property test above: with ``smooth_dr=0``, an absent class predicted at p ~ 1e-20 has
    ``P = sum p^2`` subnormal in float32; ``1 / P`` overflowed and ``inf * 0`` made every gradient NaN. Such a
    class now scores as empty (0, zero gradient) and the rest matches float64."""
    x = torch.tensor([[[41.4933, 21.8477], [-4.7771, -12.5362], [-17.0623, 50.3125]]])
    labels = torch.tensor([[[2, 2]]])
    opts = dict(softmax=True, to_onehot_y=True, include_background=False, smooth_nr=0.0, smooth_dr=0.0)
    xx = x.clone().requires_grad_(True)
    value = VNetDiceLoss(**opts, implementation=implementation)(xx, labels)
    value.backward()
    assert torch.isfinite(xx.grad).all(), xx.grad
    x64 = x.double().requires_grad_(True)
    p = torch.softmax(x64, 1)[:, 2]  # class 2 (present everywhere); class 1: empty, 0
    want = (1 - 2 * p.sum() / ((p * p).sum() + 2)) / 2
    want.backward()
    assert float(value) == pytest.approx(float(want), abs=1e-6)
    torch.testing.assert_close(xx.grad.double(), x64.grad, atol=1e-6, rtol=1e-4)
