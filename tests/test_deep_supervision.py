"""The deep-supervision wrapper: weights, label-preserving downsampling, MONAI parity, DynUNet, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.networks.nets import DynUNet

from monai_gdl import DeepSupervisionWrapper, LossInputError, VNetDiceCELoss
from monai_gdl.losses.deep_supervision import deep_supervision_weights, nearest_resize


def test_nnunet_weights_halve_drop_the_lowest_and_sum_to_one():
    """nnU-Net v2: 1/2^i, the lowest resolution's weight 0, normalised."""
    assert deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(5, "exp") == [1.0, 0.5, 0.25, 0.125, 0.0625]
    assert deep_supervision_weights(6, "exp")[-1] == 0.0625
    assert deep_supervision_weights(3, "two") == [1.0, 0.5, 0.5]


@pytest.mark.parametrize("size", [(8, 6, 4), (5, 7, 3), (16, 12, 8)])
def test_nearest_resize_is_pytorchs_nearest_exact_without_a_float_copy(size):
    labels = torch.randint(0, 200, (2, 1, 16, 12, 8), dtype=torch.uint8)
    got = nearest_resize(labels, size)
    want = F.interpolate(labels.float(), size=size, mode="nearest-exact")
    assert got.dtype == torch.uint8
    torch.testing.assert_close(got.float(), want)


@pytest.mark.parametrize("weight_mode", ["exp", "two", "same"])
def test_equals_monai_deep_supervision_loss(weight_mode):
    """MONAI interpolates a float target; we select label voxels: same target, same loss."""
    g = torch.Generator().manual_seed(0)
    sizes = [(16, 12, 8), (8, 6, 4), (4, 3, 2)]
    outputs = [torch.randn(2, 3, *s, generator=g, dtype=torch.float64, requires_grad=True) for s in sizes]
    labels = torch.randint(0, 3, (2, 1, *sizes[0]), generator=g)
    ours = DeepSupervisionWrapper(VNetDiceCELoss(to_onehot_y=True), weight_mode=weight_mode)(outputs, labels)
    ours.backward()
    grads = [o.grad.clone() for o in outputs]
    for o in outputs:
        o.grad = None
    theirs = DeepSupervisionLoss(
        DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True), weight_mode=weight_mode
    )(outputs, labels.double())
    theirs.backward()
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-6, atol=1e-7)
    for a, o in zip(grads, outputs):
        torch.testing.assert_close(a, o.grad, rtol=1e-6, atol=1e-9)


def test_explicit_weights_and_zero_weight_levels_are_skipped():
    g = torch.Generator().manual_seed(1)
    outputs = [torch.randn(1, 3, 8, 8, generator=g), torch.randn(1, 3, 4, 4, generator=g)]
    labels = torch.randint(0, 3, (1, 1, 8, 8), generator=g)
    loss = VNetDiceCELoss(to_onehot_y=True)
    value = DeepSupervisionWrapper(loss, weights=[0.75, 0.25])(outputs, labels)
    want = 0.75 * loss(outputs[0], labels) + 0.25 * loss(outputs[1], nearest_resize(labels, (4, 4)))
    torch.testing.assert_close(value, want)
    outputs[1] = torch.full_like(outputs[1], float("nan"))  # weight 0: never computed (nnU-Net skips it too)
    torch.testing.assert_close(
        DeepSupervisionWrapper(loss, weights=[1.0, 0.0])(outputs, labels), loss(outputs[0], labels)
    )


def test_trains_monai_dynunet_with_deep_supervision():
    torch.manual_seed(0)
    net = DynUNet(
        3,
        1,
        3,
        kernel_size=[3, 3, 3],
        strides=[1, 2, 2],
        upsample_kernel_size=[2, 2],
        deep_supervision=True,
        deep_supr_num=1,
    )
    net.train()
    image = torch.randn(2, 1, 16, 16, 16)
    labels = (image > 0.5).long() + (image > 1.2).long()
    out = net(image)  # B x (1 + deep_supr_num) x C x spatial, every level upsampled to full size
    assert out.shape == (2, 2, 3, 16, 16, 16)
    loss = DeepSupervisionWrapper(VNetDiceCELoss(to_onehot_y=True))(out, labels)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "outputs,weights,match",
    [
        ([torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 8, 8)], None, "larger than"),
        ([torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 4, 4)], [1.0], "2 deep-supervision outputs but 1 weights"),
        ([torch.zeros(1, 3, 8)], None, "target's rank"),
        ([], None, "outputs is empty"),
        (torch.zeros(1, 3, 8, 8), None, "stacked B x L x C x spatial"),
    ],
)
def test_bad_outputs_are_refused(outputs, weights, match):
    labels = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    with pytest.raises(LossInputError, match=match):
        DeepSupervisionWrapper(VNetDiceCELoss(to_onehot_y=True), weights=weights)(outputs, labels)


def test_bad_options_are_refused():
    with pytest.raises(LossInputError, match="weight_mode='half'"):
        DeepSupervisionWrapper(VNetDiceCELoss(), weight_mode="half")
    with pytest.raises(LossInputError, match="weights="):
        DeepSupervisionWrapper(VNetDiceCELoss(), weights=[0.0, -1.0])


def test_a_list_of_targets_is_used_as_given_one_per_output():
    """nnU-Net hands one target per output; a list equal to the resampled target gives the same loss, and the
    list is used as given (a different low-resolution target changes only that level's term)."""
    g = torch.Generator().manual_seed(2)
    sizes = [(8, 8, 4), (4, 4, 2), (2, 2, 1)]
    outputs = [torch.randn(2, 3, *s, generator=g) for s in sizes]
    labels = torch.randint(0, 3, (2, 1, *sizes[0]), generator=g)
    masks = (torch.rand(2, 1, *sizes[0], generator=g) > 0.2).float()
    wrapper = DeepSupervisionWrapper(VNetDiceCELoss(to_onehot_y=True), weight_mode="same")
    targets = [nearest_resize(labels, s) for s in sizes]
    mask_list = [nearest_resize(masks, s) for s in sizes]
    torch.testing.assert_close(wrapper(outputs, targets, mask_list), wrapper(outputs, labels, masks))
    other = [targets[0], targets[1], torch.randint(0, 3, (2, 1, *sizes[2]), generator=g)]
    loss = VNetDiceCELoss(to_onehot_y=True)
    want = sum(loss(o, t) for o, t in zip(outputs, other))
    torch.testing.assert_close(wrapper(outputs, other), want)


@pytest.mark.parametrize(
    "targets,match",
    [
        ([torch.zeros(1, 1, 8, 8, dtype=torch.long)], "2 deep-supervision outputs but 1 targets"),
        ([torch.zeros(1, 1, 8, 8, dtype=torch.long), torch.zeros(1, 1, 8, 8, dtype=torch.long)], "target 1 has"),
        ([], "give one tensor"),
    ],
)
def test_a_bad_list_of_targets_is_refused(targets, match):
    outputs = [torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 4, 4)]
    with pytest.raises(LossInputError, match=match):
        DeepSupervisionWrapper(VNetDiceCELoss(to_onehot_y=True), weight_mode="same")(outputs, targets)
