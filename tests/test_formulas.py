"""The formulas on the sums (``losses/formulas.py``)."""

from __future__ import annotations

import torch

from monai_gdl import (
    VNetDiceLoss,
)


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
