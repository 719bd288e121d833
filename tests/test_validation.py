"""Every bad input gets a clear error naming the argument, what was seen and the fix."""

from __future__ import annotations

import pytest
import torch
from conftest import needs_monai_ignore_index, needs_native, run_python
from monai.losses import DiceLoss

from monai_gdl import (
    LossInputError,
    SudreGeneralizedDiceLoss,
    VNetDiceCELoss,
    VNetDiceLoss,
)
from monai_gdl.losses import validation


def _labels(b=2, c=3, s=(6, 6, 6)):
    return torch.randint(0, c, (b, 1, *s))


def _onehot(labels, c=3):
    return torch.nn.functional.one_hot(labels[:, 0], c).movedim(-1, 1).float()


@pytest.mark.parametrize(
    "make,match",
    [
        (
            lambda: (torch.randn(2, 3, 6, 6, 6), torch.rand(2, 3, 6, 6)),
            r"target has shape 2x3x6x6 but input has 2x3x6x6x6",
        ),
        (
            lambda: (torch.randn(2, 3, 6, 6, 6), _labels()),
            r"1 channel: it looks like a label map, so pass to_onehot_y=True",
        ),
        (lambda: (torch.randn(2, 3, 6, 6, 6), _onehot(_labels()) * 2), r"target values span \[0, 2\].*\[0, 1\]"),
        (
            lambda: (torch.randn(2, 3, 6, 6, 6), torch.randint(0, 2, (2, 3, 6, 6, 6)).float()),
            r"multi-hot.*sigmoid=True",
        ),
        (lambda: (torch.randint(0, 3, (2, 3, 6, 6, 6)), _labels()), r"input has dtype torch.int64.*floating point"),
        (lambda: (torch.full((2, 3, 6, 6, 6), float("nan")), _onehot(_labels())), r"input .* contains NaN or inf"),
        (lambda: (torch.randn(6, 6), torch.rand(6, 6)), r"input has shape 6x6; expected B x C x spatial"),
        (lambda: (torch.randn(2, 1, 6, 6), torch.rand(2, 1, 6, 6).round()), r"softmax over one channel is always 1"),
    ],
)
def test_bad_dense_inputs_raise(make, match):
    x, t = make()
    with pytest.raises(LossInputError, match=match):
        VNetDiceLoss(softmax=True)(x, t)


def test_logits_without_activation_are_rejected():
    x = torch.randn(2, 3, 6, 6, 6) * 3
    with pytest.raises(LossInputError, match=r"softmax=False and sigmoid=False.*look like logits"):
        SudreGeneralizedDiceLoss()(x, _onehot(_labels()))


def test_label_out_of_range_names_max_and_fix():
    labels = _labels()
    labels[0, 0, 0, 0, 0] = 5
    with pytest.raises(
        LossInputError, match=r"labels in \[0, 5\] but input has 3 channels.*out_channels/num_classes to 6"
    ):
        VNetDiceLoss(softmax=True, to_onehot_y=True)(torch.randn(2, 3, 6, 6, 6), labels)


def test_fractional_label_map_is_rejected():
    labels = _labels().float()
    labels[0, 0, 0, 0, 0] = 0.5
    with pytest.raises(LossInputError, match=r"non-integer values.*nearest"):
        VNetDiceLoss(softmax=True, to_onehot_y=True)(torch.randn(2, 3, 6, 6, 6), labels)


def test_onehot_passed_with_to_onehot_y():
    with pytest.raises(LossInputError, match=r"looks one-hot, so pass to_onehot_y=False"):
        VNetDiceLoss(softmax=True, to_onehot_y=True)(torch.randn(2, 3, 6, 6, 6), _onehot(_labels()))


def test_ignore_index_is_allowed_beyond_num_classes():
    labels = _labels()
    labels[:, :, :2] = 255
    value = VNetDiceLoss(softmax=True, to_onehot_y=True, ignore_index=255)(torch.randn(2, 3, 6, 6, 6), labels)
    assert 0 <= float(value) <= 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(softmax=True, sigmoid=True), r"choose at most one activation"),
        (dict(reduction="avg"), r"reduction='avg' is not supported"),
        (dict(smooth_nr=1.0, smooth_dr=1e-5), r"smooth_nr=1.0 > smooth_dr=1e-05"),
        (dict(smooth_nr=-1.0), r"must be >= 0"),
    ],
)
def test_bad_options_raise_at_construction(kwargs, match):
    with pytest.raises(LossInputError, match=match):
        VNetDiceLoss(**kwargs)


def test_bad_gdl_options():
    with pytest.raises(LossInputError, match=r"w_type='cube'"):
        SudreGeneralizedDiceLoss(w_type="cube")
    with pytest.raises(LossInputError, match=r"absent_class='inf'"):
        SudreGeneralizedDiceLoss(absent_class="inf")


def test_weight_length_and_sign():
    x, labels = torch.randn(2, 3, 6, 6, 6), _labels()
    with pytest.raises(LossInputError, match=r"weight has 3 entries but 2 classes are scored"):
        VNetDiceLoss(softmax=True, to_onehot_y=True, include_background=False, weight=[1, 2, 3])(x, labels)
    with pytest.raises(LossInputError, match=r"weights must be finite, >= 0"):
        VNetDiceLoss(softmax=True, to_onehot_y=True, weight=[1, -2, 3])(x, labels)


def test_mask_shape_and_ignore_index_on_onehot():
    x, labels = torch.randn(2, 3, 6, 6, 6), _labels()
    with pytest.raises(LossInputError, match=r"mask has shape 2x3x6x6x6; expected B x 1 x spatial"):
        VNetDiceLoss(softmax=True, to_onehot_y=True)(x, labels, mask=torch.ones(2, 3, 6, 6, 6))
    with pytest.raises(LossInputError, match=r"ignore_index=255 needs a label map target.*pass mask="):
        VNetDiceLoss(softmax=True, ignore_index=255)(x, _onehot(labels))


def test_validation_can_be_switched_off():
    x = torch.randn(2, 3, 6, 6, 6) * 3
    VNetDiceLoss(validate=False)(x.clamp(0, 1), _onehot(_labels()))  # no check run, no error


def test_validation_reads_in_chunks(monkeypatch):
    """A volume bigger than one check chunk is still fully checked (the bad voxel is in the last chunk)."""
    monkeypatch.setattr(validation, "CHECK_CHUNK_ELEMENTS", 1000)
    labels = _labels(s=(20, 20, 20))
    labels[-1, 0, -1, -1, -1] = 7
    with pytest.raises(LossInputError, match=r"labels in \[0, 7\]"):
        VNetDiceLoss(softmax=True, to_onehot_y=True)(torch.randn(2, 3, 20, 20, 20), labels)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float32, torch.int32, torch.int16, torch.int8, torch.uint8])
@pytest.mark.parametrize("ignore_index", [None, 9])
@pytest.mark.parametrize("where", [(0, 0, 0, 0, 0), (1, 0, 2, 3, 4), (-1, 0, -1, -1, -1)])
def test_label_scan_finds_a_bad_value_in_any_piece(monkeypatch, dtype, ignore_index, where):
    """The piecewise label scan reads every value, of every label dtype, around ignored voxels and on a target
    whose samples are not next to each other in memory (a slice of a bigger batch)."""
    monkeypatch.setattr(validation, "CHECK_CHUNK_ELEMENTS", 7)
    batch = _labels(b=4, s=(5, 6, 7)).to(dtype)
    if ignore_index is not None:
        batch[:, :, ::2] = ignore_index
    labels = batch[::2]
    assert not labels.is_contiguous()
    loss = VNetDiceLoss(softmax=True, to_onehot_y=True, ignore_index=ignore_index)
    x = torch.randn(2, 3, 5, 6, 7)
    loss(x, labels)  # fine as it is
    labels[where] = 5
    with pytest.raises(LossInputError, match=r"labels in \[0, 5\]"):
        loss(x, labels)
    if dtype.is_floating_point:
        labels[where] = 1.5
        with pytest.raises(LossInputError, match=r"non-integer values"):
            loss(x, labels)


def _in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t`` (``B x C x spatial``) stored contiguous, as every other sample of a bigger batch, or channels-last."""
    if layout == "batch_slice":  # every other sample of a batch twice the size
        return torch.stack([t, torch.zeros_like(t)], 1).flatten(0, 1)[::2]
    if layout == "channels_last":
        return t.movedim(1, -1).contiguous().movedim(-1, 1)
    return t.contiguous()


@pytest.mark.parametrize("layout", ["contiguous", "batch_slice", "channels_last"])
@pytest.mark.parametrize("where", [(0, 0, 0, 0, 0), (1, 2, 3, 1, 4), (-1, -1, -1, -1, -1)])
def test_value_scans_find_a_bad_value_anywhere_in_any_layout(monkeypatch, layout, where):
    """Probabilities (no activation) with a NaN, an inf or a logit, and a one-hot target with a multi-hot voxel, at
    the first, a middle or the last voxel, in each layout the scans read without copying."""
    monkeypatch.setattr(validation, "CHECK_CHUNK_ELEMENTS", 7)
    probabilities = torch.softmax(torch.randn(2, 3, 5, 6, 7), 1)
    onehot = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 5, 6, 7)), 3).movedim(-1, 1).float()
    VNetDiceLoss()(_in_layout(probabilities, layout), _in_layout(onehot, layout))  # fine as they are
    for value, match in [
        (float("nan"), "contains NaN or inf"),
        (float("inf"), "contains NaN or inf"),
        (1.5, r"input values span \[.*, 1.5\]"),
    ]:
        bad = probabilities.clone()
        bad[where] = value
        with pytest.raises(LossInputError, match=match):
            VNetDiceLoss()(_in_layout(bad, layout), _in_layout(onehot, layout))
    multi_hot = onehot.clone()
    multi_hot[(where[0], slice(None), *where[2:])] = 1.0
    with pytest.raises(LossInputError, match=r"channels sum to 3"):
        VNetDiceLoss(softmax=True)(torch.randn(2, 3, 5, 6, 7), _in_layout(multi_hot, layout))


@pytest.mark.parametrize("layout", ["contiguous", "batch_slice", "channels_last"])
def test_value_scans_read_every_layout_in_place(layout):
    """A full reduction over a view that is not one dense block makes PyTorch copy it: the scans must not, so their
    largest allocation stays far below the tensors (measured with PyTorch's profiler)."""
    from torch.profiler import ProfilerActivity, profile

    x = _in_layout(torch.softmax(torch.randn(2, 4, 32, 32, 32), 1), layout)
    labels = _in_layout(torch.randint(0, 4, (2, 1, 32, 32, 32)), layout)
    onehot = _in_layout(torch.nn.functional.one_hot(labels[:, 0], 4).movedim(-1, 1).float(), layout)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        validation.check_loss_values(x, labels, True, False, False)
        validation.check_loss_values(x, onehot, False, True, True)
    largest = max(event.cpu_memory_usage for event in prof.key_averages())
    assert largest <= 4 * validation.CHECK_CHUNK_ELEMENTS + 1024, (largest, labels.nbytes, x.nbytes)


def test_multi_hot_bool_target_rejected_with_softmax():
    target = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    target[:, 0] = True
    target[0, 1, 0, 0] = True  # one voxel with two classes
    with pytest.raises(LossInputError, match=r"channels sum to 2"):
        VNetDiceLoss(softmax=True)(torch.randn(1, 3, 4, 4), target)


def test_nan_in_target_is_rejected():
    target = _onehot(_labels())
    target[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(LossInputError, match=r"target values span \[nan"):
        VNetDiceLoss(softmax=True)(torch.randn(2, 3, 6, 6, 6), target)


def test_negative_label_is_named():
    labels = _labels()
    labels[0, 0, 0, 0, 0] = -1
    with pytest.raises(LossInputError, match=r"negative label \(-1\).*ignore_index"):
        VNetDiceLoss(softmax=True, to_onehot_y=True)(torch.randn(2, 3, 6, 6, 6), labels)


def test_single_channel_with_to_onehot_y_points_at_to_onehot_y_false():
    x = torch.randn(2, 1, 6, 6)
    labels = torch.randint(0, 2, (2, 1, 6, 6))
    with pytest.raises(LossInputError, match=r"to_onehot_y=True with a single-channel input.*Pass to_onehot_y=False"):
        VNetDiceLoss(sigmoid=True, to_onehot_y=True)(x, labels)
    value = VNetDiceLoss(sigmoid=True)(x, labels.float())  # the fix works
    assert 0 <= float(value) <= 1


def test_scalar_weight_is_refused_unless_it_means_what_it_means_in_monai():
    from monai.losses import DiceLoss

    with pytest.raises(LossInputError, match=r"weight=2 is a single number.*rescale_weight=False"):
        VNetDiceLoss(softmax=True, weight=2.0)
    x, labels = torch.randn(2, 3, 6, 6, 6, dtype=torch.float64), _labels()
    ours = VNetDiceLoss(softmax=True, to_onehot_y=True, weight=2.0, rescale_weight=False)(x, labels)
    theirs = DiceLoss(softmax=True, to_onehot_y=True, squared_pred=True, weight=2.0)(x, labels)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)  # MONAI one-hot encodes in float32


def test_a_misspelt_option_is_a_type_error():
    with pytest.raises(TypeError, match="softmaxx"):
        VNetDiceLoss(softmaxx=True)
    with pytest.raises(TypeError, match="w_typ"):
        SudreGeneralizedDiceLoss(w_typ="simple")


def test_shape_checks_run_even_with_validate_false():
    """validate=False skips the scans over values only: a wrong target shape is still an error, not a crash."""
    x = torch.randn(2, 3, 6, 6, 6)
    with pytest.raises(LossInputError, match=r"to_onehot_y=True expects a label map target of shape 2x1x6x6x6"):
        VNetDiceLoss(softmax=True, to_onehot_y=True, validate=False)(x, torch.rand(2, 6, 6, 6))
    with pytest.raises(LossInputError, match=r"target has shape 2x3x6x6 but input has 2x3x6x6x6"):
        SudreGeneralizedDiceLoss(softmax=True, validate=False)(x, torch.rand(2, 3, 6, 6))


# 1. validate=False keeps every shape/dtype/layout check: a wrong target is an error, never SIGSEGV or NaN.
@needs_native
def test_validate_false_with_wrong_shapes_is_an_error_not_a_crash():
    result = run_python("""
        import torch
        from monai_gdl import LossInputError, VNetDiceLoss, SudreGeneralizedDiceLoss, VNetDiceCELoss
        cases = 0
        for size in (5, 16, 33, 64):
            x = torch.randn(2, 3, size, size, size)
            float_map = torch.randint(0, 3, (2, 1, size, size, size)).float()
            for loss in (VNetDiceLoss(softmax=True, validate=False), SudreGeneralizedDiceLoss(softmax=True,
                         validate=False), VNetDiceCELoss(validate=False)):
                for target in (float_map, float_map[:, :, :-1], torch.zeros(2, 3, size, size, 1),
                               torch.zeros(1, 3, size, size, size)):
                    try:
                        loss(x, target)
                    except LossInputError:
                        cases += 1
            labels = torch.randint(0, 3, (2, 1, size, size, size))
            for bad in (labels[:, :, :-1], labels.expand(2, 3, -1, -1, -1), labels[:1]):
                try:
                    VNetDiceLoss(softmax=True, to_onehot_y=True, validate=False)(x, bad)
                except LossInputError:
                    cases += 1
        print("refused", cases)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused 60" in result.stdout


# 4. Empty inputs, torch.func transforms, double backward.
@pytest.mark.parametrize(
    "make",
    [
        lambda: VNetDiceLoss(softmax=True, to_onehot_y=True),
        lambda: SudreGeneralizedDiceLoss(softmax=True, to_onehot_y=True),
        lambda: VNetDiceCELoss(to_onehot_y=True),
    ],
)
@pytest.mark.parametrize("shape", [(0, 3, 8, 8, 8), (2, 3, 0, 8, 8), (2, 3, 8, 0)])
def test_an_empty_batch_or_volume_is_a_loss_input_error(make, shape):
    x = torch.randn(shape)
    y = torch.zeros((shape[0], 1, *shape[2:]), dtype=torch.long)
    with pytest.raises(LossInputError, match=r"no voxels to score"):
        make()(x, y)


# 5. ignore_index equal to a scored class: refused; ignoring an unscored background is allowed.
@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: VNetDiceLoss(softmax=True, to_onehot_y=True, **kw),
        lambda **kw: SudreGeneralizedDiceLoss(softmax=True, to_onehot_y=True, **kw),
        lambda **kw: VNetDiceCELoss(to_onehot_y=True, **kw),
    ],
)
@pytest.mark.parametrize("ignore_index,include_background", [(2, True), (1, False), (0, True)])
def test_ignore_index_of_a_scored_class_is_refused(make, ignore_index, include_background):
    x = torch.randn(2, 3, 6, 6)
    y = torch.randint(0, 3, (2, 1, 6, 6))
    with pytest.raises(LossInputError, match=rf"ignore_index={ignore_index} is one of the classes the loss scores"):
        make(ignore_index=ignore_index, include_background=include_background)(x, y)


@needs_monai_ignore_index
def test_ignoring_the_unscored_background_equals_monai():
    x = torch.randn(2, 3, 6, 7, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 1, 6, 7, 5))
    ours = VNetDiceLoss(
        softmax=True, to_onehot_y=True, include_background=False, ignore_index=0, squared_pred=False, soft_label=False
    )(x, y)
    theirs = DiceLoss(softmax=True, to_onehot_y=True, include_background=False, ignore_index=0)(x, y)
    torch.testing.assert_close(ours, theirs)
