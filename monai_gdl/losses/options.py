"""The options every Dice-family loss shares, as one frozen, typed object checked once.

:class:`DiceOptions` holds how the volume is read and reduced (activation, target form, smoothing,
batch pooling, reduction, the engine). The terms that add their own options (GDL weights, CE,
focal: :mod:`~monai_gdl.losses.terms`) are frozen dataclasses too; a loss is the combination
(:class:`~monai_gdl.losses.terms.LossOptions`). Every check of an option's value happens here, when
the object is built, and names the argument, the value seen and the fix. The helpers
:func:`check_flag`, :func:`check_choice`, :func:`check_number` are what the terms use for theirs.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import numpy as np
import torch

from monai_gdl.kernels import BACKENDS
from monai_gdl.losses.validation import LossInputError

__all__ = [
    "IMPLEMENTATIONS",
    "AbsentClass",
    "Activation",
    "AllAbsent",
    "DiceOptions",
    "Implementation",
    "Reduction",
    "WType",
    "check_choice",
    "check_class_weight",
    "check_flag",
    "check_number",
    "class_weight_tensor",
]

Reduction = Literal["mean", "sum", "none"]
#: ``"auto"``: the fused operator wherever it applies (the process's backend), else the reference;
#: ``"fused"``: require the fused operator; ``"reference"``: plain PyTorch autograd; a backend name
#: (``"native"``, ``"triton"``, ``"compile"``, ``"eager"``): the fused operator on that backend.
Implementation = Literal["auto", "fused", "reference", "native", "triton", "compile", "eager"]
IMPLEMENTATIONS: tuple[str, ...] = get_args(Implementation)
assert set(BACKENDS) - {"auto"} <= set(IMPLEMENTATIONS), "every backend is an implementation"
Activation = Literal["softmax", "sigmoid", "none", "other"]
#: Generalized Dice class weights and absent-class policies (:class:`~monai_gdl.losses.terms.GeneralizedDice`).
WType = Literal["square", "simple", "uniform"]
AbsentClass = Literal["max", "zero"]
AllAbsent = Literal["uniform", "zero"]


def check_flag(name: str, value: Any) -> bool:
    """A boolean option as a ``bool``; a string such as ``"false"`` (truthy!) or a number is refused."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise LossInputError(
        f"{name}={value!r} ({type(value).__name__}): {name} takes True or False. A string such as 'false' would be "
        "read as True; pass a boolean (in a bundle config: true/false without quotes)."
    )


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """A string option that must be one of ``choices`` (never silently read as another)."""
    if not isinstance(value, str) or value not in choices:
        raise LossInputError(f"{name}={value!r} is not supported; use one of {tuple(choices)}.")
    return value


def check_number(name: str, value: Any, *, minimum: float = 0.0, below: float | None = None, what: str = "") -> float:
    """A finite float option ``>= minimum`` (and ``< below`` when given)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if (
        isinstance(value, bool)
        or not math.isfinite(number)
        or number < minimum
        or (below is not None and number >= below)
    ):
        bound = f"lie in [{minimum:g}, {below:g})" if below is not None else f"be >= {minimum:g}"
        raise LossInputError(f"{name}={value}: {what or name} must {bound} (a finite number).")
    return number


def class_weight_tensor(weight: Sequence[float] | float | torch.Tensor | None) -> torch.Tensor | None:
    """``weight`` as a float tensor (0-d for a scalar), or None."""
    if weight is None:
        return None
    try:
        return torch.as_tensor(weight, dtype=torch.float64).to(torch.get_default_dtype())
    except (TypeError, ValueError, RuntimeError) as err:
        raise LossInputError(f"weight={weight!r} is not a number or a sequence of numbers ({err}).") from err


@dataclass(frozen=True)
class DiceOptions:
    """How every Dice-family loss reads the volume and reduces it (MONAI's argument names).

    The first group says what is scored, the second how it is computed; see
    :class:`~monai_gdl.VNetDiceLoss` for each option's meaning.
    """

    include_background: bool = True
    to_onehot_y: bool = False
    sigmoid: bool = False
    softmax: bool = False
    other_act: Callable[[torch.Tensor], torch.Tensor] | None = None
    squared_pred: bool = True
    soft_label: bool = True
    batch: bool = False
    reduction: Reduction = "mean"
    smooth_nr: float = 1e-5
    smooth_dr: float = 1e-5
    # how it is computed
    ignore_index: int | None = None
    validate: bool = True
    implementation: Implementation = "auto"
    distributed: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.type == "bool":
                object.__setattr__(self, f.name, check_flag(f.name, getattr(self, f.name)))
        check_choice("reduction", self.reduction, get_args(Reduction))
        check_choice("implementation", self.implementation, IMPLEMENTATIONS)
        if self.other_act is not None and not callable(self.other_act):
            raise LossInputError(f"other_act must be callable, got {type(self.other_act).__name__}.")
        if self.softmax + self.sigmoid + (self.other_act is not None) > 1:
            raise LossInputError(
                f"softmax={self.softmax}, sigmoid={self.sigmoid}, other_act={self.other_act!r}: choose at most one "
                "activation (softmax for mutually exclusive classes, sigmoid for multi-label targets)."
            )
        if self.other_act is not None and self.implementation not in ("auto", "reference"):
            raise LossInputError(
                f"implementation={self.implementation!r} does not support other_act (the fused kernels know softmax "
                "and sigmoid only); use implementation='reference' (or 'auto', which switches to it)."
            )
        nr = check_number("smooth_nr", self.smooth_nr, what="a smoothing term")
        dr = check_number("smooth_dr", self.smooth_dr, what="a smoothing term")
        if nr > dr:
            raise LossInputError(
                f"smooth_nr={nr} > smooth_dr={dr}: an empty class would score Dice {nr / max(dr, 1e-300):.3g} > 1 and "
                "the loss would leave [0, 1]; use smooth_nr <= smooth_dr."
            )
        object.__setattr__(self, "smooth_nr", nr)
        object.__setattr__(self, "smooth_dr", dr)
        if self.ignore_index is not None:
            try:
                if isinstance(self.ignore_index, bool):
                    raise TypeError
                object.__setattr__(self, "ignore_index", operator.index(self.ignore_index))
            except TypeError:
                raise LossInputError(
                    f"ignore_index={self.ignore_index!r}: give the integer label value to skip (e.g. 255), or None."
                ) from None

    @property
    def activation(self) -> Activation:
        """The activation as one word: what the fused kernels are told (``"other"`` runs the reference)."""
        if self.softmax:
            return "softmax"
        if self.sigmoid:
            return "sigmoid"
        return "other" if self.other_act is not None else "none"


def check_class_weight(weight: torch.Tensor, *, rescale_weight: bool, per_class_only: bool) -> torch.Tensor:
    """Class weights: finite, >= 0, not all zero; 1-D, or (``rescale_weight=False`` only, when not
    ``per_class_only``) a scalar that multiplies every class."""
    if per_class_only and weight.ndim != 1:
        raise LossInputError(f"weight={weight.tolist()}: give one weight per class (a 1-D sequence).")
    if weight.ndim > 1:
        shape = "x".join(str(s) for s in weight.shape)
        raise LossInputError(f"weight has shape {shape}; give a scalar or one weight per scored class.")
    if weight.ndim == 0 and rescale_weight:
        raise LossInputError(
            f"weight={float(weight):g} is a single number. Class weights here are rescaled to average 1 (so the mean "
            "stays a weighted average in [0, 1]), which would make a scalar do nothing. Give one weight per scored "
            "class, scale the loss itself (e.g. 2.0 * loss), or pass rescale_weight=False for MONAI's meaning "
            "(every class's loss multiplied by the number)."
        )
    if bool((weight < 0).any()) or not bool(torch.isfinite(weight).all()) or float(weight.sum()) <= 0:
        raise LossInputError(f"weight={weight.tolist()}: weights must be finite, >= 0 and not all zero.")
    return weight
