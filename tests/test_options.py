"""Options (``losses/options.py``, ``losses/terms.py``): each written once, checked once when built, refused by
name when wrong; constructors' signatures derived from them; attributes that re-check when set."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle

import pytest
import torch
from conftest import skip_without_triton
from monai.losses import DiceCELoss, DiceLoss, GeneralizedDiceLoss

import monai_gdl
from monai_gdl import (
    LossInputError,
    SudreGeneralizedDiceCELoss,
    SudreGeneralizedDiceFocalLoss,
    SudreGeneralizedDiceLoss,
    VNetDiceBCELoss,
    VNetDiceCELoss,
    VNetDiceFocalLoss,
    VNetDiceLoss,
    generalized_dice_loss,
    vnet_dice_loss,
)
from monai_gdl.kernels import REGISTRY
from monai_gdl.losses import DiceOptions

ALL_LOSSES = [
    (VNetDiceLoss, dict(softmax=True)),
    (SudreGeneralizedDiceLoss, dict(softmax=True)),
    (VNetDiceCELoss, dict()),
    (SudreGeneralizedDiceCELoss, dict()),
    (VNetDiceBCELoss, dict()),
    (VNetDiceFocalLoss, dict(softmax=True)),
    (SudreGeneralizedDiceFocalLoss, dict(softmax=True)),
]
BOOLEAN_OPTIONS = [f.name for f in dataclasses.fields(DiceOptions) if f.type == "bool"]


@pytest.mark.parametrize("cls,base", ALL_LOSSES)
@pytest.mark.parametrize("name", BOOLEAN_OPTIONS)
@pytest.mark.parametrize("value", ["false", "False", "0", 0, 1, None])
def test_a_boolean_option_refuses_a_non_bool_naming_it(cls, base, name, value):
    """``include_background="false"`` is truthy: it would silently keep the background scored."""
    with pytest.raises(LossInputError, match=rf"^{name}=.*takes True or False"):
        cls(**{**base, name: value})


@pytest.mark.parametrize("function", [vnet_dice_loss, generalized_dice_loss])
def test_the_functional_losses_check_their_options_the_same_way(function):
    x, y = torch.randn(1, 2, 4, 4), torch.randint(0, 2, (1, 1, 4, 4))
    with pytest.raises(LossInputError, match=r"^batch='false'"):
        function(x, y, softmax=True, to_onehot_y=True, batch="false")
    with pytest.raises(LossInputError, match=r"implementation='fast' is not supported"):
        function(x, y, softmax=True, to_onehot_y=True, implementation="fast")


@pytest.mark.parametrize("cls,base", ALL_LOSSES)
@pytest.mark.parametrize("option,value", [("implementation", "fast"), ("reduction", "avg")])
def test_an_unknown_string_option_is_refused_at_construction(cls, base, option, value):
    with pytest.raises(LossInputError, match=rf"{option}='{value}' is not supported; use one of"):
        cls(**{**base, option: value})


@pytest.mark.parametrize("cls", [SudreGeneralizedDiceLoss, SudreGeneralizedDiceCELoss])
@pytest.mark.parametrize("option", ["w_type", "absent_class", "all_absent"])
def test_an_unknown_gdl_policy_is_refused(cls, option):
    with pytest.raises(LossInputError, match=rf"{option}='nope' is not supported"):
        cls(softmax=True, **{option: "nope"})


@pytest.mark.parametrize("cls,base", ALL_LOSSES)
def test_signature_keeps_monai_names_and_is_what_the_options_define(cls, base):
    """The constructor's parameters are exactly the fields of the loss's option dataclasses (plus ``weight``):
    a new option is added in one place. The first four are positional as in MONAI's ``DiceLoss``."""
    params = inspect.signature(cls).parameters
    kind = cls.kind
    parts = [DiceOptions, kind.dice_term] + ([kind.voxel_term] if kind.voxel_term else [])
    defined = {f.name for part in parts for f in dataclasses.fields(part)}
    if kind.voxel_term is None:
        defined -= {f.name for f in dataclasses.fields(kind.dice_term) if f.name.startswith("lambda_")}
    else:
        defined -= {"other_act"}
    assert set(params) - {"weight"} == defined
    assert [p for p in params if params[p].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD] == [
        "include_background",
        "to_onehot_y",
        "sigmoid",
        "softmax",
    ]
    with pytest.raises(TypeError):
        cls(True, False, False, True, True)  # beyond MONAI's first four: keyword only, never silently shifted


@pytest.mark.parametrize(
    "ours,theirs",
    [(VNetDiceLoss, DiceLoss), (SudreGeneralizedDiceLoss, GeneralizedDiceLoss), (VNetDiceCELoss, DiceCELoss)],
)
def test_the_first_four_positional_arguments_mean_what_they_mean_in_monai(ours, theirs):
    assert list(inspect.signature(ours).parameters)[:4] == list(inspect.signature(theirs).parameters)[:4]


def test_setting_an_attribute_checks_it_again_and_updates_the_options():
    loss = VNetDiceLoss(softmax=True, to_onehot_y=True)
    loss.batch = True
    assert loss.batch is True and loss.options.dice.batch is True
    with pytest.raises(LossInputError, match=r"reduction='avg'"):
        loss.reduction = "avg"
    assert loss.reduction == "mean"  # the refused value left the loss as it was
    with pytest.raises(LossInputError, match=r"^include_background='false'"):
        loss.include_background = "false"
    with pytest.raises(dataclasses.FrozenInstanceError):
        loss.options.dice.batch = False  # type: ignore[misc]


def test_compound_attributes_reach_their_term():
    loss = VNetDiceFocalLoss(softmax=True, to_onehot_y=True, gamma=1.0)
    loss.gamma = 3.0
    assert loss.options.voxel_term.gamma == 3.0
    loss.lambda_focal = 0.5
    assert loss.options.voxel_term.lambda_focal == 0.5
    with pytest.raises(LossInputError, match=r"lambda_dice=0 and lambda_focal=0"):
        VNetDiceFocalLoss(softmax=True, lambda_dice=0.0, lambda_focal=0.0)


def test_a_loss_survives_deepcopy_pickle_and_state_dict():
    loss = VNetDiceCELoss(to_onehot_y=True, weight=[1.0, 2.0, 3.0], batch=True)
    x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 1, 4, 4))
    want = loss(x, y)
    for other in (copy.deepcopy(loss), pickle.loads(pickle.dumps(loss))):
        torch.testing.assert_close(other(x, y), want)
        assert other.batch is True and other.options == loss.options
    assert repr(loss) == "VNetDiceCELoss(to_onehot_y=True, batch=True)"


@pytest.mark.parametrize("backend", ["native", "eager", "compile", "triton"])
def test_implementation_names_a_backend_for_one_loss(monkeypatch, backend):
    """``implementation`` speaks the backends' vocabulary: a backend name runs that backend for this loss."""
    if backend == "native" and not monai_gdl.kernels.native.available():
        pytest.skip("no C compiler")
    if backend == "triton":
        skip_without_triton()
    ran = []
    original = REGISTRY[backend]

    def spy(*args):
        ran.append(backend)
        return original.forward(*args)

    monkeypatch.setitem(REGISTRY, backend, dataclasses.replace(original, forward=spy))
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    y = torch.randint(0, 3, (2, 1, 6, 6))
    value = VNetDiceCELoss(to_onehot_y=True, implementation=backend)(x, y)
    reference = VNetDiceCELoss(to_onehot_y=True, implementation="reference")(x, y)
    torch.testing.assert_close(value, reference, rtol=1e-5, atol=1e-6)
    assert ran == [backend]
    (grad,) = torch.autograd.grad(value, x)
    (grad_ref,) = torch.autograd.grad(reference, x)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-6)


def test_a_fused_implementation_with_other_act_is_refused_at_construction():
    with pytest.raises(LossInputError, match=r"implementation='native' does not support other_act"):
        VNetDiceLoss(other_act=torch.tanh, implementation="native")
    VNetDiceLoss(other_act=torch.tanh)  # auto switches to the reference path


@pytest.mark.parametrize("bad", [{"activation": "softmx"}, {"voxel_term": "focal"}])
def test_the_operator_refuses_an_unknown_activation_or_voxel_term(bad):
    """An unknown string was once read as "none" (activation) or as the sigmoid term (voxel term)."""
    args = dict(activation="softmax", voxel_term="none")
    args.update(bad)
    x, y = torch.randn(1, 2, 5), torch.randint(0, 2, (1, 1, 5))
    with pytest.raises((ValueError, RuntimeError), match=rf"{next(iter(bad))}='{next(iter(bad.values()))}'"):
        torch.ops.monai_gdl.fused_sums(
            x, y, None, args["activation"], True, True, False, args["voxel_term"], 0.0, "eager"
        )
    from monai_gdl.kernels.reference import forward_chunk

    with pytest.raises(ValueError):
        forward_chunk(x, y, None, args["activation"], True, True, False, args["voxel_term"], 0.0)
