"""Deep supervision: one loss over a network's outputs at decreasing resolutions.

``DeepSupervisionWrapper(loss)(outputs, target)`` = ``sum_i w_i * loss(outputs[i], target_i)``.
``target`` is either ONE tensor at the first output's size, and ``target_i`` is that target brought
to ``outputs[i]``'s spatial size by nearest-neighbour selection (PyTorch's ``"nearest-exact"``:
source index ``floor((i + 0.5) * in / out)`` per axis), or a list with one target per output, used
as given (nnU-Net's data loader hands such a list, each level downsampled by its own transform).
Selection picks voxels of the target as they are, whatever their dtype: a label map stays a label
map (the fused label-map path of the wrapped loss runs at every level; no one-hot, no float copy),
a one-hot stays one-hot. A ``mask`` follows the same rules (one tensor, resampled; or a list).

Weights (``weight_mode``): ``"nnunet"`` (default) as nnU-Net v2's ``DeepSupervisionWrapper``:
``1 / 2^i``, the lowest resolution's set to 0, normalised to sum 1 (levels with weight 0 are
skipped); MONAI's ``DeepSupervisionLoss`` schemes ``"exp"`` (``max(0.5^i, 0.0625)``), ``"two"``
(``1, 0.5, 0.5, ...``), ``"same"`` (all 1), not normalised; or explicit ``weights``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from monai_gdl.losses.validation import LossInputError

__all__ = ["WEIGHT_MODES", "DeepSupervisionWrapper", "deep_supervision_weights", "nearest_resize"]

WEIGHT_MODES = ("nnunet", "exp", "two", "same")


def deep_supervision_weights(levels: int, weight_mode: str = "nnunet") -> list[float]:
    """The weight of each of ``levels`` outputs (highest resolution first), see the module docstring."""
    if weight_mode not in WEIGHT_MODES:
        raise LossInputError(f"weight_mode={weight_mode!r} is not supported; use one of {WEIGHT_MODES}.")
    if weight_mode == "same":
        return [1.0] * levels
    if weight_mode == "exp":
        return [max(0.5**i, 0.0625) for i in range(levels)]
    if weight_mode == "two":
        return [1.0 if i == 0 else 0.5 for i in range(levels)]
    weights = [0.5**i for i in range(levels)]
    if levels > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def nearest_resize(t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``t`` (``B x K x spatial``) at spatial ``size`` by nearest-exact voxel selection (any dtype, no copy
    of values beyond the selected voxels)."""
    for axis, (n_in, n_out) in enumerate(zip(t.shape[2:], size)):
        if n_in == n_out:
            continue
        index = ((torch.arange(n_out, device=t.device, dtype=torch.float64) + 0.5) * (n_in / n_out)).floor()
        t = t.index_select(axis + 2, index.clamp(max=n_in - 1).long())
    return t


class DeepSupervisionWrapper(nn.Module):
    """Weighted sum of ``loss`` over deep-supervision outputs, each scored against the one target
    resampled to its size (see the module docstring for the weights and the resampling).

    Args:
        loss: any loss taking ``(input, target)`` (and ``mask=`` when one is passed), e.g.
            :class:`~monai_gdl.VNetDiceCELoss`.
        weight_mode: ``"nnunet"``, ``"exp"``, ``"two"`` or ``"same"``.
        weights: explicit weights, one per output (overrides ``weight_mode``; the count must match).

    ``forward(outputs, target, mask=None)``: ``outputs`` a list/tuple of ``B x C x spatial`` tensors,
    highest resolution first, each no larger than the one before on every axis; or one stacked tensor
    ``B x L x C x spatial`` (MONAI's ``DynUNet(deep_supervision=True)`` in training mode, all levels
    already at full size). ``target``: ``B x 1 x spatial`` label map or ``B x C x spatial`` one-hot at
    the first output's size, or a list of such targets, one per output at that output's size.

    Example:
        >>> import torch
        >>> from monai_gdl import DeepSupervisionWrapper, VNetDiceCELoss
        >>> loss = DeepSupervisionWrapper(VNetDiceCELoss(to_onehot_y=True))  # weights 4/7, 2/7, 1/7 and 0
        >>> outputs = [torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)]
        >>> round(float(loss(outputs, torch.zeros(1, 1, 8, 8, dtype=torch.long))), 4)  # 0.6 + log 2 at every level
        1.2931
    """

    def __init__(self, loss: nn.Module, weight_mode: str = "nnunet", weights: Sequence[float] | None = None) -> None:
        super().__init__()
        deep_supervision_weights(1, weight_mode)  # checks the name
        if weights is not None:
            weights = [float(w) for w in weights]
            if not weights or any(not (w >= 0) for w in weights) or sum(weights) <= 0:
                raise LossInputError(f"weights={weights}: give one weight >= 0 per output, not all 0.")
        self.loss = loss
        self.weight_mode = weight_mode
        self.weights = weights

    def level_weights(self, levels: int) -> list[float]:
        if self.weights is None:
            return deep_supervision_weights(levels, self.weight_mode)
        if len(self.weights) != levels:
            raise LossInputError(
                f"{levels} deep-supervision outputs but {len(self.weights)} weights {self.weights}; give one weight "
                "per output (highest resolution first)."
            )
        return self.weights

    def forward(
        self,
        outputs: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor | Sequence[torch.Tensor],
        mask: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        first = target if isinstance(target, torch.Tensor) else _first(target, "target")
        levels = _as_levels(outputs, first)
        targets = _per_level(target, levels, "target")
        masks = None if mask is None else _per_level(mask, levels, "mask")
        total = None
        for i, weight in enumerate(self.level_weights(len(levels))):
            if weight == 0:
                continue
            extra = {} if masks is None else {"mask": masks[i]}
            # A level of DynUNet's stacked B x L x C x ... output is a strided view (for B > 1): one copy makes it
            # dense for the fused kernels, which would otherwise take their slower strided path.
            output = levels[i].contiguous() if isinstance(outputs, torch.Tensor) else levels[i]
            term = weight * self.loss(output, targets[i], **extra)
            total = term if total is None else total + term
        assert total is not None, "level_weights keeps at least one level"
        return total


def _first(tensors: Sequence[torch.Tensor], name: str) -> torch.Tensor:
    if not isinstance(tensors, (list, tuple)) or not tensors or not isinstance(tensors[0], torch.Tensor):
        raise LossInputError(
            f"{name} is {type(tensors).__name__}; give one tensor at the first output's size or a list of tensors, "
            "one per output."
        )
    return tensors[0]


def _per_level(
    given: torch.Tensor | Sequence[torch.Tensor], levels: list[torch.Tensor], name: str
) -> list[torch.Tensor]:
    """One ``name`` tensor per output: one tensor resampled to each size, or a list checked against the outputs."""
    if isinstance(given, torch.Tensor):
        return [nearest_resize(given, output.shape[2:]) for output in levels]
    _first(given, name)
    if len(given) != len(levels):
        raise LossInputError(
            f"{len(levels)} deep-supervision outputs but {len(given)} {name}s; give one {name} per output (nnU-Net's "
            f"list) or one {name} at the first output's size."
        )
    for i, (t, output) in enumerate(zip(given, levels)):
        if not isinstance(t, torch.Tensor) or t.ndim != output.ndim or t.shape[2:] != output.shape[2:]:
            raise LossInputError(
                f"{name} {i} has shape {tuple(getattr(t, 'shape', ()))} but output {i} has shape "
                f"{tuple(output.shape)}; each {name} in the list must match its output's spatial size."
            )
    return list(given)


def _as_levels(outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> list[torch.Tensor]:
    """The outputs as a list, checked: same rank as the target, sizes never growing."""
    if isinstance(outputs, torch.Tensor):
        if outputs.ndim != target.ndim + 1:
            raise LossInputError(
                f"outputs is one tensor of shape {tuple(outputs.shape)}; deep supervision takes a list of B x C x "
                f"spatial outputs or DynUNet's stacked B x L x C x spatial (rank {target.ndim + 1} for this target "
                f"of shape {tuple(target.shape)}). For a single output call the loss directly."
            )
        levels = list(torch.unbind(outputs, dim=1))
    else:
        levels = list(outputs)
    if not levels:
        raise LossInputError("outputs is empty; give at least one network output.")
    previous = tuple(target.shape[2:])
    for i, output in enumerate(levels):
        if not isinstance(output, torch.Tensor) or output.ndim != target.ndim:
            raise LossInputError(
                f"output {i} has shape {tuple(getattr(output, 'shape', ()))}; every output must be B x C x spatial "
                f"with the target's rank ({target.ndim}, target shape {tuple(target.shape)})."
            )
        size = tuple(output.shape[2:])
        if any(s > p for s, p in zip(size, previous)):
            raise LossInputError(
                f"output {i} has spatial size {size}, larger than {previous} before it; outputs must be ordered from "
                "the highest resolution (the target's size) down, each no larger than the previous one."
            )
        previous = size
    return levels
