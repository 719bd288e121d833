"""Values and gradients equal MONAI's DiceLoss / GeneralizedDiceLoss (float64) where the semantics agree."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import random_case
from monai.losses import DiceLoss, GeneralizedDiceLoss

from monai_gdl import SudreGeneralizedDiceLoss, VNetDiceLoss

SHAPES = [(2, 3, 7, 6, 5), (3, 4, 9, 8), (1, 2, 33)]
ACTS = [dict(softmax=True), dict(sigmoid=True)]
IMPLS = ["reference", "fused"]


def _value_and_grad(loss_fn, logits, target):
    x = logits.clone().requires_grad_(True)
    value = loss_fn(x, target)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad


def _assert_same(ours, theirs):
    (v1, g1), (v2, g2) = ours, theirs
    torch.testing.assert_close(v1.flatten(), v2.flatten(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "shape,act,include_background,batch,reduction,label_map,impl",
    list(itertools.product(SHAPES, ACTS, [True, False], [False, True], ["mean", "sum", "none"], [True, False], IMPLS)),
)
def test_vnet_dice_equals_monai_squared_pred(shape, act, include_background, batch, reduction, label_map, impl):
    logits, labels, onehot = random_case(shape, seed=sum(shape))
    target = labels if label_map else onehot
    common = dict(include_background=include_background, to_onehot_y=label_map, batch=batch, reduction=reduction, **act)
    ours = VNetDiceLoss(squared_pred=True, implementation=impl, **common)
    theirs = DiceLoss(squared_pred=True, **common)
    _assert_same(_value_and_grad(ours, logits, target), _value_and_grad(theirs, logits, target))


@pytest.mark.parametrize("impl", IMPLS)
def test_plain_denominator_and_weights_equal_monai(impl):
    logits, labels, _ = random_case((2, 4, 6, 5, 4), seed=3)
    weight = [0.5, 1.0, 1.5, 1.0]  # averages 1: our rescaling leaves it as is
    ours = VNetDiceLoss(softmax=True, to_onehot_y=True, squared_pred=False, weight=weight, implementation=impl)
    theirs = DiceLoss(softmax=True, to_onehot_y=True, squared_pred=False, weight=weight)
    _assert_same(_value_and_grad(ours, logits, labels), _value_and_grad(theirs, logits, labels))


@pytest.mark.parametrize(
    "shape,act,include_background,batch,reduction,w_type,label_map,impl",
    list(
        itertools.product(
            SHAPES[:2], ACTS, [True, False], [False, True], ["mean", "none"], ["square", "simple", "uniform"],
            [True, False], IMPLS,
        )
    ),
)
def test_gdl_equals_monai(shape, act, include_background, batch, reduction, w_type, label_map, impl):
    logits, labels, onehot = random_case(shape, seed=sum(shape) + 1)
    target = labels if label_map else onehot
    common = dict(include_background=include_background, to_onehot_y=label_map, batch=batch, reduction=reduction,
                  w_type=w_type, **act)
    ours = SudreGeneralizedDiceLoss(normalize_weights=False, implementation=impl, **common)
    theirs = GeneralizedDiceLoss(**common)
    _assert_same(_value_and_grad(ours, logits, target), _value_and_grad(theirs, logits, target))


@pytest.mark.parametrize("batch", [False, True])
def test_gdl_absent_class_max_policy_equals_monai(batch):
    logits, labels, _ = random_case((2, 4, 6, 6, 6), seed=5, all_present=False)
    labels[labels == 2] = 1  # class 2 absent everywhere
    common = dict(softmax=True, to_onehot_y=True, batch=batch)
    ours = SudreGeneralizedDiceLoss(normalize_weights=False, absent_class="max", **common)
    theirs = GeneralizedDiceLoss(**common)
    _assert_same(_value_and_grad(ours, logits, labels), _value_and_grad(theirs, logits, labels))


def test_normalized_weights_equal_monai_without_smoothing():
    """Normalising the weights changes nothing but the smoothing terms' scale."""
    logits, labels, _ = random_case((2, 5, 8, 7, 6), seed=9)
    common = dict(softmax=True, to_onehot_y=True, smooth_nr=0.0, smooth_dr=0.0)
    ours = SudreGeneralizedDiceLoss(normalize_weights=True, **common)
    theirs = GeneralizedDiceLoss(**common)
    _assert_same(_value_and_grad(ours, logits, labels), _value_and_grad(theirs, logits, labels))


def test_soft_labels_equal_monai_soft_label_dice():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 6, 6, 6, generator=g, dtype=torch.float64)
    soft = torch.softmax(2 * torch.randn(2, 3, 6, 6, 6, generator=g, dtype=torch.float64), dim=1)
    for squared in (False, True):
        ours = VNetDiceLoss(softmax=True, squared_pred=squared)
        theirs = DiceLoss(softmax=True, squared_pred=squared)
        _assert_same(_value_and_grad(ours, logits, soft), _value_and_grad(theirs, logits, soft))


def test_ignore_index_equals_monai_masked_inputs():
    logits, labels, _ = random_case((2, 3, 8, 8, 4), seed=11)
    labels[:, :, :2] = 255
    ours = VNetDiceLoss(softmax=True, to_onehot_y=True, ignore_index=255)
    keep = labels != 255
    theirs = DiceLoss(softmax=False, squared_pred=True)

    def monai_masked(x, y):
        p = torch.softmax(x, 1) * keep
        onehot = torch.nn.functional.one_hot(torch.where(keep, y, 0)[:, 0], 3).movedim(-1, 1) * keep
        return theirs(p, onehot.double())

    _assert_same(_value_and_grad(ours, logits, labels), _value_and_grad(monai_masked, logits, labels))
