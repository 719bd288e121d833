"""Skeleton Recall and boundary terms, fused: equal to the published formulas written out here in plain PyTorch
(and to MONAI 1.6.1 ``BoundaryLoss`` given the same maps), on every backend, with the map passed or packed
into the target, and refused with a clear error when it is missing or wrong."""

from __future__ import annotations

import monai.losses
import pytest
import torch
from conftest import needs_monai_boundary_loss, needs_triton, random_case
from monai.losses import DiceCELoss

from monai_gdl import (
    LossInputError,
    SignedDistanceMapd,
    VNetDiceCEBoundaryLoss,
    VNetDiceCESkeletonRecallLoss,
    kernels,
    signed_distance_map,
)
from monai_gdl.kernels import native

BACKENDS = [
    "reference",
    "eager",
    pytest.param("triton", marks=needs_triton),
    pytest.param(
        "native", marks=pytest.mark.skipif(not native.available(), reason="no C compiler for the native CPU kernel")
    ),
]


def _skeleton_like(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A skeleton-shaped label map: a random subset of each foreground class's voxels (0 elsewhere)."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(labels.shape, generator=g) < 0.3
    return torch.where(keep & (labels > 0), labels, torch.zeros_like(labels)).to(torch.uint8)


def _skeleton_recall_by_the_paper(probs, skeleton, num_classes, batch, smooth=1e-5):
    """Kirchhoff et al. 2024 (eq. 2, and the authors' nnU-Net code's reductions): soft recall of the softmax on
    the one-hot tubed skeleton, background excluded, ``1 - mean`` (the paper's ``-mean`` plus 1)."""
    onehot = torch.nn.functional.one_hot(skeleton[:, 0].long(), num_classes).movedim(-1, 1).to(probs.dtype)[:, 1:]
    x = probs[:, 1:]
    axes = tuple(range(2, x.ndim))
    inter, total = (x * onehot).sum(axes), onehot.sum(axes)
    if batch:
        inter, total = inter.sum(0), total.sum(0)
    return 1 - ((inter + smooth) / (total + smooth)).mean()


def _value_and_grad(fn, x):
    x = x.clone().requires_grad_(True)
    value = fn(x)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("target_kind", ["labels", "onehot"])
def test_dice_ce_skeleton_recall_equals_monai_dice_ce_plus_the_papers_recall(backend, batch, target_kind):
    logits, labels, onehot = random_case((2, 4, 9, 8, 7), seed=3)
    skeleton = _skeleton_like(labels, seed=4)
    dice_ce = DiceCELoss(softmax=True, to_onehot_y=target_kind == "labels", squared_pred=True, batch=batch)
    target = labels if target_kind == "labels" else onehot

    def theirs(x):
        return dice_ce(x, target) + 0.7 * _skeleton_recall_by_the_paper(torch.softmax(x, 1), skeleton, 4, batch)

    loss = VNetDiceCESkeletonRecallLoss(
        to_onehot_y=target_kind == "labels", batch=batch, lambda_skel=0.7, implementation=backend
    )
    x = logits if backend == "reference" else logits.float()
    t = target if backend == "reference" or target_kind == "labels" else target.float()
    got = _value_and_grad(lambda y: loss(y, t, skeleton=skeleton), x)
    want = _value_and_grad(theirs, logits)
    tol = dict(rtol=1e-6, atol=1e-9) if backend == "reference" else dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got[0].double(), want[0], **tol)
    torch.testing.assert_close(got[1].double(), want[1], **tol)


def test_skeleton_packed_into_the_target_equals_the_argument_and_stays_on_the_native_kernel():
    logits, labels, _ = random_case((2, 3, 8, 8, 6), dtype=torch.float32, seed=5)
    skeleton = _skeleton_like(labels, seed=6)
    loss = VNetDiceCESkeletonRecallLoss(to_onehot_y=True)
    packed = torch.cat([labels.float(), skeleton.float()], dim=1)  # what TubedSkeletonMapd(append=True) gives
    torch.testing.assert_close(loss(logits, packed), loss(logits, labels, skeleton=skeleton))
    if native.available():  # the label and skeleton channels of a packed target are read in place (no copy)
        flat = logits.reshape(2, 3, -1)
        t, w = packed[:, :1].reshape(2, 1, -1), packed[:, 1:].reshape(2, 1, -1)
        assert kernels.resolve_backend(flat, t, None, True, "auto", w, True) == "native"


def test_skeleton_recall_respects_the_mask():
    logits, labels, _ = random_case((2, 3, 8, 6, 4), seed=7)
    skeleton = _skeleton_like(labels, seed=8)
    mask = torch.zeros(2, 1, 8, 6, 4)
    mask[:, :, :4] = 1
    loss = VNetDiceCESkeletonRecallLoss(to_onehot_y=True, lambda_dice=0.0, lambda_ce=0.0)
    cropped = loss(logits[:, :, :4], labels[:, :, :4], skeleton=skeleton[:, :, :4])
    torch.testing.assert_close(loss(logits, labels, mask=mask, skeleton=skeleton), cropped)


def _blobs(shape=(2, 1, 12, 11, 10), seed=9, classes=3):
    """Label maps of a few boxes per class (random distance maps would not have MONAI's form)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(shape, dtype=torch.long)
    for b in range(shape[0]):
        for c in range(1, classes):
            lo = [int(torch.randint(0, s - 4, (1,), generator=g)) for s in shape[2:]]
            labels[b, 0, lo[0] : lo[0] + 4, lo[1] : lo[1] + 3, lo[2] : lo[2] + 5] = c
    return labels


@needs_monai_boundary_loss
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_boundary_term_equals_monai_boundary_loss(backend, include_background, reduction):
    labels = _blobs()
    logits = torch.randn(2, 3, *labels.shape[2:], generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    distance = torch.stack([torch.from_numpy(signed_distance_map(lab, 3)) for lab in labels])
    theirs = monai.losses.BoundaryLoss(
        softmax=True, to_onehot_y=True, include_background=include_background, reduction=reduction
    )
    loss = VNetDiceCEBoundaryLoss(
        to_onehot_y=True,
        include_background=include_background,
        reduction=reduction,
        lambda_dice=0.0,
        lambda_ce=0.0,
        implementation=backend,
    )
    x = logits if backend == "reference" else logits.float()
    got = _value_and_grad(lambda y: loss(y, labels, distance=distance), x)
    want = _value_and_grad(lambda y: theirs(y, labels), logits)
    tol = dict(rtol=1e-6, atol=1e-9) if backend == "reference" else dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got[0].double(), want[0], **tol)
    torch.testing.assert_close(got[1].double(), want[1], **tol)


@needs_monai_boundary_loss
def test_boundary_compound_is_the_sum_of_its_parts_and_an_absent_class_costs_nothing():
    labels = _blobs(classes=2)  # class 2 absent: its map is 0, so its probabilities do not enter the term
    logits = torch.randn(2, 3, *labels.shape[2:], generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    distance = SignedDistanceMapd("label", num_classes=3)({"label": labels[0]})["label_distance"][None]
    distance = torch.cat([distance, torch.from_numpy(signed_distance_map(labels[1], 3))[None]])
    assert not distance[:, 2].any()
    loss = VNetDiceCEBoundaryLoss(to_onehot_y=True, lambda_boundary=0.3, implementation="reference")
    parts = DiceCELoss(softmax=True, to_onehot_y=True, squared_pred=True)(
        logits, labels
    ) + 0.3 * monai.losses.BoundaryLoss(softmax=True, to_onehot_y=True)(logits, labels)
    torch.testing.assert_close(loss(logits, labels, distance=distance), parts)
    packed = torch.cat([labels.double(), distance.double()], dim=1)
    torch.testing.assert_close(loss(logits, packed), parts)


def test_bf16_logits_keep_float32_sums():
    logits, labels, _ = random_case((2, 3, 8, 8, 8), dtype=torch.float32, seed=12)
    skeleton = _skeleton_like(labels, seed=13)
    loss = VNetDiceCESkeletonRecallLoss(to_onehot_y=True)
    full = loss(logits, labels, skeleton=skeleton)
    half = loss(logits.bfloat16(), labels, skeleton=skeleton)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    "make,call,match",
    [
        (
            lambda: VNetDiceCESkeletonRecallLoss(to_onehot_y=True),
            lambda loss, x, y: loss(x, y),
            r"needs its skeleton map and got none: pass loss\(input, target, skeleton=...\)",
        ),
        (
            lambda: VNetDiceCEBoundaryLoss(to_onehot_y=True),
            lambda loss, x, y: loss(x, y),
            r"needs its distance map and got none",
        ),
        (
            lambda: VNetDiceCESkeletonRecallLoss(to_onehot_y=True),
            lambda loss, x, y: loss(x, y, skeleton=torch.zeros(2, 1, 4, 4, 3, dtype=torch.uint8)),
            r"skeleton has shape 2x1x4x4x3 but the input 2x3x4x4x4 needs 2x1x4x4x4",
        ),
        (
            lambda: VNetDiceCESkeletonRecallLoss(to_onehot_y=True),
            lambda loss, x, y: loss(x, y, skeleton=torch.full((2, 1, 4, 4, 4), 3, dtype=torch.uint8)),
            r"skeleton holds labels in \[3, 3\] but the input has 3 classes",
        ),
        (
            lambda: VNetDiceCEBoundaryLoss(to_onehot_y=True),
            lambda loss, x, y: loss(x, y, distance=torch.full((2, 3, 4, 4, 4), float("nan"))),
            r"the structure map \(distance=, or the channels packed behind the label\) contains NaN or inf",
        ),
        (
            lambda: VNetDiceCEBoundaryLoss(to_onehot_y=True),
            lambda loss, x, y: loss(x, y, distance=torch.zeros(2, 3, 4, 4, 4, dtype=torch.long)),
            r"distance has dtype torch.int64; it holds floating point distances",
        ),
        (
            lambda: VNetDiceCESkeletonRecallLoss(to_onehot_y=True, lambda_skel=-1.0),
            None,
            r"lambda_skel=-1.0: a term's weight must be >= 0",
        ),
    ],
)
def test_bad_structure_maps_are_refused_by_name(make, call, match):
    x, y = torch.randn(2, 3, 4, 4, 4), torch.randint(0, 3, (2, 1, 4, 4, 4))
    with pytest.raises(LossInputError, match=match):
        call(make(), x, y)


def test_all_lambdas_zero_is_refused():
    with pytest.raises(LossInputError, match=r"lambda_dice=0 and lambda_ce=0 and lambda_skel=0"):
        VNetDiceCESkeletonRecallLoss(lambda_dice=0.0, lambda_ce=0.0, lambda_skel=0.0)
