"""Values and gradients equal MONAI's DiceLoss / GeneralizedDiceLoss where the semantics agree.

Every case runs twice: on the reference path in float64 (to 1e-6), and on the default path users
get (``implementation="auto"``: the native C kernel on CPU where it builds) with float32 logits,
against MONAI in float64 (to float32 rounding).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import needs_monai_ignore_index, random_case
from monai.losses import DiceLoss, GeneralizedDiceLoss

from monai_gdl import SudreGeneralizedDiceLoss, VNetDiceLoss, kernels
from monai_gdl.kernels import native

SHAPES = [(2, 3, 7, 6, 5), (3, 4, 9, 8), (1, 2, 33)]
ACTS = [dict(softmax=True), dict(sigmoid=True)]
PATHS = ["reference", "default"]


def _value_and_grad(loss_fn, logits, target):
    x = logits.clone().requires_grad_(True)
    value = loss_fn(x, target)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad


def _compare(ours, theirs, logits, target, path):
    """Ours on ``path`` against MONAI in float64 on the same case; shapes compared as they are."""
    want = _value_and_grad(theirs, logits, target)
    if path == "reference":
        got = _value_and_grad(ours, logits, target)
        tol = dict(rtol=1e-6, atol=1e-6)
    else:
        x32 = logits.float()
        t32 = target.float() if target.is_floating_point() else target
        if native.available():
            flat = x32.reshape(*x32.shape[:2], -1)
            assert kernels.resolve_backend(flat, t32.reshape(*t32.shape[:2], -1), None, t32.shape[1] == 1) == "native"
        got = _value_and_grad(ours, x32, t32)
        tol = dict(rtol=1e-4, atol=2e-6)
    assert got[0].shape == want[0].shape
    torch.testing.assert_close(got[0].double(), want[0], **tol)
    torch.testing.assert_close(got[1].double(), want[1], **tol)


@pytest.mark.parametrize(
    "shape,act,include_background,batch,reduction,label_map,path",
    list(itertools.product(SHAPES, ACTS, [True, False], [False, True], ["mean", "sum", "none"], [True, False], PATHS)),
)
def test_vnet_dice_equals_monai_squared_pred(shape, act, include_background, batch, reduction, label_map, path):
    logits, labels, onehot = random_case(shape, seed=sum(shape))
    target = labels if label_map else onehot
    common = dict(include_background=include_background, to_onehot_y=label_map, batch=batch, reduction=reduction, **act)
    impl = "reference" if path == "reference" else "auto"
    ours = VNetDiceLoss(squared_pred=True, implementation=impl, **common)
    _compare(ours, DiceLoss(squared_pred=True, **common), logits, target, path)


@pytest.mark.parametrize("path", PATHS)
def test_plain_denominator_and_weights_equal_monai(path):
    logits, labels, _ = random_case((2, 4, 6, 5, 4), seed=3)
    weight = [0.5, 1.0, 1.5, 1.0]  # averages 1: our rescaling leaves it as is
    impl = "reference" if path == "reference" else "auto"
    ours = VNetDiceLoss(softmax=True, to_onehot_y=True, squared_pred=False, weight=weight, implementation=impl)
    theirs = DiceLoss(softmax=True, to_onehot_y=True, squared_pred=False, weight=weight)
    _compare(ours, theirs, logits, labels, path)


@pytest.mark.parametrize(
    "shape,act,include_background,batch,reduction,w_type,label_map,path",
    list(
        itertools.product(
            SHAPES[:2], ACTS, [True, False], [False, True], ["mean", "none"], ["square", "simple", "uniform"],
            [True, False], PATHS,
        )
    ),
)
def test_gdl_equals_monai(shape, act, include_background, batch, reduction, w_type, label_map, path):
    logits, labels, onehot = random_case(shape, seed=sum(shape) + 1)
    target = labels if label_map else onehot
    common = dict(include_background=include_background, to_onehot_y=label_map, batch=batch, reduction=reduction,
                  w_type=w_type, **act)
    impl = "reference" if path == "reference" else "auto"
    ours = SudreGeneralizedDiceLoss(normalize_weights=False, implementation=impl, **common)
    _compare(ours, GeneralizedDiceLoss(**common), logits, target, path)


@pytest.mark.parametrize("batch", [False, True])
def test_gdl_absent_class_max_policy_equals_monai(batch):
    logits, labels, _ = random_case((2, 4, 6, 6, 6), seed=5, all_present=False)
    labels[labels == 2] = 1  # class 2 absent everywhere
    common = dict(softmax=True, to_onehot_y=True, batch=batch)
    ours = SudreGeneralizedDiceLoss(normalize_weights=False, absent_class="max", **common)
    _compare(ours, GeneralizedDiceLoss(**common), logits, labels, "reference")


@pytest.mark.parametrize("batch", [False, True])
def test_gdl_all_absent_zero_policy_equals_monai(batch):
    """Every scored class absent from a sample: ``all_absent="zero"`` is MONAI's constant loss."""
    logits, _, _ = random_case((2, 3, 5, 5, 5), seed=6)
    labels = torch.zeros(2, 1, 5, 5, 5, dtype=torch.long)
    labels[1, 0, :2] = 1  # sample 0 is background only; sample 1 has class 1
    common = dict(softmax=True, to_onehot_y=True, include_background=False, batch=batch, reduction="none")
    ours = SudreGeneralizedDiceLoss(normalize_weights=False, all_absent="zero", implementation="reference", **common)
    _compare(ours, GeneralizedDiceLoss(**common), logits, labels, "reference")


def test_normalized_weights_equal_monai_without_smoothing():
    """Normalising the weights changes nothing but the smoothing terms' scale."""
    logits, labels, _ = random_case((2, 5, 8, 7, 6), seed=9)
    common = dict(softmax=True, to_onehot_y=True, smooth_nr=0.0, smooth_dr=0.0)
    _compare(SudreGeneralizedDiceLoss(normalize_weights=True, **common), GeneralizedDiceLoss(**common), logits,
             labels, "reference")


def _soft_case(seed, shape=(2, 3, 6, 5, 4)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g, dtype=torch.float64)
    soft = torch.softmax(2 * torch.randn(*shape, generator=g, dtype=torch.float64), dim=1)
    return logits, soft


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("act", ACTS + [dict()])
def test_soft_labels_equal_monai_soft_label_dice(path, batch, act):
    logits, soft = _soft_case(4)
    if not act:
        logits = torch.softmax(logits, dim=1)  # probabilities, no activation
    for squared in (False, True):
        common = dict(squared_pred=squared, batch=batch, **act)
        impl = "reference" if path == "reference" else "auto"
        ours = VNetDiceLoss(implementation=impl, **common)
        _compare(ours, DiceLoss(soft_label=True, **common), logits, soft, path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("w_type", ["square", "simple", "uniform"])
@pytest.mark.parametrize("batch", [False, True])
def test_soft_labels_equal_monai_soft_label_gdl(path, w_type, batch):
    logits, soft = _soft_case(5)
    common = dict(sigmoid=True, w_type=w_type, batch=batch)
    impl = "reference" if path == "reference" else "auto"
    ours = SudreGeneralizedDiceLoss(normalize_weights=False, implementation=impl, **common)
    _compare(ours, GeneralizedDiceLoss(soft_label=True, **common), logits, soft, path)


@pytest.mark.parametrize("path", PATHS)
def test_soft_label_false_is_monai_default_product_form(path):
    logits, soft = _soft_case(6)
    impl = "reference" if path == "reference" else "auto"
    _compare(VNetDiceLoss(sigmoid=True, squared_pred=False, soft_label=False, implementation=impl),
             DiceLoss(sigmoid=True, squared_pred=False), logits, soft, path)
    _compare(SudreGeneralizedDiceLoss(sigmoid=True, normalize_weights=False, soft_label=False, implementation=impl),
             GeneralizedDiceLoss(sigmoid=True), logits, soft, path)


@needs_monai_ignore_index
@pytest.mark.parametrize("path", PATHS)
def test_ignore_index_equals_monai(path):
    logits, labels, _ = random_case((2, 3, 8, 8, 4), seed=11)
    labels[:, :, :2] = 255
    impl = "reference" if path == "reference" else "auto"
    ours = VNetDiceLoss(softmax=True, to_onehot_y=True, ignore_index=255, implementation=impl)
    theirs = DiceLoss(softmax=True, to_onehot_y=True, squared_pred=True, ignore_index=255)
    _compare(ours, theirs, logits, labels, path)


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("spatial", [(5,), (5, 4), (5, 4, 3)])
def test_reduction_none_shapes_are_monai_shapes(batch, spatial):
    """Compared as returned, without flattening: broadcastable against the input like MONAI's."""
    logits, labels, onehot = random_case((2, 3, *spatial), seed=12)
    for ours, theirs in (
        (VNetDiceLoss(softmax=True, reduction="none", batch=batch), DiceLoss(softmax=True, reduction="none", batch=batch)),
        (SudreGeneralizedDiceLoss(softmax=True, reduction="none", batch=batch),
         GeneralizedDiceLoss(softmax=True, reduction="none", batch=batch)),
    ):
        assert ours(logits, onehot).shape == theirs(logits, onehot).shape
