"""The statistics contract every backend fulfils: the only thing the losses need from the volume.

A Dice-family loss depends on the volume only through four per-(sample, class) sums. Notation:
``p`` probabilities after the activation, ``g`` target (one-hot, soft, or a label map expanded
implicitly), ``m`` voxel mask (``ignore_index`` / ``mask``), ``k = 2`` when the denominator is
squared, else ``1``. Sums run over the spatial axes.

``I = sum(m * p * g)`` (or ``sum(m * min(p, g))``, the soft-label form for a dense target),
``P = sum(m * p^k)``, ``G = sum(m * g^k)``, ``V = sum(m * g)``.

A compound loss (Dice + CE, Dice + BCE, Dice + focal) adds one voxel-wise term ``l_c`` per class,
computed from the same logits in the same pass (``voxel_term``; ``gamma`` the focal exponent, 0 for
plain CE/BCE) and reduced to two more sums:

- ``"softmax"``: ``l_c = (1 - p_c)^gamma * (-log p_c)`` with ``p`` the softmax (cross-entropy at gamma 0);
- ``"sigmoid"``: ``l_c = s_c^gamma * bce_c`` per channel, ``bce_c = softplus(x_c) - x_c * g_c`` and
  ``s_c = sigmoid(-x_c * (2 g_c - 1))`` (``1 - p_t``; binary cross-entropy at gamma 0), MONAI's
  ``sigmoid_focal_loss`` element;

``F = sum(m * g * l)`` (on the target) and ``Q = sum(m * (1 - g) * l)`` (off it). Every weighting
the losses apply afterwards (class weights, focal ``alpha``, label smoothing, the mean's
denominator) is a combination of ``F``, ``Q`` and ``V`` (:mod:`monai_gdl.losses.formulas`).

A loss with a structure term (Skeleton Recall, boundary loss) passes one more per-voxel map ``a``
(``weight_map``), precomputed in the data pipeline: a label map (``map_labels``, ``a_c = [map == c]``,
e.g. a tubed skeleton) or a dense ``B x C x spatial`` float map (``a_c = map_c``, e.g. signed distances).
The pass adds ``W = sum(m * a * p)`` and ``S = sum(m * a)``; the loss's gradient through ``W`` is
``dL/dW * a`` on ``dL/dp``, added in the same backward pass.

Backends return them stacked as one ``8 x B x C`` tensor (rows :class:`Row`: ``I, P, G, V, F, Q, W, S``)
in :func:`accumulation_dtype` (``F = Q = 0`` without a voxel term, ``W = S = 0`` without a map); only
``I, P, F, Q, W`` depend on the logits (:data:`LOGIT_ROWS`), so the backward takes their gradients
``dL/dI, dL/dP, dL/dF, dL/dQ, dL/dW`` as a ``5 x B x C`` tensor. :func:`check_pass_options` refuses an
unknown activation or voxel term.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import torch

__all__ = [
    "ACTIVATIONS",
    "LOGIT_ROWS",
    "NUM_STATISTICS",
    "VOXEL_TERMS",
    "DiceStatistics",
    "Row",
    "VoxelTermSums",
    "WeightMapSums",
    "accumulation_dtype",
    "check_pass_options",
]


class Row(IntEnum):
    """The rows of a backend's ``8 x B x C`` result."""

    INTERSECTION = 0
    PREDICTION = 1
    TARGET = 2
    TARGET_VOLUME = 3
    ON_TARGET = 4
    OFF_TARGET = 5
    MAP_OVERLAP = 6
    MAP_VOLUME = 7


NUM_STATISTICS = len(Row)
#: The rows that depend on the logits, in the order the backward takes their gradients.
LOGIT_ROWS = (Row.INTERSECTION, Row.PREDICTION, Row.ON_TARGET, Row.OFF_TARGET, Row.MAP_OVERLAP)
#: ``activation`` values of a fused pass.
ACTIVATIONS = ("none", "softmax", "sigmoid")
#: ``voxel_term`` values: no voxel-wise term, softmax CE/focal, sigmoid BCE/focal.
VOXEL_TERMS = ("none", "softmax", "sigmoid")


def check_pass_options(activation: str, voxel_term: str) -> None:
    """Refuse an activation or voxel term no backend knows (never read as "none")."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r}; use one of {ACTIVATIONS}.")
    if voxel_term not in VOXEL_TERMS:
        raise ValueError(f"voxel_term={voxel_term!r}; use one of {VOXEL_TERMS}.")


class DiceStatistics(NamedTuple):
    """Per-(sample, class) sums, each ``B x C`` (``1 x C`` once pooled over the batch).

    ``intersection = I``, ``prediction = P``, ``target = G``, ``target_volume = V`` (the class
    volume GDL weights use; equals ``target`` for hard labels). Target sums carry no gradient.
    """

    intersection: torch.Tensor
    prediction: torch.Tensor
    target: torch.Tensor
    target_volume: torch.Tensor

    @classmethod
    def from_stacked(cls, stacked: torch.Tensor) -> DiceStatistics:
        """The first four rows of a backend's ``8 x B x C`` result."""
        return cls(stacked[Row.INTERSECTION], stacked[Row.PREDICTION], stacked[Row.TARGET], stacked[Row.TARGET_VOLUME])

    def select_classes(self, include_background: bool) -> DiceStatistics:
        """Drop class 0 (after the activation saw it) when ``include_background`` is False."""
        if include_background:
            return self
        return DiceStatistics(*(s[:, 1:] for s in self))

    def pooled(self, batch: bool) -> DiceStatistics:
        """Sum over the batch before the Dice ratio (``batch=True``): a ``1 x C`` result."""
        if not batch:
            return self
        return DiceStatistics(*(s.sum(dim=0, keepdim=True) for s in self))


class VoxelTermSums(NamedTuple):
    """The voxel-wise term's per-(sample, class) sums ``F`` (``on_target``) and ``Q`` (``off_target``), ``B x C``."""

    on_target: torch.Tensor
    off_target: torch.Tensor

    @classmethod
    def from_stacked(cls, stacked: torch.Tensor) -> VoxelTermSums:
        """Rows ``F, Q`` of a backend's ``8 x B x C`` result."""
        return cls(stacked[Row.ON_TARGET], stacked[Row.OFF_TARGET])

    def select_classes(self, include_background: bool) -> VoxelTermSums:
        return self if include_background else VoxelTermSums(*(s[:, 1:] for s in self))


class WeightMapSums(NamedTuple):
    """A structure term's sums against its per-voxel map ``a``: ``W = sum(m a p)`` (``overlap``) and
    ``S = sum(m a)`` (``volume``, no gradient), ``B x C``."""

    overlap: torch.Tensor
    volume: torch.Tensor

    @classmethod
    def from_stacked(cls, stacked: torch.Tensor) -> WeightMapSums:
        """Rows ``W, S`` of a backend's ``8 x B x C`` result."""
        return cls(stacked[Row.MAP_OVERLAP], stacked[Row.MAP_VOLUME])


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in float32 for half inputs (AMP), float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32
