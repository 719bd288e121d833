"""The fused streaming statistics (every backend) against the reference, and their memory bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import needs_triton, skip_without_triton
from hypothesis import given, settings
from hypothesis import strategies as st

from monai_gdl import VNetDiceCELoss, VNetDiceLoss, use_backend, vnet_dice_loss
from monai_gdl.kernels import chunked, fused_sums, native
from monai_gdl.kernels.reference import reference_statistics, reference_voxel_term
from monai_gdl.losses.sums import activate

needs_native = pytest.mark.skipif(not native.available(), reason="no C compiler for the native CPU kernel")

CASES = [
    # shape, activation, target kind, squared, masked, soft-label intersection
    ((2, 3, 7, 5, 3), "softmax", "label", True, False, False),
    ((2, 3, 7, 5, 3), "softmax", "label", False, True, False),
    ((3, 4, 11, 13), "softmax", "onehot", True, False, False),
    ((2, 1, 9, 8, 7), "sigmoid", "onehot", True, False, False),  # C = 1 with sigmoid
    ((2, 5, 17), "sigmoid", "soft", True, True, False),
    ((1, 3, 10, 10), "none", "soft", False, False, False),
    ((2, 6, 5, 5, 5), "softmax", "label_absent", True, False, False),  # classes 3..5 absent
    ((2, 4, 9, 7), "softmax", "soft", False, True, True),
    ((3, 3, 23), "sigmoid", "soft", False, False, True),
    ((1, 3, 10, 10), "none", "tied", False, False, True),  # p == g at every voxel: the half-gradient ties
]


def _make(shape, activation, kind, masked, dtype, seed=0):
    """Logits (probabilities for ``none``), target and mask; ``tied``: the target equals the input."""
    g = torch.Generator().manual_seed(seed)
    b, c = shape[:2]
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if activation == "none":
        x = torch.rand(shape, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c if kind != "label_absent" else 3, (b, 1, *shape[2:]), generator=g)
    if kind.startswith("label"):
        target = labels
    elif kind == "onehot":
        target = torch.nn.functional.one_hot(labels[:, 0], c).movedim(-1, 1).to(torch.float64)
        if c == 1:
            target = (torch.rand(shape, generator=g) > 0.5).to(torch.float64)
    elif kind == "tied":
        target = x.to(dtype).to(torch.float64)
    else:
        target = torch.rand(shape, generator=g, dtype=torch.float64)
    mask = (torch.rand(b, 1, *shape[2:], generator=g) > 0.3) if masked else None
    return x.to(dtype), target, mask


def _stats_and_grad(fn, x, target, mask, activation, kind, squared, soft=False):
    xx = x.clone().requires_grad_(True)
    stats = fn(xx, target, mask, activation, kind.startswith("label"), squared, soft)
    w = torch.linspace(0.5, 1.5, stats.intersection.numel(), dtype=torch.float64).view_as(stats.intersection)
    loss = (w * stats.intersection).sum() - (w.flip(0) * stats.prediction).sum()
    (grad,) = torch.autograd.grad(loss.to(torch.float64), xx)
    return [s.detach() for s in stats], grad


def _fused(x, target, mask, activation, label_map, squared, soft=False):
    stats, _, _ = fused_sums(
        x, target, activation=activation, label_map=label_map, squared=squared, soft=soft, mask=mask
    )
    return stats


def _reference(x, target, mask, activation, label_map, squared, soft=False):
    probs = activate(x, softmax=activation == "softmax", sigmoid=activation == "sigmoid")
    return reference_statistics(probs, target, label_map=label_map, squared=squared, soft=soft, mask=mask)


# Every case on the eager, native and Triton backends; the compiled backend on three (each one compiles).
BACKEND_CASES = [(b, c) for b in ("eager", "native", "triton") for c in CASES] + [("compile", c) for c in CASES[:3]]
FLOAT32_BACKENDS = ("native", "triton")


def _for_backend(backend, x, target, mask):
    """The native kernel takes float32 one-hot/soft targets (float64 ones go to the other backends);
    ``_make``'s one-hot is channels-last (``one_hot(...).movedim``), which it also takes."""
    if backend == "native":
        if not native.available():
            pytest.skip("no C compiler for the native CPU kernel")
        if target.is_floating_point():
            target = target.float()
    return x, target, mask


@pytest.mark.parametrize(
    "backend,case", BACKEND_CASES, ids=[f"{b}-{c[1]}-{c[2]}-sq{c[3]}-m{c[4]}-s{c[5]}" for b, c in BACKEND_CASES]
)
def test_fused_matches_reference(monkeypatch, backend, case):
    shape, activation, kind, squared, masked, soft = case
    dtype = torch.float32 if backend in FLOAT32_BACKENDS else torch.float64
    if backend == "triton":
        skip_without_triton()
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 97)  # chunks that do not divide the volume
    x, target, mask = _for_backend(backend, *_make(shape, activation, kind, masked, dtype))
    with use_backend(backend):
        got = _stats_and_grad(_fused, x, target, mask, activation, kind, squared, soft)
    want = _stats_and_grad(_reference, x, target, mask, activation, kind, squared, soft)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for a, b in zip(got[0], want[0]):
        torch.testing.assert_close(a, b, **tol)
    torch.testing.assert_close(got[1], want[1], **tol)


TERM_CASES = [
    # shape, activation, target kind, masked, voxel term, gamma
    ((2, 3, 7, 5, 3), "softmax", "label", False, "softmax", 0.0),  # Dice + CE
    ((2, 4, 9, 7), "softmax", "label", True, "softmax", 2.0),  # softmax focal, ignored voxels
    ((3, 4, 11, 13), "softmax", "onehot", True, "softmax", 0.0),
    ((2, 5, 17), "sigmoid", "soft", True, "sigmoid", 0.0),  # Dice + BCE on soft targets
    ((2, 3, 6, 6, 6), "sigmoid", "label", False, "sigmoid", 2.0),  # sigmoid focal on a label map
    ((2, 4, 9, 7), "softmax", "onehot", False, "sigmoid", 2.0),  # MONAI DiceFocalLoss(softmax=True)
    ((2, 1, 9, 8), "sigmoid", "onehot", False, "sigmoid", 0.5),  # one channel, fractional gamma
]
TERM_BACKEND_CASES = [(b, c) for b in ("eager", "native", "triton") for c in TERM_CASES] + [
    ("compile", TERM_CASES[0]),
    ("compile", TERM_CASES[4]),
]


@pytest.mark.parametrize(
    "backend,case", TERM_BACKEND_CASES, ids=[f"{b}-{c[1]}-{c[2]}-m{c[3]}-{c[4]}-g{c[5]}" for b, c in TERM_BACKEND_CASES]
)
def test_voxel_term_matches_autograd_reference(monkeypatch, backend, case):
    """The compound losses' fused CE / BCE / focal sums and the gradient through them and the Dice sums
    against plain PyTorch (log_softmax, softplus, logsigmoid) differentiated by autograd."""
    shape, activation, kind, masked, voxel_term, gamma = case
    dtype = torch.float32 if backend in FLOAT32_BACKENDS else torch.float64
    if backend == "triton":
        skip_without_triton()
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 97)
    x, target, mask = _for_backend(backend, *_make(shape, activation, kind, masked, dtype))
    label_map = kind.startswith("label")

    def run(fused: bool):
        xx = x.clone().requires_grad_(True)
        if fused:
            with use_backend(backend):
                stats, sums, _ = fused_sums(
                    xx,
                    target,
                    activation=activation,
                    label_map=label_map,
                    squared=False,
                    mask=mask,
                    voxel_term=voxel_term,
                    gamma=gamma,
                )
        else:
            stats = _reference(xx, target, mask, activation, label_map, False)
            sums = reference_voxel_term(xx, target, label_map=label_map, voxel_term=voxel_term, gamma=gamma, mask=mask)
        w = torch.linspace(0.5, 1.5, stats.intersection.numel(), dtype=torch.float64).view_as(stats.intersection)
        loss = (
            w * stats.intersection
            + w.flip(0) * stats.prediction
            + w * sums.on_target
            - 0.3 * w.flip(0) * sums.off_target
        ).sum()
        (grad,) = torch.autograd.grad(loss.to(torch.float64), xx)
        return [s.detach() for s in (*stats, *sums)], grad

    got, want = run(True), run(False)
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for a, b in zip(got[0], want[0]):
        torch.testing.assert_close(a.to(b.dtype), b, **tol)
    torch.testing.assert_close(got[1], want[1], **tol)


@pytest.mark.parametrize("backend", ["eager", "native", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(backend, dtype):
    if backend == "triton":
        skip_without_triton()
    x, labels, _ = _for_backend(backend, *_make((2, 4, 16, 16, 8), "softmax", "label", False, dtype))
    xx = x.clone().requires_grad_(True)
    with use_backend(backend):
        stats = _fused(xx, labels, None, "softmax", True, True)
        (grad,) = torch.autograd.grad(stats.intersection.sum() - 0.5 * stats.prediction.sum(), xx)
    assert stats.intersection.dtype == torch.float32
    want = _reference(x.float(), labels, None, "softmax", True, True)
    for a, b in zip(stats, want):
        torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-3)
    assert grad.dtype == dtype
    xf = x.float().requires_grad_(True)
    ref = _reference(xf, labels, None, "softmax", True, True)
    (want_grad,) = torch.autograd.grad(ref.intersection.sum() - 0.5 * ref.prediction.sum(), xf)
    torch.testing.assert_close(grad.float(), want_grad, rtol=2e-2, atol=1e-4)  # gradient rounded to the input dtype


def test_loss_backends_agree_on_large_odd_volume(monkeypatch):
    """Whole loss (value and gradient) of the default path vs the reference on a volume spanning many chunks."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 37, 29, 23, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 1, 37, 29, 23), generator=g)
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 4099)
    results = []
    for impl in ("fused", "reference"):
        xx = x.clone().requires_grad_(True)
        value = vnet_dice_loss(xx, labels, softmax=True, to_onehot_y=True, batch=True, implementation=impl)
        results.append((value.detach(), torch.autograd.grad(value, xx)[0]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-10, atol=1e-12)


_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from monai_gdl import set_backend, vnet_dice_loss
    impl, size, backend = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    set_backend(backend)
    torch.manual_seed(0)
    x = torch.randn(1, 8, size, size, size)
    y = torch.randint(0, 8, (1, 1, size, size, size))
    def step():
        xx = x.clone().requires_grad_(True)
        vnet_dice_loss(xx, y, softmax=True, to_onehot_y=True, implementation=impl, validate=False).backward()
    step()
    xx = x.clone().requires_grad_(True)
    rss = lambda key: int([l.split()[1] for l in open("/proc/self/status") if l.startswith(key)][0]) * 1024
    open("/proc/self/clear_refs", "w").write("5")
    before = rss("VmRSS:")
    vnet_dice_loss(xx, y, softmax=True, to_onehot_y=True, implementation=impl, validate=False).backward()
    print(json.dumps({"extra": rss("VmHWM:") - before - xx.numel() * 4, "input": x.numel() * 4}))
    """
)


def _peak_extra(impl: str, size: int, backend: str = "eager") -> dict:
    env = dict(
        os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", MONAI_GDL_CHUNK_ELEMENTS=str(1 << 18)
    )
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, impl, str(size), backend],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux peak-RSS reset")
@pytest.mark.parametrize("backend", ["eager", pytest.param("native", marks=needs_native)])
def test_fused_path_allocates_no_volume_sized_temporaries(backend):
    """Peak extra memory of fwd+bwd (beyond input and gradient): flat in the volume for fused, O(volume) for
    reference."""
    small, large = _peak_extra("fused", 64, backend), _peak_extra("fused", 128, backend)  # 8x the voxels
    reference = _peak_extra("reference", 128)
    assert large["extra"] < 0.15 * large["input"], (small, large)  # measured: about 4 MiB of 64 MiB
    assert large["extra"] < 2 * small["extra"] + (4 << 20), (small, large)
    assert reference["extra"] > large["input"], reference  # the measurement can tell them apart


@settings(max_examples=100, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 6)).flatmap(
        lambda bc: st.lists(st.integers(1, 9), min_size=1, max_size=3).map(lambda sp: (*bc, *sp))
    ),
    activation=st.sampled_from(["softmax", "sigmoid", "none"]),
    kind=st.sampled_from(["label", "onehot", "soft"]),
    squared=st.booleans(),
    masked=st.booleans(),
    chunk=st.sampled_from([1, 7, 64, 1 << 19]),
    seed=st.integers(0, 1000),
    soft=st.booleans(),
    backend=st.sampled_from(["eager", "native"] if native.available() else ["eager"]),
)
def test_fused_matches_reference_float32_random_shapes(
    shape, activation, kind, squared, masked, chunk, seed, soft, backend
):
    """float32 on random shapes and chunk sizes: statistics and gradients agree to float32 rounding."""
    if activation == "softmax" and shape[1] == 1:
        activation = "sigmoid"
    previous_chunk = chunked.CHUNK_ELEMENTS
    chunked.CHUNK_ELEMENTS = chunk
    try:
        x, target, mask = _for_backend(backend, *_make(shape, activation, kind, masked, torch.float32, seed=seed))
        with use_backend(backend):
            got = _stats_and_grad(_fused, x, target, mask, activation, kind, squared, soft)
    finally:
        chunked.CHUNK_ELEMENTS = previous_chunk
    want = _stats_and_grad(_reference, x.double(), target, mask, activation, kind, squared, soft)
    for a, b in zip(got[0], want[0]):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1].double(), want[1], rtol=1e-4, atol=1e-6)


def test_compiled_failure_falls_back_to_eager():
    calls = []

    def broken(*args):
        calls.append("compiled")
        raise RuntimeError("no compiler for this variant")

    run = chunked._eager_fallback(broken, lambda *args: "eager")
    assert run(1) == "eager" and run(2) == "eager"
    assert calls == ["compiled"]  # tried once, then eager for good


@pytest.mark.parametrize(
    "implementation",
    ["eager", pytest.param("native", marks=needs_native), pytest.param("triton", marks=needs_triton), "reference"],
)
def test_float_labels_one_step_off_an_integer_are_their_class_with_validate_false(implementation):
    """A float32 label map stored a float step off its integers (1.0000001, 0.99999994) was read as "no class"
    by some backends with validate=False: those voxels silently left every sum. Every backend rounds now."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 7, generator=g)
    labels = torch.randint(0, 4, (2, 1, 6, 7), generator=g)
    labels[0, 0, 0, :3] = 255  # ignored
    off = labels.float()
    off[..., ::2] = torch.nextafter(off[..., ::2], torch.tensor(1e9))
    off[..., 1::2] = torch.nextafter(off[..., 1::2], torch.tensor(-1e9))
    assert not torch.equal(off, off.round())
    for make in (
        lambda **kw: VNetDiceLoss(softmax=True, to_onehot_y=True, ignore_index=255, **kw),
        lambda **kw: VNetDiceCELoss(to_onehot_y=True, ignore_index=255, **kw),
    ):
        want = make(implementation="reference")(x, labels)
        got = make(implementation=implementation, validate=False)(x, off)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
