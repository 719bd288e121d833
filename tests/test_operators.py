"""The fused statistics as PyTorch operators: registration checks, torch.compile(fullgraph=True),
torch.export, and the public backend choice."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest
import torch

import monai_gdl
from monai_gdl import SudreGeneralizedDiceLoss, VNetDiceLoss, get_backend, set_backend, use_backend


def _sample_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 40, generator=g)
    labels = torch.randint(0, 3, (2, 1, 40), generator=g)
    soft = torch.rand(2, 3, 40, generator=g)
    mask = torch.rand(2, 1, 40, generator=g) > 0.3
    return [
        (x, labels, None, "softmax", True, True, False, "none", 0.0, "auto"),
        (x, labels, mask, "softmax", True, False, False, "softmax", 0.0, "eager"),
        (x, soft, mask, "sigmoid", False, False, True, "sigmoid", 2.0, "auto"),
        (x.double(), soft.double(), None, "sigmoid", False, True, False, "none", 0.0, "auto"),
        (x, labels, mask, "softmax", True, False, False, "softmax", 2.0, "auto"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_operator_registration_passes_opcheck(case):
    """PyTorch's own checker: schema, fake (meta) implementation, autograd registration, dispatch."""
    args = list(_sample_inputs()[case])
    args[0] = args[0].clone().requires_grad_(True)
    torch.library.opcheck(torch.ops.monai_gdl.fused_sums.default, tuple(args))


def _network_and_loss(net, loss_fn, image, target):
    return loss_fn(net(image), target)


def _step(forward, net, loss_fn, image, target):
    """A training step: the (compiled) forward with the loss; AOTAutograd compiles its backward."""
    value = forward(net, loss_fn, image, target)
    value.backward()
    return value.detach()


@pytest.mark.parametrize(
    "make_loss,label_map",
    [
        (lambda: VNetDiceLoss(softmax=True, to_onehot_y=True), True),
        (lambda: SudreGeneralizedDiceLoss(softmax=True, to_onehot_y=True, batch=True), True),
        (lambda: VNetDiceLoss(softmax=True, squared_pred=False, weight=[1.0, 2.0, 3.0]), False),
        (lambda: SudreGeneralizedDiceLoss(sigmoid=True), False),
        (lambda: monai_gdl.VNetDiceCELoss(to_onehot_y=True, label_smoothing=0.1), True),
        (lambda: monai_gdl.SudreGeneralizedDiceFocalLoss(sigmoid=True, batch=True), False),
    ],
)
def test_training_step_compiles_with_fullgraph_no_break_no_warning(make_loss, label_map, caplog):
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 3, padding=1)
    loss_fn = make_loss()
    image = torch.randn(2, 1, 10, 9, 8)
    labels = torch.randint(0, 3, (2, 1, 10, 9, 8))
    target = labels if label_map else torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).float()
    eager_value = _step(_network_and_loss, net, loss_fn, image, target)
    eager_grad = net.weight.grad.clone()
    net.zero_grad()
    torch._dynamo.reset()
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error")  # a graph-break or tracing warning fails the test
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # PyTorch's own (inductor uses torch.jit)
        compiled = torch.compile(_network_and_loss, fullgraph=True)
        compiled_value = _step(compiled, net, loss_fn, image, target)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    torch.testing.assert_close(compiled_value, eager_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net.weight.grad, eager_grad, rtol=1e-4, atol=1e-6)


def test_a_compiled_step_still_validates_values_at_run_time():
    """The value scans are an operator too: a compiled step refuses labels out of range."""
    net = torch.nn.Conv3d(1, 3, 3, padding=1)
    loss_fn = VNetDiceLoss(softmax=True, to_onehot_y=True)
    labels = torch.randint(0, 3, (1, 1, 6, 6, 6))
    labels[0, 0, 0, 0, 0] = 7
    torch._dynamo.reset()
    with pytest.raises(monai_gdl.LossInputError, match=r"labels in \[0, 7\]"):
        _step(torch.compile(_network_and_loss, fullgraph=True), net, loss_fn, torch.randn(1, 1, 6, 6, 6), labels)


class _SegmentationWithLoss(torch.nn.Module):
    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.net = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.loss = loss

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(self.net(image), target)


@pytest.mark.parametrize(
    "loss",
    [
        VNetDiceLoss(softmax=True, to_onehot_y=True),
        SudreGeneralizedDiceLoss(softmax=True, to_onehot_y=True),
        monai_gdl.VNetDiceCELoss(to_onehot_y=True),
    ],
)
def test_torch_export_of_a_module_calling_the_loss(loss):
    model = _SegmentationWithLoss(loss)
    image, labels = torch.randn(2, 1, 8, 8, 8), torch.randint(0, 4, (2, 1, 8, 8, 8))
    exported = torch.export.export(model, (image, labels))
    ops = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "monai_gdl.fused_sums.default" in ops
    image2, labels2 = torch.randn(2, 1, 8, 8, 8), torch.randint(0, 4, (2, 1, 8, 8, 8))
    torch.testing.assert_close(exported.module()(image2, labels2), model(image2, labels2))


def test_backend_choice_is_a_public_api():
    previous = get_backend()
    with use_backend("eager"):
        assert get_backend() == "eager"
        with use_backend("compile"):
            assert get_backend() == "compile"
        assert get_backend() == "eager"
    assert get_backend() == previous
    with pytest.raises(ValueError, match=r"backend='fast'; use one of"):
        set_backend("fast")
    with pytest.raises(RuntimeError), use_backend("eager"):
        raise RuntimeError("restored even on error")
    assert get_backend() == previous


@pytest.mark.parametrize(
    "variable,value",
    [("MONAI_GDL_BACKEND", "fast"), ("MONAI_GDL_CHUNK_ELEMENTS", "lots"), ("MONAI_GDL_CHUNK_ELEMENTS", "0")],
)
def test_a_bad_environment_variable_is_an_error_naming_it(variable, value):
    out = subprocess.run(
        [sys.executable, "-c", "import monai_gdl"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, variable: value},
    )
    assert out.returncode != 0
    assert f"environment variable {variable}={value!r}" in out.stderr.strip().splitlines()[-1]


def test_double_backward_says_to_use_the_reference_path():
    x = torch.randn(2, 3, 6, 6, 6, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 6, 6, 6))
    value = VNetDiceLoss(softmax=True, to_onehot_y=True)(x, labels)
    (grad,) = torch.autograd.grad(value, x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"second derivatives.*implementation='reference'"):
        torch.autograd.grad(grad.sum(), x)
    reference = VNetDiceLoss(softmax=True, to_onehot_y=True, implementation="reference")(x, labels)
    (grad,) = torch.autograd.grad(reference, x, create_graph=True)
    (second,) = torch.autograd.grad(grad.sum(), x)  # the fix works
    assert torch.isfinite(second).all()
