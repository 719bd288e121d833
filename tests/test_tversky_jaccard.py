"""Tversky, focal Tversky and Jaccard: equal to MONAI 1.6.1 ``TverskyLoss`` / ``DiceLoss(jaccard=True)`` (values
and gradients, float64), to MONAI's own test cases, and focal Tversky to the paper's formula written out here.

MONAI's test cases are transcribed from ``tests/losses/test_tversky_loss.py`` and ``test_dice_loss.py``
(Apache-2.0; inputs, options, expected values; rtol 1e-4 / 1e-5 as there). MONAI's ``TverskyLoss`` defaults to
``soft_label=False``; cases whose activation leaves [0, 1] (tanh, log_softmax) pass it explicitly, as in
``test_monai_cases.py``. MONAI's ``reduction="none"`` shape for Tversky is ``B x C`` (ours is broadcastable,
``B x C x 1 ...``), so those are compared flattened.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import random_case, skip_without_triton
from monai.losses import DiceLoss, TverskyLoss

from monai_gdl import (
    FocalTverskyLoss,
    LossInputError,
    SalehiTverskyCELoss,
    SalehiTverskyLoss,
    VNetDiceLoss,
    tversky_loss,
)

X1 = torch.tensor([[[[1.0, -1.0], [-1.0, 1.0]]]])
T1 = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
X2 = torch.tensor([[[[1.0, -1.0], [-1.0, 1.0]]], [[[1.0, -1.0], [-1.0, 1.0]]]])
T2 = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[1.0, 0.0], [1.0, 0.0]]]])
SOFT = torch.tensor([[[[0.3, 0.4], [0.7, 0.9]]], [[[1.0, 0.1], [0.5, 0.3]]]])
P3 = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
L3 = torch.tensor([[[0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]])
X3 = torch.tensor([[[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
Y3 = torch.tensor([[[1.0, 0.0, 0.0]], [[1.0, 1.0, 0.0]]])
PRODUCT = {"soft_label": False}  # MONAI TverskyLoss's default intersection (activations that leave [0, 1])

TVERSKY_CASES = [
    ({"sigmoid": True, "smooth_nr": 1e-6, "smooth_dr": 1e-6}, X1, T1, 0.307576),
    ({"sigmoid": True, "smooth_nr": 1e-4, "smooth_dr": 1e-4}, X2, T2, 0.416657),
    ({"smooth_nr": 1e-4, "smooth_dr": 1e-4, "soft_label": True}, SOFT, SOFT, 0.0),
    ({"smooth_nr": 1e-4, "smooth_dr": 1e-4, "soft_label": False}, SOFT, SOFT, 0.307773),
    ({"include_background": False, "to_onehot_y": True, "smooth_nr": 0, "smooth_dr": 0}, P3, L3, 0.0),
    ({"include_background": False, "to_onehot_y": True, "smooth_nr": 0, "smooth_dr": 1e-3}, P3, L3, 0.000999),
    ({"to_onehot_y": True, "sigmoid": True, "smooth_nr": 1e-4, "smooth_dr": 1e-4}, X3, Y3, 0.435050),
    ({"to_onehot_y": True, "sigmoid": True, "batch": True}, X3, Y3, 0.422979),
    ({"to_onehot_y": True, "sigmoid": True, "reduction": "sum", "smooth_nr": 1e-4, "smooth_dr": 1e-4}, X3, Y3, 1.74013),
    ({"to_onehot_y": True, "softmax": True, "smooth_nr": 1e-4, "smooth_dr": 1e-4}, X3, Y3, 0.383713),
    (
        {"to_onehot_y": True, "softmax": True, "reduction": "none", "smooth_nr": 1e-4, "smooth_dr": 1e-4},
        X3,
        Y3,
        [[0.210961, 0.295339], [0.599952, 0.428547]],
    ),
    ({"sigmoid": True, "alpha": 0.3, "beta": 0.7, "smooth_nr": 1e-6, "smooth_dr": 1e-6}, X1, T1, 0.3589),
    ({"sigmoid": True, "alpha": 0.7, "beta": 0.3, "smooth_nr": 1e-6, "smooth_dr": 1e-6}, X1, T1, 0.247366),
    ({"other_act": torch.tanh, "smooth_nr": 1e-4, "smooth_dr": 1e-4, **PRODUCT}, X2, T2, 0.999963),
    ({"other_act": torch.tanh, "smooth_nr": 0, "smooth_dr": 1e-3, "batch": True, **PRODUCT}, X2, T2, 0.999963),
    (
        {
            "to_onehot_y": True,
            "other_act": lambda x: torch.log_softmax(x, dim=1),
            "smooth_nr": 1e-4,
            "smooth_dr": 1e-4,
            **PRODUCT,
        },
        X3,
        Y3,
        -8.533317,
    ),
]


@pytest.mark.parametrize("options,input,target,expected", TVERSKY_CASES)
def test_monai_tversky_loss_cases(options, input, target, expected):
    result = SalehiTverskyLoss(**options)(input, target)
    np.testing.assert_allclose(result.detach().numpy().reshape(np.shape(expected)), expected, rtol=1e-4)


def test_monai_dice_loss_jaccard_case():
    result = VNetDiceLoss(sigmoid=True, squared_pred=False, jaccard=True, smooth_nr=1e-5, smooth_dr=1e-5)(X1, T1)
    np.testing.assert_allclose(float(result), 0.470451, rtol=1e-5)


def _value_and_grad(loss_fn, logits, target):
    x = logits.clone().requires_grad_(True)
    value = loss_fn(x, target)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad


def _assert_equal(ours, theirs, logits, target, path):
    """Ours (float64 reference path, or the default path in float32) against MONAI in float64, values
    flattened to MONAI's shape."""
    want = _value_and_grad(theirs, logits, target)
    if path == "reference":
        got, tol = _value_and_grad(ours, logits, target), dict(rtol=1e-6, atol=1e-6)
    else:
        t32 = target.float() if target.is_floating_point() else target
        got, tol = _value_and_grad(ours, logits.float(), t32), dict(rtol=1e-4, atol=2e-6)
    torch.testing.assert_close(got[0].double().reshape(want[0].shape), want[0], **tol)
    torch.testing.assert_close(got[1].double(), want[1], **tol)


@pytest.mark.parametrize(
    "shape,act,include_background,batch,reduction,label_map,path",
    list(
        itertools.product(
            [(2, 3, 7, 6, 5), (3, 4, 9, 8)],
            [dict(softmax=True), dict(sigmoid=True)],
            [True, False],
            [False, True],
            ["mean", "sum", "none"],
            [True, False],
            ["reference", "default"],
        )
    ),
)
def test_tversky_equals_monai(shape, act, include_background, batch, reduction, label_map, path):
    logits, labels, onehot = random_case(shape, seed=sum(shape) + 7)
    common = dict(
        include_background=include_background,
        to_onehot_y=label_map,
        batch=batch,
        reduction=reduction,
        alpha=0.3,
        beta=0.7,
        **act,
    )
    ours = SalehiTverskyLoss(implementation="reference" if path == "reference" else "auto", **common)
    _assert_equal(ours, TverskyLoss(**common), logits, labels if label_map else onehot, path)


@pytest.mark.parametrize("path", ["reference", "default"])
@pytest.mark.parametrize("alpha,beta", [(0.5, 0.5), (1.0, 1.0), (0.0, 1.0), (0.9, 0.1)])
def test_tversky_soft_labels_equal_monai_soft_label(path, alpha, beta):
    g = torch.Generator().manual_seed(21)
    logits = torch.randn(2, 3, 6, 5, 4, generator=g, dtype=torch.float64)
    soft = torch.softmax(2 * torch.randn(2, 3, 6, 5, 4, generator=g, dtype=torch.float64), dim=1)
    common = dict(softmax=True, alpha=alpha, beta=beta)
    ours = SalehiTverskyLoss(implementation="reference" if path == "reference" else "auto", **common)
    _assert_equal(ours, TverskyLoss(soft_label=True, **common), logits, soft, path)
    # the minimum is at p == g: probabilities equal to the soft target score 0
    assert float(SalehiTverskyLoss(alpha=alpha, beta=beta)(soft, soft)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("path", ["reference", "default"])
@pytest.mark.parametrize("squared,soft_label", [(False, True), (False, False), (True, True)])
@pytest.mark.parametrize("label_map", [True, False])
def test_jaccard_equals_monai(path, squared, soft_label, label_map):
    logits, labels, onehot = random_case((2, 4, 6, 5, 4), seed=23)
    common = dict(softmax=True, to_onehot_y=label_map, squared_pred=squared, jaccard=True, reduction="none")
    ours = VNetDiceLoss(soft_label=soft_label, implementation="reference" if path == "reference" else "auto", **common)
    _assert_equal(ours, DiceLoss(soft_label=soft_label, **common), logits, labels if label_map else onehot, path)


def _focal_tversky_by_the_paper(probs, onehot, alpha_fn, beta_fp, gamma_paper, smooth=1e-5):
    """Abraham and Khan (2019), eq. 3-4 as printed: TI_c = (TP + s) / (TP + alpha FN + beta FP + s),
    FTL = sum_c (1 - TI_c)^(1/gamma); averaged over classes and samples here (our ``"mean"``)."""
    axes = tuple(range(2, probs.ndim))
    tp = (probs * onehot).sum(axes)
    fn = ((1 - probs) * onehot).sum(axes)
    fp = (probs * (1 - onehot)).sum(axes)
    ti = (tp + smooth) / (tp + alpha_fn * fn + beta_fp * fp + smooth)
    return ((1 - ti) ** (1 / gamma_paper)).mean()


@pytest.mark.parametrize("implementation", ["reference", "auto", "eager", "triton"])
def test_focal_tversky_equals_the_papers_formula(implementation):
    if implementation == "triton":
        skip_without_triton()
    logits, labels, onehot = random_case((2, 3, 8, 7, 6), seed=29)
    x = logits.clone().requires_grad_(True)
    want = _focal_tversky_by_the_paper(torch.softmax(x, 1), onehot, 0.7, 0.3, 4 / 3)
    (want_grad,) = torch.autograd.grad(want, x)
    dtype = torch.float64 if implementation == "reference" else torch.float32
    y = logits.to(dtype).requires_grad_(True)
    got = FocalTverskyLoss(softmax=True, to_onehot_y=True, implementation=implementation)(y, labels)
    got.backward()
    tol = dict(rtol=1e-6, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got.detach().double(), want.detach(), **tol)
    torch.testing.assert_close(y.grad.double(), want_grad, **tol)


def test_focal_tversky_gradient_is_finite_for_a_perfect_class():
    """``(1 - TI)^0.75`` at TI = 1 has an infinite exact derivative; the loss gives 0 there, never NaN."""
    labels = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    labels[..., :2, :] = 1
    probs = torch.nn.functional.one_hot(labels[:, 0], 2).movedim(-1, 1).double().requires_grad_(True)
    value = FocalTverskyLoss(to_onehot_y=True, implementation="reference")(probs, labels)
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(probs.grad).all()


def test_tversky_with_class_weights_and_mask_matches_cropping():
    logits, labels, _ = random_case((2, 3, 6, 6, 4), seed=31)
    mask = torch.zeros(2, 1, 6, 6, 4)
    mask[..., :3, :, :] = 1
    loss = SalehiTverskyLoss(softmax=True, to_onehot_y=True, alpha=0.2, beta=0.8, weight=[1.0, 2.0, 3.0])
    cropped = loss(logits[:, :, :3], labels[:, :, :3])
    torch.testing.assert_close(loss(logits, labels, mask=mask), cropped)
    plain = SalehiTverskyLoss(softmax=True, to_onehot_y=True, alpha=0.2, beta=0.8, reduction="none")
    per_class = plain(logits[:, :, :3], labels[:, :, :3]).reshape(2, 3)
    torch.testing.assert_close(cropped, (per_class * torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)).mean())


def test_tversky_ce_equals_monai_tversky_plus_cross_entropy():
    logits, labels, _ = random_case((2, 4, 7, 6, 5), seed=37)
    ours = SalehiTverskyCELoss(
        to_onehot_y=True, alpha=0.3, beta=0.7, gamma=1.0, lambda_tversky=0.7, lambda_ce=1.3, implementation="reference"
    )
    tversky = TverskyLoss(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7)

    def theirs(x, y):
        return 0.7 * tversky(x, y) + 1.3 * torch.nn.functional.cross_entropy(x, y[:, 0])

    _assert_equal(ours, theirs, logits, labels, "reference")
    ours.implementation = "auto"
    _assert_equal(ours, theirs, logits, labels, "default")


def test_functional_form_equals_the_module():
    logits, labels, _ = random_case((2, 3, 5, 5, 5), seed=41)
    options = dict(softmax=True, to_onehot_y=True, alpha=0.4, beta=0.6, gamma=0.8, batch=True)
    torch.testing.assert_close(tversky_loss(logits, labels, **options), SalehiTverskyLoss(**options)(logits, labels))


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(alpha=-0.1), r"alpha=-0.1: the false-positive weight must be >= 0"),
        (dict(beta=float("nan")), r"beta=nan"),
        (dict(alpha=0.0, beta=0.0), r"alpha=0 and beta=0: the Tversky index would be 1 whatever the prediction"),
        (dict(gamma=0.0), r"gamma=0: \(1 - TI\)\^0 is 1 whatever the prediction"),
        (dict(gamma=-1.0), r"gamma=-1.0: the focal Tversky exponent must be >= 0"),
    ],
)
def test_bad_options_name_the_argument(options, match):
    with pytest.raises(LossInputError, match=match):
        SalehiTverskyLoss(**options)
    with pytest.raises(LossInputError, match=match):
        tversky_loss(torch.zeros(1, 2, 3), torch.zeros(1, 1, 3), **options)


def test_tversky_offers_no_squared_denominator():
    with pytest.raises(TypeError, match="squared_pred"):
        SalehiTverskyLoss(squared_pred=True)
    assert SalehiTverskyLoss().options.dice.squared_pred is False
