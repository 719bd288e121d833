"""The reported scenario: 'Dice' of 1.9 and GDL of 1.0013 on a 3 x 9 x 64^3 batch (seed 1001)."""

from __future__ import annotations

import pytest
import torch

from monai_gdl import LossInputError, SudreGeneralizedDiceLoss, VNetDiceLoss


@pytest.fixture(scope="module")
def user_batch():
    torch.manual_seed(1001)
    logits = torch.randn(3, 9, 64, 64, 64)
    multi_hot = torch.randint(0, 2, [3, 9, 64, 64, 64])
    return logits, multi_hot


def test_summed_per_class_dice_leaves_unit_interval_but_ours_does_not(user_batch):
    logits, multi_hot = user_batch
    p = torch.sigmoid(logits)
    g = multi_hot.float()
    dims = (2, 3, 4)
    per_class = 2 * (p * g).sum(dims) / (p.pow(2).sum(dims) + g.pow(2).sum(dims))
    user_value = per_class.sum() / logits.shape[0]  # the hand-written 'mean' over batch only
    assert user_value > 1.5  # the reported ~1.9
    ours = VNetDiceLoss(sigmoid=True)(logits, multi_hot)
    assert 0 <= float(ours) <= 1
    torch.testing.assert_close(ours, 1 - per_class.mean())


def test_multi_hot_target_rejected_with_softmax(user_batch):
    logits, multi_hot = user_batch
    for loss in (VNetDiceLoss(softmax=True), SudreGeneralizedDiceLoss(softmax=True)):
        with pytest.raises(LossInputError, match="multi-hot"):
            loss(logits, multi_hot)


def test_raw_logits_rejected_without_activation(user_batch):
    logits, multi_hot = user_batch
    with pytest.raises(LossInputError, match="look like logits"):
        SudreGeneralizedDiceLoss()(logits, multi_hot)


def test_gdl_with_sigmoid_in_unit_interval(user_batch):
    logits, multi_hot = user_batch
    value = SudreGeneralizedDiceLoss(sigmoid=True)(logits, multi_hot)
    assert 0 <= float(value) <= 1
