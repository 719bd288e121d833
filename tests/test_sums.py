"""Reducing the volume to sums (``losses/sums.py``): the default path under ``torch.func`` transforms."""

from __future__ import annotations

import pytest
import torch

from monai_gdl import (
    LossInputError,
    SudreGeneralizedDiceLoss,
    VNetDiceCELoss,
    VNetDiceLoss,
)


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
