"""The statistics contract every backend fulfils: the only thing the losses need from the volume.

A Dice-family loss depends on the volume only through four per-(sample, class) sums. Notation:
``p`` probabilities after the activation, ``g`` target (one-hot, soft, or a label map expanded
implicitly), ``m`` voxel mask (``ignore_index`` / ``mask``), ``k = 2`` when the denominator is
squared, else ``1``. Sums run over the spatial axes.

``I = sum(m * p * g)`` (or ``sum(m * min(p, g))``, the soft-label form for a dense target),
``P = sum(m * p^k)``, ``G = sum(m * g^k)``, ``V = sum(m * g)``.

Backends return them stacked as one ``4 x B x C`` tensor (:data:`NUM_STATISTICS` rows, in that
order) in :func:`statistics_dtype`; only ``I`` and ``P`` depend on the logits.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["NUM_STATISTICS", "DiceStatistics", "statistics_dtype"]

NUM_STATISTICS = 4


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
        """From a backend's ``4 x B x C`` result."""
        return cls(stacked[0], stacked[1], stacked[2], stacked[3])

    def stacked(self) -> torch.Tensor:
        return torch.stack(tuple(self))

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


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in float32 for half inputs (AMP), float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32
