"""When training validates: every ``val_interval`` epochs and always after the last one.

MONAI's ``ValidationHandler`` validates at multiples of its interval only, so ``--epochs 42 --val_interval 5``
would end on an epoch nobody scored, with no last-epoch Dice in ``history.csv`` and a ``model.pt`` picked without
the final weights. Validating fewer epochs is the cheapest time-to-Dice lever on hippocampus (a quarter of each
validated epoch), so the bundle validates every 5 epochs by default, and the last epoch is validated too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from monai.handlers import ValidationHandler

if TYPE_CHECKING:  # ignite is the [bundle] extra's: imported when a trainer attaches this
    from ignite.engine import Engine
    from monai.engines import Evaluator

__all__ = ["IntervalAndLastValidation"]


class IntervalAndLastValidation(ValidationHandler):
    """MONAI's ``ValidationHandler`` (epoch level) that also runs after the trainer's last epoch.

    Runs the validator after epoch ``e`` when ``e % interval == 0`` or ``e == max_epochs``; read from the
    trainer's state at each epoch, so a run resumed with a larger ``--epochs`` validates its new last epoch.
    """

    def __init__(self, interval: int, validator: Evaluator | None = None) -> None:
        super().__init__(interval=interval, validator=validator, epoch_level=True)

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._due), self)

    def _due(self, engine: Engine, epoch: int) -> bool:
        return epoch % self.interval == 0 or epoch == engine.state.max_epochs
