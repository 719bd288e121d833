"""Auto3DSeg's segresnet template with the fused loss: the documented ``loss`` override, built by MONAI's
ConfigParser as the template builds it, wrapped in MONAI's DeepSupervisionLoss as the template wraps it, equals
the template's default DiceCELoss on what the template feeds (uint8 label maps, channels-last logits, AMP)."""

from __future__ import annotations

import pytest
import torch
import yaml
from monai.bundle import ConfigParser
from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceLoss

from monai_gdl import VNetDiceBCELoss, VNetDiceCELoss
from monai_gdl.integrations import auto3dseg

#: segresnet's hyper_parameters.yaml ``loss`` block (Project-MONAI/research-contributions, auto3dseg templates),
#: its references resolved for a softmax run and a sigmoid run.
TEMPLATE_DEFAULT = {"include_background": True, "squared_pred": True, "smooth_nr": 0, "smooth_dr": 1.0e-05}


def _documented_block() -> dict:
    """The YAML block the module docstring (and README) tells users to paste."""
    text = auto3dseg.__doc__.split("::", 1)[1]
    return yaml.safe_load(text)["loss"]


def test_the_documented_block_is_the_override():
    assert _documented_block() == auto3dseg.segresnet_loss_config()


def _segresnet_ds_outputs(g, channels, size, levels=3):
    """SegResNetDS-style outputs: full size first, halving; channels-last as the template runs them."""
    outputs = []
    for i in range(levels):
        s = [n // 2**i for n in size]
        x = torch.randn(2, channels, *s, generator=g).contiguous(memory_format=torch.channels_last_3d)
        outputs.append(x.requires_grad_(True))
    return outputs


def _run(loss, outputs, target):
    for o in outputs:
        o.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp_outputs = [o * 1.0 for o in outputs]  # the network's output under autocast (bf16 convolutions)
        value = DeepSupervisionLoss(loss)(amp_outputs, target)
    value.backward()
    return value.detach(), [o.grad.clone() for o in outputs]


@pytest.mark.parametrize("sigmoid", [False, True])
def test_configparser_builds_the_fused_loss_equal_to_the_template_default(sigmoid):
    ours = ConfigParser(auto3dseg.segresnet_loss_config(sigmoid)).get_parsed_content(instantiate=True)
    assert isinstance(ours, VNetDiceBCELoss if sigmoid else VNetDiceCELoss)
    if sigmoid:
        # MONAI's DiceCELoss takes BCE only for one channel; with several it applies the softmax CE to the
        # multi-label target. The override uses BCE per channel instead: compared with MONAI's Dice + BCE.
        dice = DiceLoss(**TEMPLATE_DEFAULT, sigmoid=True)

        def template(x, t):
            return dice(x, t) + torch.nn.functional.binary_cross_entropy_with_logits(x, t)
    else:
        template = DiceCELoss(**TEMPLATE_DEFAULT, softmax=True, to_onehot_y=True)
    g = torch.Generator().manual_seed(5 + sigmoid)
    outputs = _segresnet_ds_outputs(g, 3, (16, 12, 8))
    if sigmoid:
        target = (torch.rand(2, 3, 16, 12, 8, generator=g) > 0.6).to(torch.uint8)
    else:
        target = torch.randint(0, 3, (2, 1, 16, 12, 8), generator=g, dtype=torch.uint8)
    (v_ours, g_ours), (v_theirs, g_theirs) = _run(ours, outputs, target), _run(template, outputs, target.float())
    torch.testing.assert_close(v_ours, v_theirs, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
