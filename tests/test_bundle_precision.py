"""Mixed precision and channels-last for the bundle's engines (``monai_gdl.bundle.precision``): bfloat16 autocast
on a CPU (MONAI's engines autocast on CUDA only), one line where the CPU has no native bfloat16, MONAI's own path on
CUDA, and the losses trained in bfloat16 close to float32."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.networks.nets import UNet

from monai_gdl import VNetDiceCELoss
from monai_gdl.bundle import precision
from monai_gdl.bundle.checks import ArgumentError


class _Recorder(torch.nn.Module):
    """A 1x1x1 convolution that records the dtype and layout of what it was given."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(in_channels, 3, 1)
        self.seen: list[tuple[torch.dtype, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.dtype, x.stride(1) == 1))  # channels innermost
        return self.conv(x)


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: True)


def test_engines_autocast_only_on_cuda():
    assert precision.engine_amp(True, "cuda:0") and precision.engine_amp("true", torch.device("cuda"))
    assert not precision.engine_amp(True, "cpu") and not precision.engine_amp(False, "cuda")
    with pytest.raises(ArgumentError, match="amp='maybe' is not a boolean"):
        precision.engine_amp("maybe", "cpu")


def test_amp_on_cpu_runs_the_network_in_bfloat16(native_bf16):
    net = _Recorder()
    out = precision.MixedPrecisionInferer(SimpleInferer(), "cpu", amp=True)(torch.randn(2, 1, 4, 4, 4), net)
    assert out.dtype == torch.bfloat16  # autocast ran the convolution in bfloat16
    plain = precision.MixedPrecisionInferer(SimpleInferer(), "cpu", amp=False)(torch.randn(2, 1, 4, 4, 4), net)
    assert plain.dtype == torch.float32


def test_inference_config_is_float32_unless_told_and_training_autocasts(native_bf16):
    """inference.json keeps float32 (its label maps equal the float32 TorchScript export's); --amp True autocasts it;
    train.json (training, validation, evaluation) autocasts by default. The docs say so."""
    from monai.bundle import ConfigParser

    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

    def inferer_dtype(files, key, **overrides):
        parser = ConfigParser()
        parser.read_config([os.path.join(configs, f) for f in files])
        parser.update({"device": "$torch.device('cpu')", **overrides})
        return parser.get_parsed_content(key).dtype

    assert inferer_dtype(["inference.json"], "inferer") is None
    assert inferer_dtype(["inference.json"], "inferer", amp=True) == torch.bfloat16
    assert inferer_dtype(["train.json"], "train#inferer") == torch.bfloat16
    assert inferer_dtype(["train.json", "evaluate.json"], "validate#inferer") == torch.bfloat16


def test_a_cpu_without_native_bfloat16_stays_in_float32_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: False)
    monkeypatch.setattr(precision, "_said", set())
    with caplog.at_level(logging.WARNING, logger="monai_gdl.bundle.precision"):
        first = precision.MixedPrecisionInferer(SimpleInferer(), "cpu", amp=True)
        precision.MixedPrecisionInferer(SlidingWindowInferer(roi_size=(4, 4, 4)), "cpu", amp=True)
    assert first.dtype is None
    assert first(torch.randn(1, 1, 4, 4, 4), _Recorder()).dtype == torch.float32
    lines = [r.getMessage() for r in caplog.records if "no native bfloat16" in r.getMessage()]
    assert len(lines) == 1 and "training in float32" in lines[0], lines


def test_cuda_leaves_autocast_to_monais_engines():
    inferer = precision.MixedPrecisionInferer(SimpleInferer(), "cuda", amp=True)
    assert inferer.dtype is None  # SupervisedTrainer(amp=engine_amp(...)) autocasts in float16 with its GradScaler


def test_channels_last_reaches_the_network_and_sliding_window_keeps_float32_output(native_bf16):
    net = _Recorder(in_channels=2)
    precision.MixedPrecisionInferer(SimpleInferer(), "cpu", channels_last=True)(torch.randn(2, 2, 4, 4, 4), net)
    assert net.seen == [(torch.float32, True)]  # autocast casts inside the convolution, not the input
    window = SlidingWindowInferer(roi_size=(4, 4, 4), sw_batch_size=2)
    out = precision.MixedPrecisionInferer(window, "cpu", amp=True, channels_last=True)(torch.randn(1, 2, 8, 8, 4), net)
    assert out.shape == (1, 3, 8, 8, 4) and out.dtype == torch.float32  # MONAI's float32 output buffer


def test_prepare_network_stores_5d_weights_channels_last():
    net = precision.prepare_network(UNet(3, 1, 3, (4, 8), (2,), num_res_units=1), "cpu", channels_last=True)
    weights = [p for p in net.parameters() if p.ndim == 5]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in weights)
    plain = precision.prepare_network(UNet(3, 1, 3, (4, 8), (2,), num_res_units=1), "cpu", channels_last=False)
    assert all(p.is_contiguous() for p in plain.parameters())


def test_a_bfloat16_training_step_tracks_float32(native_bf16):
    """The same UNet step in float32 and under the bundle's bfloat16 path: loss within bfloat16's rounding
    (the fused loss sums in float32), gradients pointing the same way."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 16, 16, 16, generator=g)
    y = torch.randint(0, 3, (2, 1, 16, 16, 16), generator=g)
    loss_fn = VNetDiceCELoss(softmax=True, to_onehot_y=True)
    results = []
    for amp, channels_last in ((False, False), (True, True)):
        torch.manual_seed(0)
        net = precision.prepare_network(UNet(3, 1, 3, (8, 16), (2,), num_res_units=1), "cpu", channels_last)
        logits = precision.MixedPrecisionInferer(SimpleInferer(), "cpu", amp, channels_last)(x, net)
        loss = loss_fn(logits, y)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in net.parameters()])
        results.append((logits.dtype, loss.item(), grad))
    (dtype32, loss32, grad32), (dtype16, loss16, grad16) = results
    assert dtype32 == torch.float32 and dtype16 == torch.bfloat16
    assert abs(loss16 - loss32) < 1e-2 * abs(loss32), (loss16, loss32)
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.99


@pytest.mark.slow
def test_a_compiled_network_trains_and_saves_like_the_plain_one():
    """``--compile True``: the forward pass goes through torch.compile (Dynamo counts the frames it compiles),
    outputs and gradients match the plain network's, and the state dict keeps the plain keys, so checkpoints load
    into an uncompiled network (evaluation, inference, export)."""
    import torch._dynamo

    torch._dynamo.reset()
    x = torch.randn(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    nets = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        nets.append(precision.prepare_network(UNet(3, 1, 3, (4, 8), (2,), num_res_units=1), "cpu", False, compile_))
    plain, compiled = nets
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    out_plain, out_compiled = plain(x), compiled(x)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > before  # it did compile
    torch.testing.assert_close(out_compiled, out_plain, rtol=1e-4, atol=1e-5)
    out_plain.square().mean().backward()
    out_compiled.square().mean().backward()
    for p, q in zip(plain.parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-6)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    UNet(3, 1, 3, (4, 8), (2,), num_res_units=1).load_state_dict(compiled.state_dict())
    with pytest.raises(ArgumentError, match="compile='sometimes'"):
        precision.prepare_network(UNet(3, 1, 3, (4, 8), (2,)), "cpu", False, "sometimes")
