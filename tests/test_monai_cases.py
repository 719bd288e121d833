"""MONAI's own loss test cases, transcribed with their expected values, run through our losses.

Source: MONAI ``tests/losses/test_dice_loss.py`` and ``tests/losses/test_generalized_dice_loss.py``
(Apache-2.0; inputs, options and expected values transcribed, rtol 1e-5 as there). Our
``VNetDiceLoss(squared_pred=False)`` is ``DiceLoss``; ``SudreGeneralizedDiceLoss`` is
``GeneralizedDiceLoss`` with ``normalize_weights=False, all_absent="zero"``. Where the semantics
differ the case says so and sets the switch that restores MONAI's behaviour:

- ``soft_label``: MONAI defaults to False; ours to True. They agree for probabilities in [0, 1]
  on hard targets; cases whose ``other_act`` leaves [0, 1] (tanh, log_softmax) pass MONAI's
  default ``soft_label=False`` explicitly.
- ``weight``: we rescale class weights to average 1; MONAI's ``weight=(0, 1)`` case passes
  ``rescale_weight=False``.
- Not transcribed: ``jaccard=True`` (not a Dice loss; no such option here), MONAI's warnings for
  one-channel inputs with ``softmax``/``to_onehot_y``/``include_background=False`` (errors here,
  tested in ``test_validation.py``), ``ignore_index`` with a one-hot target (refused here: pass
  ``mask=``), TorchScript.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_gdl import LossInputError, SudreGeneralizedDiceLoss, VNetDiceLoss

X1 = torch.tensor([[[[1.0, -1.0], [-1.0, 1.0]]]])
X2 = torch.tensor([[[[1.0, -1.0], [-1.0, 1.0]]], [[[1.0, -1.0], [-1.0, 1.0]]]])
T2 = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[1.0, 0.0], [1.0, 0.0]]]])
SOFT = torch.tensor([[[[0.3, 0.4], [0.7, 0.9]]], [[[1.0, 0.1], [0.5, 0.3]]]])
P3 = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
L3 = torch.tensor([[[0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]])
X3 = torch.tensor([[[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
Y3 = torch.tensor([[[1.0, 0.0, 0.0]], [[1.0, 1.0, 0.0]]])
X4 = torch.tensor([[[[1.0, -0.0], [-1.0, 1.0]]], [[[1.0, -1.0], [-1.0, 1.0]]]])
LOG_SOFTMAX = lambda x: torch.log_softmax(x, dim=1)  # noqa: E731
OUTSIDE_UNIT = {"soft_label": False}  # other_act leaves [0, 1]: MONAI's default intersection

DICE_CASES = [
    ({"sigmoid": True, "smooth_nr": 1e-6, "smooth_dr": 1e-6}, X1, torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]]), 0.307576),
    ({"sigmoid": True, "smooth_nr": 1e-4, "smooth_dr": 1e-4}, X2, T2, 0.416657),
    ({"smooth_nr": 1e-4, "smooth_dr": 1e-4, "soft_label": True}, SOFT, SOFT, 0.0),
    ({"smooth_nr": 1e-4, "smooth_dr": 1e-4, "soft_label": False}, SOFT, SOFT, 0.307773),
    ({"include_background": False, "to_onehot_y": True, "smooth_nr": 0, "smooth_dr": 0}, P3, L3, 0.0),
    ({"to_onehot_y": True, "sigmoid": True, "smooth_nr": 1e-4, "smooth_dr": 1e-4}, X3, Y3, 0.435050),
    ({"to_onehot_y": True, "sigmoid": True, "reduction": "none", "smooth_nr": 1e-4, "smooth_dr": 1e-4}, X3, Y3,
     [[[0.296529], [0.415136]], [[0.599976], [0.428559]]]),
    ({"to_onehot_y": True, "softmax": True, "smooth_nr": 1e-4, "smooth_dr": 1e-4}, X3, Y3, 0.383713),
    ({"to_onehot_y": True, "softmax": True, "reduction": "sum", "smooth_nr": 1e-4, "smooth_dr": 1e-4}, X3, Y3, 1.534853),
    ({"sigmoid": True, "squared_pred": True}, X1, torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]]), 0.178337),
    ({"other_act": torch.tanh, "smooth_nr": 1e-4, "smooth_dr": 1e-4, **OUTSIDE_UNIT}, X2, T2, 0.999963),
    ({"to_onehot_y": True, "other_act": LOG_SOFTMAX, "smooth_nr": 1e-4, "smooth_dr": 1e-4, **OUTSIDE_UNIT}, X3, Y3,
     -8.522593),
    ({"other_act": torch.tanh, "smooth_nr": 1e-4, "smooth_dr": 1e-4, "batch": True, **OUTSIDE_UNIT}, X4, T2, 0.774718),
    ({"other_act": torch.tanh, "smooth_nr": 0, "smooth_dr": 1e-4, "batch": True, **OUTSIDE_UNIT}, X4, T2, 0.774733),
    ({"other_act": torch.tanh, "smooth_nr": 0, "smooth_dr": 1e-4, "batch": False, **OUTSIDE_UNIT}, X4, T2, 0.840058),
    ({"to_onehot_y": True, "other_act": LOG_SOFTMAX, "smooth_nr": 1e-4, "smooth_dr": 1e-4, "weight": (0, 1),
      "rescale_weight": False, **OUTSIDE_UNIT}, X3, Y3, -8.268515),
]

GDL_CASES = [
    ({"sigmoid": True, "smooth_nr": 1e-6, "smooth_dr": 1e-6}, X1, torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]]), 0.307576),
    ({"sigmoid": True, "smooth_nr": 1e-4, "smooth_dr": 1e-4}, X2, T2, 0.416597),
    ({"smooth_nr": 1e-4, "smooth_dr": 1e-4, "soft_label": True}, SOFT, SOFT, 0.0),
    ({"smooth_nr": 1e-4, "smooth_dr": 1e-4, "soft_label": False}, SOFT, SOFT, 0.307748),
    ({"include_background": False, "to_onehot_y": True, "smooth_nr": 0.0, "smooth_dr": 0.0}, P3, L3, 0.0),
    ({"to_onehot_y": True, "sigmoid": True, "smooth_nr": 1e-4, "smooth_dr": 1e-4}, X3, Y3, 0.469964),
    ({"to_onehot_y": True, "softmax": True, "smooth_nr": 1e-4, "smooth_dr": 1e-4}, X3, Y3, 0.414507),
    ({"to_onehot_y": True, "softmax": True, "reduction": "sum", "smooth_nr": 1e-4, "smooth_dr": 1e-4}, X3, Y3, 0.829015),
    ({"to_onehot_y": True, "softmax": True, "reduction": "none", "smooth_nr": 1e-4, "smooth_dr": 1e-4}, X3, Y3,
     [[[0.273476]], [[0.555539]]]),
    ({"include_background": False, "to_onehot_y": True, "smooth_nr": 1e-8, "smooth_dr": 1e-8}, P3,
     torch.zeros(2, 1, 3), 0.0),
    ({"to_onehot_y": True, "softmax": True, "w_type": "simple", "smooth_nr": 0, "smooth_dr": 0},
     torch.tensor([[[0.0, 10.0, 10.0, 10.0], [10.0, 0.0, 0.0, 0.0]]]), torch.tensor([[[1, 1, 0, 0]]]), 0.250023),
    ({"other_act": torch.tanh, "smooth_nr": 1e-4, "smooth_dr": 1e-4, **OUTSIDE_UNIT}, X2, T2, 0.99970),
    ({"to_onehot_y": True, "other_act": LOG_SOFTMAX, "smooth_nr": 1e-4, "smooth_dr": 1e-4, **OUTSIDE_UNIT}, X3, Y3,
     -0.097833),
]

MONAI_GDL = {"normalize_weights": False, "all_absent": "zero"}


@pytest.mark.parametrize("options,input,target,expected", DICE_CASES)
def test_monai_dice_loss_cases(options, input, target, expected):
    result = VNetDiceLoss(**{"squared_pred": False, **options})(input, target)  # MONAI DiceLoss's default
    np.testing.assert_allclose(result.detach().numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("options,input,target,expected", GDL_CASES)
def test_monai_generalized_dice_loss_cases(options, input, target, expected):
    result = SudreGeneralizedDiceLoss(**MONAI_GDL, **options)(input, target)
    np.testing.assert_allclose(result.detach().numpy(), expected, rtol=1e-5, atol=1e-7)


def test_monai_ignore_index_equals_the_cropped_case():
    """MONAI ``test_ignore_index_index_target``: ignoring the bottom row equals scoring the top row alone.

    MONAI's case ignores label 2 while the network also scores a class 2; that is refused here (the ignored
    class would stay in the mean with no target voxels), so the network scores classes 0 and 1 only."""
    x = torch.log(torch.tensor([[[[0.8, 0.1], [0.1, 0.1]], [[0.1, 0.8], [0.1, 0.1]], [[0.1, 0.1], [0.8, 0.8]]]]))
    x = x[:, :2]
    labels = torch.tensor([[[[0, 1], [2, 2]]]])
    loss = VNetDiceLoss(squared_pred=False, to_onehot_y=True, softmax=True, ignore_index=2)(x, labels)
    cropped = VNetDiceLoss(squared_pred=False, to_onehot_y=True, softmax=True)(x[:, :, :1], labels[:, :, :1])
    torch.testing.assert_close(loss, cropped)
    with pytest.raises(LossInputError, match="ignore_index=2 is one of the classes the loss scores"):
        VNetDiceLoss(to_onehot_y=True, softmax=True, ignore_index=2)(torch.randn(1, 3, 2, 2), labels)


def test_monai_ignored_voxels_get_exactly_zero_gradient():
    """MONAI ``test_gradients_ignored`` (with the ignored label outside the scored classes, as above)."""
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    labels = torch.tensor([[[[0, 1, 0, 1], [1, 0, 1, 0], [2, 2, 2, 2], [2, 2, 2, 2]]]])
    VNetDiceLoss(squared_pred=False, to_onehot_y=True, softmax=True, ignore_index=2)(x, labels).backward()
    assert torch.all(x.grad[:, :, 2:] == 0.0)
