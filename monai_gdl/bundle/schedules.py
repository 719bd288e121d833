"""Loss weights that change over training: the boundary loss's schedule (Kervadec et al. 2019).

The authors start with the region loss alone and move weight to the boundary term as training goes:
``alpha * region + (1 - alpha) * boundary`` with ``alpha`` falling by 0.01 per epoch to a floor of 0.01. Set on
each epoch's start from ``engine.state.epoch`` alone, so a resumed run (whose epoch the checkpoint restores)
continues the schedule exactly; nothing of its own to save.
"""

from __future__ import annotations

from monai_gdl.bundle.checks import ArgumentError

__all__ = ["BoundaryWeightSchedule"]


class BoundaryWeightSchedule:
    """At the start of epoch ``e`` (1-based) set ``alpha = max(1 - step * (e - 1), floor)`` and the loss's
    ``lambda_dice = alpha * lambda_dice0``, ``lambda_ce = alpha * lambda_ce0`` (the region terms as configured,
    scaled) and ``lambda_boundary = (1 - alpha) * lambda_boundary0``. ``loss`` is a
    :class:`~monai_gdl.VNetDiceCEBoundaryLoss` (any loss with those options).
    """

    def __init__(self, loss, step: float = 0.01, floor: float = 0.01) -> None:
        for name, value in (("step", step), ("floor", floor)):
            if not 0 <= float(value) <= 1:
                raise ArgumentError(f"BoundaryWeightSchedule: {name}={value!r} must lie in [0, 1] (the paper: 0.01).")
        missing = [n for n in ("lambda_dice", "lambda_ce", "lambda_boundary") if not hasattr(loss, n)]
        if missing:
            raise ArgumentError(
                f"BoundaryWeightSchedule: the loss {type(loss).__name__} has no {', '.join(missing)}; the schedule "
                "is for VNetDiceCEBoundaryLoss (configs/loss_dice_ce_boundary.json)."
            )
        self.loss, self.step, self.floor = loss, float(step), float(floor)
        self.initial = {n: float(getattr(loss, n)) for n in ("lambda_dice", "lambda_ce", "lambda_boundary")}

    def alpha(self, epoch: int) -> float:
        """The region terms' share at ``epoch`` (1-based)."""
        return max(1.0 - self.step * (epoch - 1), self.floor)

    def attach(self, trainer) -> None:
        from ignite.engine import Events

        trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: self.apply(engine.state.epoch))

    def apply(self, epoch: int) -> None:
        """Set the loss's weights for ``epoch`` (1-based)."""
        alpha = self.alpha(epoch)
        self.loss.lambda_boundary = (1.0 - alpha) * self.initial["lambda_boundary"]  # each set is checked
        self.loss.lambda_dice = alpha * self.initial["lambda_dice"]
        self.loss.lambda_ce = alpha * self.initial["lambda_ce"]
