"""The fused compound losses against MONAI 1.6.1 (DiceCELoss, DiceFocalLoss, GeneralizedDiceFocalLoss,
FocalLoss) and nnU-Net v2's DC_and_CE_loss / DC_and_BCE_loss formulas, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceFocalLoss, FocalLoss, GeneralizedDiceFocalLoss

from monai_gdl import (
    LossInputError,
    SudreGeneralizedDiceCELoss,
    SudreGeneralizedDiceFocalLoss,
    SudreGeneralizedDiceLoss,
    VNetDiceBCELoss,
    VNetDiceCELoss,
    VNetDiceFocalLoss,
    use_backend,
)

SHAPES = [(2, 4, 6, 7, 5), (3, 3, 9, 8), (2, 5, 17)]


def _data(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    b, c = shape[:2]
    x = 2 * torch.randn(shape, generator=g, dtype=dtype)
    labels = torch.randint(0, c, (b, 1, *shape[2:]), generator=g)
    onehot = F.one_hot(labels[:, 0], c).movedim(-1, 1).to(dtype)
    return x, labels, onehot


def _value_and_grad(loss, x, target):
    xx = x.clone().requires_grad_(True)
    value = loss(xx, target)
    value.backward()
    return value.detach(), xx.grad


def _assert_same(ours, theirs, x, target_ours, target_theirs, rtol=1e-6, atol=1e-7):
    v1, g1 = _value_and_grad(ours, x, target_ours)
    v2, g2 = _value_and_grad(theirs, x, target_theirs)
    torch.testing.assert_close(v1.to(v2.dtype), v2, rtol=rtol, atol=atol)
    torch.testing.assert_close(g1.to(g2.dtype), g2, rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("implementation", ["reference", "auto"])
@pytest.mark.parametrize("label_map", [True, False])
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(include_background=False),
        dict(label_smoothing=0.1),
        dict(batch=True, reduction="sum"),
        dict(weighted=True, include_background=False, label_smoothing=0.2),
    ],
)
def test_dice_ce_equals_monai_dice_ce(shape, implementation, label_map, options):
    options = dict(options)
    x, labels, onehot = _data(shape)
    if options.pop("weighted", False):
        options["weight"] = torch.linspace(0.5, 2.0, shape[1], dtype=torch.float64)
    target = labels if label_map else onehot
    ours = VNetDiceCELoss(
        to_onehot_y=label_map, softmax=True, rescale_weight=False, implementation=implementation, **options
    )
    theirs = DiceCELoss(to_onehot_y=label_map, softmax=True, squared_pred=True, **options)
    _assert_same(ours, theirs, x, target, target)


@pytest.mark.parametrize("shape", SHAPES[:2])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "options",
    [
        dict(softmax=True),
        dict(sigmoid=True, alpha=0.25, gamma=1.5),
        dict(softmax=True, include_background=False),
        dict(sigmoid=True, weighted=True, gamma=0.0),
        dict(softmax=True, batch=True, alpha=0.7),
    ],
)
def test_dice_focal_equals_monai_dice_focal(shape, reduction, options):
    """MONAI's DiceFocalLoss uses the sigmoid focal term whatever the Dice activation: so do we by default."""
    options = dict(options)
    x, labels, _ = _data(shape, seed=1)
    if options.pop("weighted", False):
        options["weight"] = torch.linspace(0.5, 2.0, shape[1], dtype=torch.float64)
    ours = VNetDiceFocalLoss(
        to_onehot_y=True, squared_pred=False, soft_label=False, rescale_weight=False, reduction=reduction, **options
    )
    theirs = DiceFocalLoss(to_onehot_y=True, reduction=reduction, **options)
    # MONAI's FocalLoss casts the logits to float32, so the values agree to float32 rounding
    _assert_same(ours, theirs, x, labels, labels, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("options", [dict(softmax=True), dict(sigmoid=True, include_background=False, gamma=1.0)])
def test_gdl_focal_equals_monai_generalized_dice_focal(reduction, options):
    x, labels, _ = _data(SHAPES[0], seed=2)
    ours = SudreGeneralizedDiceFocalLoss(
        to_onehot_y=True, normalize_weights=False, all_absent="zero", soft_label=False, reduction=reduction, **options
    )
    theirs = GeneralizedDiceFocalLoss(to_onehot_y=True, reduction=reduction, **options)
    _assert_same(ours, theirs, x, labels, labels, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("alpha", [None, 0.3])
def test_softmax_focal_equals_monai_focal_use_softmax(alpha):
    x, labels, onehot = _data(SHAPES[1], seed=3)
    ours = VNetDiceFocalLoss(to_onehot_y=True, softmax=True, use_softmax=True, alpha=alpha, gamma=2.0, lambda_dice=0.0)
    theirs = FocalLoss(to_onehot_y=True, use_softmax=True, alpha=alpha, gamma=2.0)
    _assert_same(ours, theirs, x, labels, labels, rtol=2e-6, atol=1e-6)


def test_gdl_ce_is_the_gdl_plus_pytorch_cross_entropy():
    x, labels, _ = _data(SHAPES[0], seed=4)
    weight = torch.tensor([0.2, 1.0, 3.0, 1.5], dtype=torch.float64)
    ours = SudreGeneralizedDiceCELoss(to_onehot_y=True, weight=weight, label_smoothing=0.05, lambda_gdl=0.7)
    gdl = SudreGeneralizedDiceLoss(to_onehot_y=True, softmax=True, implementation="reference")

    def theirs(input, target):
        ce = F.cross_entropy(input, target[:, 0], weight=weight, label_smoothing=0.05)
        return 0.7 * gdl(input, target) + ce

    _assert_same(ours, theirs, x, labels, labels)


def test_float32_native_path_matches_monai_to_float32_rounding():
    """The default backend (native C kernel on CPU) with float32 logits, against MONAI in float64."""
    x, labels, _ = _data((2, 6, 20, 18, 16), seed=5, dtype=torch.float32)
    ours = VNetDiceCELoss(to_onehot_y=True, label_smoothing=0.1)
    theirs = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, label_smoothing=0.1)
    v1, g1 = _value_and_grad(ours, x, labels)
    v2, g2 = _value_and_grad(theirs, x.double(), labels)
    torch.testing.assert_close(v1.double(), v2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1.double(), g2, rtol=1e-4, atol=1e-9)
    focal = VNetDiceFocalLoss(to_onehot_y=True, sigmoid=True, gamma=2.0, alpha=0.25, squared_pred=False)
    v1, g1 = _value_and_grad(focal, x, labels)
    v2, g2 = _value_and_grad(DiceFocalLoss(to_onehot_y=True, sigmoid=True, gamma=2.0, alpha=0.25), x.double(), labels)
    torch.testing.assert_close(v1.double(), v2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1.double(), g2, rtol=1e-4, atol=1e-9)


# nnU-Net v2 (nnunetv2/training/loss/compound_losses.py and dice.py), re-implemented from its published
# definition: DC_and_CE_loss = weight_ce * CE + weight_dice * MemoryEfficientSoftDiceLoss, where the Dice
# loss returns -mean_c (2 I + smooth) / clip(P + G + smooth, 1e-8) over the foreground classes (do_bg=False),
# on the softmax of all channels, sums over the batch too with batch_dice, voxels with the ignore label
# masked out of every sum and out of the CE (ignore_index).
def _nnunet_soft_dice(probs, onehot, loss_mask, batch_dice, do_bg, smooth=1e-5):
    if not do_bg:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    axes = tuple(range(2, probs.ndim))
    m = torch.ones_like(probs[:, :1]) if loss_mask is None else loss_mask.to(probs.dtype)
    intersect = (probs * onehot * m).sum(axes)
    sum_pred = (probs * m).sum(axes)
    sum_gt = (onehot * m).sum(axes)
    if batch_dice:
        intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
    dc = (2 * intersect + smooth) / torch.clip(sum_gt + sum_pred + smooth, 1e-8)
    return -dc.mean()


def _nnunet_dc_and_ce(net_output, target, batch_dice, ignore_label, weight_ce=1.0, weight_dice=1.0):
    c = net_output.shape[1]
    if ignore_label is not None:
        mask = target != ignore_label
        target_dice = torch.where(mask, target, 0)
    else:
        mask, target_dice = None, target
    onehot = F.one_hot(target_dice[:, 0].long(), c).movedim(-1, 1).to(net_output.dtype)
    dc = _nnunet_soft_dice(torch.softmax(net_output, 1), onehot, mask, batch_dice, do_bg=False)
    ce = F.cross_entropy(net_output, target[:, 0].long(), ignore_index=-100 if ignore_label is None else ignore_label)
    return weight_ce * ce + weight_dice * dc


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("ignore_label", [None, 4])
def test_dice_ce_equals_nnunet_dc_and_ce(batch_dice, ignore_label):
    """nnU-Net's Dice is -Dice (ours 1 - Dice), so ours equals nnU-Net's plus lambda_dice."""
    x, labels, _ = _data((2, 4, 8, 7, 6), seed=6)
    if ignore_label is not None:
        labels[:, :, :3] = ignore_label  # nnU-Net's ignore label is the class after the last
    ours = VNetDiceCELoss(
        to_onehot_y=True,
        squared_pred=False,
        include_background=False,
        batch=batch_dice,
        ignore_index=ignore_label,
        lambda_dice=0.8,
        lambda_ce=1.3,
    )

    def theirs(input, target):
        return _nnunet_dc_and_ce(input, target, batch_dice, ignore_label, weight_ce=1.3, weight_dice=0.8) + 0.8

    _assert_same(ours, theirs, x, labels, labels)


@pytest.mark.parametrize("batch_dice", [False, True])
def test_dice_bce_equals_nnunet_dc_and_bce(batch_dice):
    """nnU-Net's region training: sigmoid Dice over every region (do_bg=True) + BCEWithLogits mean."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 9, 8, 7, generator=g, dtype=torch.float64)
    regions = (torch.rand(2, 3, 9, 8, 7, generator=g) > 0.6).to(torch.float64)
    ours = VNetDiceBCELoss(squared_pred=False, batch=batch_dice)

    def theirs(input, target):
        dc = _nnunet_soft_dice(torch.sigmoid(input), target, None, batch_dice, do_bg=True)
        return F.binary_cross_entropy_with_logits(input, target) + dc + 1.0

    _assert_same(ours, theirs, x, regions, regions)


@pytest.mark.parametrize(
    "make",
    [
        lambda: VNetDiceCELoss(to_onehot_y=True, label_smoothing=0.1, weight=[1.0, 2.0, 0.5]),
        lambda: SudreGeneralizedDiceCELoss(to_onehot_y=True, batch=True),
        lambda: VNetDiceBCELoss(to_onehot_y=True),
        lambda: VNetDiceFocalLoss(to_onehot_y=True, softmax=True, gamma=2.0, alpha=0.25),
        lambda: SudreGeneralizedDiceFocalLoss(sigmoid=True, to_onehot_y=True, gamma=1.5, use_softmax=False),
    ],
)
def test_closed_form_gradient_passes_gradcheck(make):
    """Finite differences through the fused operator's closed-form backward (eager backend, float64)."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 5, 4), generator=g)
    loss = make()
    with use_backend("eager"):
        assert torch.autograd.gradcheck(lambda t: loss(t, labels), (x,), eps=1e-6, atol=1e-7)


def test_ignore_index_and_mask_exclude_voxels_from_every_term():
    x, labels, onehot = _data((2, 3, 10, 9), seed=9)
    keep = torch.rand(2, 1, 10, 9, generator=torch.Generator().manual_seed(1)) > 0.4
    ignored = torch.where(keep, labels, torch.full_like(labels, 255))
    noise = torch.where(keep, x, 50 * torch.randn_like(x))  # what ignored voxels hold must not matter
    for loss in (
        VNetDiceCELoss(to_onehot_y=True, ignore_index=255),
        VNetDiceFocalLoss(to_onehot_y=True, sigmoid=True, ignore_index=255),
    ):
        torch.testing.assert_close(loss(x, ignored), loss(noise, ignored))
    dense = VNetDiceBCELoss(implementation="auto")
    torch.testing.assert_close(dense(x, onehot, mask=keep), dense(noise, onehot, mask=keep))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_logits_accumulate_in_float32(dtype):
    x, labels, _ = _data((2, 4, 16, 16, 12), seed=10, dtype=torch.float32)
    loss = VNetDiceCELoss(to_onehot_y=True)
    full = loss(x, labels)
    half = loss(x.to(dtype), labels)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=2e-2 if dtype == torch.bfloat16 else 2e-3, atol=1e-3)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: VNetDiceCELoss(sigmoid=True, softmax=False), "VNetDiceBCELoss"),
        (lambda: VNetDiceCELoss(softmax=False), "softmax=True"),
        (lambda: VNetDiceCELoss(label_smoothing=1.0), r"label_smoothing=1.0.*\[0, 1\)"),
        (lambda: VNetDiceCELoss(label_smoothing=-0.1), "label_smoothing=-0.1"),
        (lambda: VNetDiceCELoss(lambda_ce=-1.0), "lambda_ce=-1.0"),
        (lambda: VNetDiceCELoss(lambda_ce=0.0, lambda_dice=0.0), "lambda_dice=0 and lambda_ce=0"),
        (lambda: VNetDiceCELoss(reduction="none"), "reduction='none'"),
        (lambda: VNetDiceFocalLoss(softmax=True, gamma=-1.0), "gamma=-1.0"),
        (lambda: VNetDiceFocalLoss(softmax=True, alpha=1.5), "alpha=1.5"),
        (lambda: VNetDiceFocalLoss(), "softmax=True .* or sigmoid=True"),
        (lambda: VNetDiceFocalLoss(sigmoid=True, use_softmax=True), "use_softmax=True"),
        (lambda: VNetDiceBCELoss(softmax=True, sigmoid=False), "VNetDiceCELoss"),
        (lambda: SudreGeneralizedDiceCELoss(w_type="cubic"), "w_type='cubic'"),
        (lambda: SudreGeneralizedDiceFocalLoss(softmax=True, lambda_gdl=float("nan")), "lambda_gdl=nan"),
    ],
)
def test_bad_options_are_refused_at_construction(make, match):
    with pytest.raises(LossInputError, match=match):
        make()


def test_bad_inputs_are_refused_with_the_dice_losses_errors():
    x, labels, _ = _data((2, 3, 6, 6), seed=11)
    with pytest.raises(LossInputError, match="1 channel; cross-entropy over one class is always 0"):
        VNetDiceCELoss()(x[:, :1], labels)
    with pytest.raises(LossInputError, match="weight has 2 entries"):
        VNetDiceCELoss(to_onehot_y=True, weight=[1.0, 2.0])(x, labels)
    with pytest.raises(LossInputError, match=r"labels in \[3, 5\] but input has 3 channels"):
        VNetDiceCELoss(to_onehot_y=True)(x, labels + 3)
    with pytest.raises(LossInputError, match="looks like a label map, so pass to_onehot_y=True"):
        VNetDiceFocalLoss(softmax=True)(x, labels)
    with pytest.raises(LossInputError, match="NaN or inf"):
        VNetDiceCELoss(to_onehot_y=True)(x.masked_fill(x > 3, float("nan")), labels)
