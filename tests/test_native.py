"""The native C kernel: the dtypes and layouts it takes, where it steps aside, and how it is built."""

from __future__ import annotations

import pytest
import torch

from monai_gdl import LossInputError, VNetDiceLoss, kernels, use_backend
from monai_gdl.kernels import native
from monai_gdl.kernels.contract import LOGIT_ROWS
from monai_gdl.kernels.reference import backward_chunk, forward_chunk

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler for the native CPU kernel")


def _native_and_reference(
    x, target, mask, activation, label_map, squared, grads, soft=False, voxel_term="none", gamma=0.0
):
    """(stats, grad) from the C kernel and from the float64 reference chunk math; ``grads`` the upstream
    gradients of (I, P) or of (I, P, F, Q)."""
    upstream = torch.stack([*grads, *[torch.zeros_like(grads[0])] * (len(LOGIT_ROWS) - len(grads))])
    options = (activation, label_map, squared, soft, voxel_term, gamma)
    got = native.forward(x, target, mask, *options)
    got_grad = native.backward(upstream, x, target, mask, *options)
    dense = target if label_map else target.double()
    want = forward_chunk(x.double(), dense, mask, *options)
    want_grad = backward_chunk(x.double(), dense, mask, upstream.double()[..., None], *options)
    return got, got_grad, want, want_grad


def _assert_matches(got, got_grad, want, want_grad):
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "label_dtype", [torch.uint8, torch.bool, torch.int8, torch.int16, torch.int32, torch.int64, torch.float32]
)
def test_label_dtypes_and_labels_outside_the_classes(label_dtype):
    """Labels outside 0..C-1 (ignore_index 255, -1, 2.5) match no class, as in the reference. int8 and int16
    are what nnU-Net's data loader hands."""
    g = torch.Generator().manual_seed(1)
    c = 2 if label_dtype == torch.bool else 5
    x = torch.randn(2, c, 1000, generator=g)
    labels = torch.randint(0, c, (2, 1, 1000), generator=g)
    if label_dtype == torch.float32:
        labels = labels.float()
        labels[0, 0, :7] = 2.5
        labels[1, 0, :5] = -1.0
        labels[1, 0, 5:9] = float("nan")
    elif label_dtype == torch.bool:
        labels = labels.bool()
    else:
        labels[0, 0, :11] = 255 if label_dtype == torch.uint8 else 7
        if label_dtype != torch.uint8:
            labels[1, 0, :3] = -1
        labels = labels.to(label_dtype)
    reference_labels = labels.long() if label_dtype != torch.float32 else labels
    grads = (torch.randn(2, c, generator=g), torch.randn(2, c, generator=g))
    got, got_grad, want, want_grad = _native_and_reference(x, labels, None, "softmax", True, True, grads)
    if label_dtype == torch.float32:
        want = forward_chunk(x.double(), reference_labels, None, "softmax", True, True, False)
    _assert_matches(got, got_grad, want, want_grad)
    assert float(got[3].sum()) < 2000 or label_dtype == torch.bool  # the odd labels were not counted


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    ("activation", "voxel_term", "gamma", "label_map"),
    [
        ("softmax", "softmax", 0.0, True),
        ("softmax", "softmax", 2.0, True),  # a whole gamma: products instead of exp/log
        ("softmax", "softmax", 1.0, False),
        ("softmax", "softmax", 3.0, True),
        ("softmax", "softmax", 1.5, False),
        ("sigmoid", "sigmoid", 0.0, True),
        ("sigmoid", "sigmoid", 2.0, False),
        ("softmax", "sigmoid", 0.0, True),  # the sigmoid term from the softmax's exps (exp(x) = e^(x - max) e^max)
        ("softmax", "sigmoid", 0.0, False),
        ("softmax", "sigmoid", 2.0, True),  # gamma 2 as one product
        ("softmax", "sigmoid", 3.0, True),
        ("softmax", "sigmoid", 1.5, True),  # not whole: exp(gamma log s)
        ("sigmoid", "sigmoid", 3.0, True),
        ("none", "sigmoid", 0.5, False),
    ],
)
def test_voxel_terms_every_dtype_and_layout(dtype, channels_last, activation, voxel_term, gamma, label_map):
    """The compound losses' CE / BCE / focal sums and gradient, fused into the Dice passes, against the
    float64 chunk math (whose closed-form gradient test_fused checks against autograd)."""
    g = torch.Generator().manual_seed(7)
    x = (3 * torch.randn(2, 7, 1500, generator=g)).to(dtype)
    if channels_last:
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    target = torch.randint(0, 7, (2, 1, 1500), generator=g) if label_map else torch.rand(2, 7, 1500, generator=g)
    mask = torch.rand(2, 1, 1500, generator=g) > 0.2
    grads = tuple(torch.randn(2, 7, generator=g) for _ in range(4))
    got, got_grad, want, want_grad = _native_and_reference(
        x, target, mask, activation, label_map, False, grads, voxel_term=voxel_term, gamma=gamma
    )
    assert got_grad.stride() == x.stride()
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=2e-5, atol=1e-3)
    rounding = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(got_grad.double(), want_grad.to(dtype).double(), rtol=rounding, atol=1e-5)


@pytest.mark.parametrize(("gamma", "label_map"), [(0.0, True), (0.0, False), (2.0, True), (3.0, True), (1.5, True)])
def test_sigmoid_term_beside_softmax_at_extreme_logits(gamma, label_map):
    """Beside a softmax Dice the sigmoid term takes exp(x) from the softmax's exp(x - max) where a tile's
    largest logit is at most 40, and its own exp elsewhere: logits from -150 to 180, tiles of both kinds
    and tiles whose max sits at the bound, against the float64 chunk math."""
    g = torch.Generator().manual_seed(11)
    x = torch.empty(2, 7, 3000).uniform_(-150.0, 40.0, generator=g)
    x[:, :, 2000:] = 60 * torch.randn(2, 7, 1000, generator=g)
    x[0, 3, 100] = 40.0
    target = torch.randint(0, 7, (2, 1, 3000), generator=g) if label_map else torch.rand(2, 7, 3000, generator=g)
    grads = tuple(torch.randn(2, 7, generator=g) for _ in range(4))
    got, got_grad, want, want_grad = _native_and_reference(
        x, target, None, "softmax", label_map, False, grads, voxel_term="sigmoid", gamma=gamma
    )
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=2e-5, atol=1e-3)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid", "none"])
def test_input_dtypes_and_activations_with_mask(dtype, activation):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, 777, generator=g)
    if activation == "none":
        x = torch.rand(3, 6, 777, generator=g)
    x = x.to(dtype)
    soft = torch.rand(3, 6, 777, generator=g)
    mask = torch.rand(3, 1, 777, generator=g) > 0.4
    grads = (torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g))
    got, got_grad, want, want_grad = _native_and_reference(
        x, soft, mask.view(torch.uint8), activation, False, True, grads
    )
    assert got_grad.dtype == dtype
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-3)
    rounding = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(got_grad.double(), want_grad.to(dtype).double(), rtol=rounding, atol=1e-5)


def test_threaded_split_equals_single_thread(monkeypatch):
    """Work split over threads by voxel range gives the same sums and gradient as one thread."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, 40_003, generator=g)
    labels = torch.randint(0, 7, (2, 1, 40_003), generator=g)
    grads = (torch.randn(2, 7, generator=g), torch.randn(2, 7, generator=g))
    results = []
    for minimum, threads in ((1 << 40, 1), (1, 3)):
        monkeypatch.setattr(native, "PARALLEL_MIN_ELEMENTS", minimum)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            results.append(_native_and_reference(x, labels, None, "softmax", True, False, grads)[:2])
        finally:
            torch.set_num_threads(previous)
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)


def test_soft_intersection_with_mask_and_ties():
    """The min(p, g) intersection and its gradient (1 below the target, 1/2 at a tie) against float64."""
    g = torch.Generator().manual_seed(8)
    probs = torch.rand(2, 4, 999, generator=g)
    soft = torch.rand(2, 4, 999, generator=g)
    soft[:, :, :100] = probs[:, :, :100]  # exact ties
    mask = (torch.rand(2, 1, 999, generator=g) > 0.2).view(torch.uint8)
    grads = (torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g))
    for activation, x in (("none", probs), ("sigmoid", torch.randn(2, 4, 999, generator=g))):
        _assert_matches(*_native_and_reference(x, soft, mask, activation, False, False, grads, soft=True))


def test_nan_logits_are_caught_through_the_native_statistics():
    x = torch.randn(1, 3, 8, 8)
    x[0, 1, 2, 2] = float("nan")
    with use_backend("native"), pytest.raises(LossInputError, match="NaN or inf"):
        VNetDiceLoss(softmax=True, to_onehot_y=True)(x, torch.randint(0, 3, (1, 1, 8, 8)))


def test_loss_on_native_backend_matches_monai():
    """The whole loss through the C kernel against MONAI's DiceLoss (an independent implementation)."""
    from monai.losses import DiceLoss

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 20, 18, 17, generator=g)
    labels = torch.randint(0, 4, (2, 1, 20, 18, 17), generator=g)
    values, grads = [], []
    for loss in (
        VNetDiceLoss(softmax=True, to_onehot_y=True),
        DiceLoss(softmax=True, to_onehot_y=True, squared_pred=True),
    ):
        xx = x.clone().requires_grad_(True)
        with use_backend("native"):
            value = loss(xx, labels)
            value.backward()
        values.append(value.detach())
        grads.append(xx.grad)
    torch.testing.assert_close(values[0], values[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-8)


def test_empty_volume_matches_eager():
    """No voxels (the losses refuse such input; the kernel itself stays safe): the same zero statistics as the
    eager path, and a zero-size gradient."""
    from monai_gdl.kernels import fused_sums

    x = torch.randn(1, 2, 0, requires_grad=True)
    labels = torch.zeros(1, 1, 0, dtype=torch.long)
    values = []
    for backend in ("native", "eager"):
        stats, _, _ = fused_sums(x, labels, activation="softmax", label_map=True, squared=True, backend=backend)
        (grad,) = torch.autograd.grad(stats.prediction.sum() + stats.intersection.sum(), x, allow_unused=True)
        values.append(torch.stack(list(stats)))
        assert grad is None or grad.shape == x.shape
    assert torch.equal(values[0], values[1]) and not values[0].any()


@pytest.mark.parametrize("classes", [1, 150])
def test_extreme_class_counts_use_valid_tiles(classes):
    """C=1 (sigmoid, 1024-voxel tiles) and C=150 (16-voxel tiles) against the reference, with a ragged tail."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, classes, 1037, generator=g)
    activation = "sigmoid" if classes == 1 else "softmax"
    target = (
        (torch.rand(2, 1, 1037, generator=g) > 0.5).long()
        if classes == 1
        else torch.randint(0, classes, (2, 1, 1037), generator=g)
    )
    if classes == 1:
        target = target.float()  # one-hot of a single foreground channel
    grads = (torch.randn(2, classes, generator=g), torch.randn(2, classes, generator=g))
    _assert_matches(*_native_and_reference(x, target, None, activation, classes != 1, True, grads))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_channels_last_logits_and_permuted_one_hot(dtype, activation):
    """A channels_last_3d network output and a ``one_hot(...).permute`` target, through the whole loss,
    against the reference path on the same (strided) tensors; the gradient keeps the logits' layout."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 5, 9, 10, 11, generator=g).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    labels = torch.randint(0, 5, (2, 9, 10, 11), generator=g)
    onehot = torch.nn.functional.one_hot(labels, 5).permute(0, 4, 1, 2, 3).float()
    assert not x.is_contiguous() and not onehot.is_contiguous()
    with use_backend("auto"):
        assert kernels.resolve_backend(x.reshape(2, 5, -1), onehot.reshape(2, 5, -1), None, False) == "native"
    for target, to_onehot_y in ((labels[:, None], True), (onehot, False)):
        results = {}
        for impl in ("auto", "reference"):
            xx = x.clone().requires_grad_(True)
            loss = VNetDiceLoss(
                softmax=activation == "softmax",
                sigmoid=activation == "sigmoid",
                to_onehot_y=to_onehot_y,
                implementation=impl,
            )
            value = loss(xx, target)
            value.backward()
            results[impl] = (value.detach(), xx.grad)
        (v_fused, g_fused), (v_ref, g_ref) = results["auto"], results["reference"]
        assert g_fused.stride() == x.stride()
        torch.testing.assert_close(v_fused, v_ref, rtol=1e-5, atol=1e-6)
        tol = dict(rtol=1e-4, atol=1e-7) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-5)
        torch.testing.assert_close(g_fused.float(), g_ref.float(), **tol)


@pytest.mark.parametrize("target_dtype", [torch.bool, torch.uint8])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("voxel_term", ["none", "sigmoid"])
def test_bool_one_hot_targets_run_natively(target_dtype, channels_last, voxel_term):
    """nnU-Net's region targets are bool one-hot tensors: the kernel reads them as 0/1 rows (no float copy),
    with the same values and gradients as the float64 reference on the float target, masked or not."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 1200, generator=g)
    target = (torch.rand(2, 3, 1200, generator=g) > 0.6).to(target_dtype)
    if channels_last:
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
        target = target.transpose(1, 2).contiguous().transpose(1, 2)
    mask = (torch.rand(2, 1, 1200, generator=g) > 0.25).view(torch.uint8)
    with use_backend("auto"):
        assert kernels.resolve_backend(x, target, mask, False) == "native"
    grads = tuple(torch.randn(2, 3, generator=g) for _ in range(4 if voxel_term != "none" else 2))
    options = ("sigmoid", False, False, False, voxel_term, 0.0)
    upstream = torch.stack([*grads, *[torch.zeros_like(grads[0])] * (len(LOGIT_ROWS) - len(grads))])
    got = native.forward(x, target, mask, *options)
    got_grad = native.backward(upstream, x, target, mask, *options)
    want = forward_chunk(x.double(), target.double(), mask, *options)
    want_grad = backward_chunk(x.double(), target.double(), mask, upstream.double()[..., None], *options)
    _assert_matches(got, got_grad, want, want_grad)
