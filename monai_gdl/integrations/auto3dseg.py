"""Auto3DSeg: the fused Dice + CE as the segresnet template's loss, by overriding its ``loss`` key.

The segresnet template builds its loss with ``ConfigParser(config["loss"]).get_parsed_content()`` from
``hyper_parameters.yaml``, whose default is MONAI's ``DiceCELoss(include_background=True, squared_pred=True,
smooth_nr=0, smooth_dr=1e-5)`` with softmax and a one-hot-expanded label map (sigmoid and a multi-label
target when the run sets ``sigmoid: true``; then, with more than one channel, MONAI's ``DiceCELoss`` still
takes the softmax cross-entropy of the multi-label target, where the override takes the binary
cross-entropy of each channel), and wraps it in MONAI's ``DeepSupervisionLoss`` (its ``"exp"``
weights) over ``SegResNetDS``'s outputs. The same loss, fused, is :class:`~monai_gdl.VNetDiceCELoss` with
those settings (:class:`~monai_gdl.VNetDiceBCELoss` for sigmoid runs); ``DeepSupervisionLoss`` wraps it
unchanged (it interpolates the target to each output's size and calls the loss). Pass the block below as
``loss`` in the AutoRunner input or ``runner.set_training_params({"loss": ...})``::

    loss:
      _target_: monai_gdl.VNetDiceCELoss
      include_background: true
      squared_pred: true
      smooth_nr: 0
      smooth_dr: 1.0e-05
      softmax: true
      to_onehot_y: true
"""

from __future__ import annotations

from typing import Any

__all__ = ["segresnet_loss_config"]


def segresnet_loss_config(sigmoid: bool = False) -> dict[str, Any]:
    """The ``loss`` block for the segresnet template: its default ``DiceCELoss`` settings, fused."""
    common: dict[str, Any] = {"include_background": True, "squared_pred": True, "smooth_nr": 0, "smooth_dr": 1.0e-05}
    if sigmoid:
        return {"_target_": "monai_gdl.VNetDiceBCELoss", **common, "sigmoid": True}
    return {"_target_": "monai_gdl.VNetDiceCELoss", **common, "softmax": True, "to_onehot_y": True}
