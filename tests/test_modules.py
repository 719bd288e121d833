"""The loss modules behave like MONAI's: options are attributes, ``class_weight`` is a buffer."""

from __future__ import annotations

import inspect

import pytest
import torch
from monai.losses import DiceLoss, GeneralizedDiceLoss

from monai_gdl import SudreGeneralizedDiceLoss, VNetDiceLoss


@pytest.mark.parametrize("ours,theirs", [(VNetDiceLoss, DiceLoss), (SudreGeneralizedDiceLoss, GeneralizedDiceLoss)])
def test_every_monai_argument_we_share_is_an_attribute_with_monais_value(ours, theirs):
    """Constructed with the same options, each shared option reads back as MONAI's attribute does."""
    shared = (set(inspect.signature(ours).parameters) & set(inspect.signature(theirs).parameters)) - {"weight"}
    options = dict(
        include_background=False,
        to_onehot_y=True,
        softmax=True,
        batch=True,
        reduction="sum",
        smooth_nr=1e-4,
        smooth_dr=1e-3,
        soft_label=False,
        squared_pred=False,
        ignore_index=255,
        w_type="simple",
    )
    options = {k: v for k, v in options.items() if k in shared}
    a, b = ours(**options), theirs(**options)
    for name in shared:
        assert getattr(a, name) == getattr(b, name), name


def test_class_weight_is_a_buffer_that_follows_the_module():
    loss = VNetDiceLoss(softmax=True, weight=[1.0, 2.0, 3.0])
    assert "class_weight" in dict(loss.named_buffers())
    state = loss.state_dict()
    torch.testing.assert_close(state["class_weight"], torch.tensor([1.0, 2.0, 3.0]))
    assert set(state) == set(DiceLoss(softmax=True, weight=[1.0, 2.0, 3.0]).state_dict())  # same keys as MONAI
    assert loss.to(torch.float64).class_weight.dtype == torch.float64
    other = VNetDiceLoss(softmax=True, weight=[0.0, 0.0, 1.0])
    other.load_state_dict(state)
    torch.testing.assert_close(other.class_weight, torch.tensor([1.0, 2.0, 3.0]))


def test_changing_an_attribute_changes_the_loss():
    x = torch.randn(2, 3, 5, 5)
    labels = torch.randint(0, 3, (2, 1, 5, 5))
    loss = VNetDiceLoss(softmax=True, to_onehot_y=True, include_background=True)
    full = loss(x, labels)
    loss.include_background = False
    without = loss(x, labels)
    reference = VNetDiceLoss(softmax=True, to_onehot_y=True, include_background=False)(x, labels)
    torch.testing.assert_close(without, reference)
    assert not torch.allclose(full, without)
