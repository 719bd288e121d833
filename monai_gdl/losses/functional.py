"""Functional losses: options checked, the volume reduced to sums, the terms' formulas applied.

The steps never mix: :mod:`~monai_gdl.losses.options` / :mod:`~monai_gdl.losses.terms` check the
options once, :mod:`~monai_gdl.losses.sums` checks the tensors and reduces the volume to
per-(sample, class) sums (the fused operator of :mod:`monai_gdl.kernels`, or the plain-PyTorch
reference), and each term's formula (:mod:`~monai_gdl.losses.formulas`) turns them into the loss.
:func:`compute_loss` is the one forward every loss module and function runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from monai_gdl.kernels import DiceStatistics
from monai_gdl.losses.options import DiceOptions, Implementation
from monai_gdl.losses.sums import all_reduce_statistics, scored_sums, volume_sums
from monai_gdl.losses.terms import GeneralizedDice, LossKind, LossOptions, Tversky, VNetDice
from monai_gdl.losses.validation import LossInputError

__all__ = [
    "FOCAL_TVERSKY",
    "GENERALIZED_DICE",
    "TVERSKY",
    "VNET_DICE",
    "all_reduce_statistics",
    "compute_loss",
    "dice_statistics",
    "generalized_dice_loss",
    "tversky_loss",
    "vnet_dice_loss",
]

VNET_DICE = LossKind("VNetDiceLoss", VNetDice)
GENERALIZED_DICE = LossKind("SudreGeneralizedDiceLoss", GeneralizedDice, defaults={"squared_pred": False})
TVERSKY = LossKind("SalehiTverskyLoss", Tversky)
#: Abraham and Khan's recommendation in MONAI's convention (``alpha`` weighs false positives): their
#: ``alpha = 0.7`` on false negatives is our ``beta``, their ``gamma = 4/3`` the exponent ``1/gamma = 0.75``.
FOCAL_TVERSKY = LossKind("FocalTverskyLoss", Tversky, defaults={"alpha": 0.3, "beta": 0.7, "gamma": 0.75})


def _check_weight_count(weight: torch.Tensor, expected: int, what: str) -> None:
    if weight.numel() != expected:
        raise LossInputError(f"weight has {weight.numel()} entries but {what} has {expected}; give one weight each.")


def compute_loss(
    options: LossOptions,
    weight: torch.Tensor | None,
    input: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    weight_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss described by ``options`` (checked) with class weights ``weight`` (checked): one fused pass
    for the Dice term, the voxel term and the structure term (whose map is ``weight_map``, or rides in the
    target), then ``lambda_dice * dice + lambda_voxel * voxel + lambda_map * map``."""
    dice, dice_term, voxel, structure = options.dice, options.dice_term, options.voxel_term, options.map_term
    if structure is not None and isinstance(input, torch.Tensor):
        target, weight_map = structure.split(options.name, input, target, weight_map, dice)
    elif weight_map is not None:
        raise LossInputError(f"{options.name} has no structure term; it takes no map (got one).")
    dice_weight = weight if dice_term.uses_class_weight else None
    if voxel is not None and isinstance(input, torch.Tensor):
        voxel.check_input(options.name, input)
        if weight is not None and voxel.weight_per_channel:
            _check_weight_count(weight, input.shape[1], f"input (shape {tuple(input.shape)}) channels")
            if dice_weight is not None and not dice.include_background:
                dice_weight = dice_weight[1:]
        elif weight is not None and dice_weight is None:
            _check_weight_count(weight, input.shape[1] - (0 if dice.include_background else 1), "the scored classes")
    voxel_term, gamma = voxel.kernel_term() if voxel is not None else ("none", 0.0)
    map_labels = structure is not None and structure.map_labels
    stats, term = scored_sums(
        input,
        target,
        mask,
        dice,
        weight=dice_weight,
        voxel_term=voxel_term,
        gamma=gamma,
        weight_map=weight_map,
        map_labels=map_labels,
    )
    value = dice_term.loss(stats, dice, dice_weight, input.ndim - 2)
    if voxel is None:
        return value
    value = options.dice_scale * value + options.voxel_scale * voxel.loss(term, dice, weight)
    if structure is None:
        return value
    return value + options.map_scale * structure.loss(term, dice)


def _functional(kind: LossKind) -> Callable[..., torch.Tensor]:
    """The functional form of a loss kind: ``loss(input, target, *, mask=None, **options)``."""

    def loss(
        input: torch.Tensor, target: torch.Tensor, *, mask: torch.Tensor | None = None, **options: Any
    ) -> torch.Tensor:
        checked, weight = kind.build(**options)
        return compute_loss(checked, weight, input, target, mask)

    tensors = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="torch.Tensor")
        for name in ("input", "target")
    ]
    keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in kind.signature.parameters.values()]
    mask = inspect.Parameter("mask", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="torch.Tensor | None")
    loss.__signature__ = inspect.Signature([*tensors, *keyword, mask], return_annotation="torch.Tensor")  # type: ignore[attr-defined]
    return loss


vnet_dice_loss = _functional(VNET_DICE)
vnet_dice_loss.__name__ = vnet_dice_loss.__qualname__ = "vnet_dice_loss"
vnet_dice_loss.__doc__ = """V-Net soft Dice loss; see :class:`monai_gdl.VNetDiceLoss` for the arguments and the math.

    Example:
        >>> import torch
        >>> from monai_gdl import vnet_dice_loss
        >>> logits = torch.zeros(1, 2, 4, 4)
        >>> labels = torch.zeros(1, 1, 4, 4, dtype=torch.long)
        >>> round(float(vnet_dice_loss(logits, labels, softmax=True, to_onehot_y=True)), 4)
        0.6
    """

generalized_dice_loss = _functional(GENERALIZED_DICE)
generalized_dice_loss.__name__ = generalized_dice_loss.__qualname__ = "generalized_dice_loss"
generalized_dice_loss.__doc__ = """Generalized Dice loss; see :class:`monai_gdl.SudreGeneralizedDiceLoss` for the
    arguments and the math.

    Example:
        >>> import torch
        >>> from monai_gdl import generalized_dice_loss
        >>> logits = torch.tensor([[[[4.0, -4.0]], [[-4.0, 4.0]]]])  # 1 x 2 x 1 x 2, confident and right
        >>> labels = torch.tensor([[[[0, 1]]]])
        >>> round(float(generalized_dice_loss(logits, labels, softmax=True, to_onehot_y=True)), 4)
        0.0003
    """


tversky_loss = _functional(TVERSKY)
tversky_loss.__name__ = tversky_loss.__qualname__ = "tversky_loss"
tversky_loss.__doc__ = """Tversky loss (focal with ``gamma != 1``); see :class:`monai_gdl.SalehiTverskyLoss` for the
    arguments and the math.

    Example:
        >>> import torch
        >>> from monai_gdl import tversky_loss
        >>> logits = torch.zeros(1, 2, 4, 4)  # p = 0.5: class 0 TP 8, FN 8; class 1 TP 0, FP 8
        >>> labels = torch.zeros(1, 1, 4, 4, dtype=torch.long)
        >>> round(float(tversky_loss(logits, labels, softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7)), 4)
        0.7059
    """


def dice_statistics(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    to_onehot_y: bool = False,
    softmax: bool = False,
    sigmoid: bool = False,
    other_act: Callable | None = None,
    squared: bool = False,
    soft_label: bool = True,
    ignore_index: int | None = None,
    mask: torch.Tensor | None = None,
    implementation: Implementation = "auto",
) -> DiceStatistics:
    """Per-(sample, class) sums of the activated ``input`` against ``target``, for all C channels (options
    checked, tensors not).

    ``soft_label``: the intersection of a dense target is ``sum(min(p, g))`` (equal to ``sum(p*g)`` on
    hard targets; label maps always use ``p*g``). ``implementation``: ``"auto"`` runs the fused
    operator wherever it applies (softmax, sigmoid or no activation; not inside ``torch.func``
    transforms), else the reference; ``"fused"`` requires it; ``"reference"`` forces plain PyTorch
    autograd; a backend name runs that backend. A soft target that requires grad gets its gradient on
    every path.

    Example:
        >>> import torch
        >>> from monai_gdl import dice_statistics
        >>> probs = torch.tensor([[[[0.25, 0.75]], [[0.75, 0.25]]]])  # 1 x 2 x 1 x 2
        >>> labels = torch.tensor([[[[1, 1]]]])
        >>> stats = dice_statistics(probs, labels, to_onehot_y=True)
        >>> stats.intersection.tolist(), stats.target_volume.tolist()
        ([[0.0, 1.0]], [[0.0, 2.0]])
    """
    options = DiceOptions(
        to_onehot_y=to_onehot_y,
        softmax=softmax,
        sigmoid=sigmoid,
        other_act=other_act,
        squared_pred=squared,
        soft_label=soft_label,
        ignore_index=ignore_index,
        implementation=implementation,
    )
    stats, _, _, _ = volume_sums(input, target, mask, options)
    return stats
