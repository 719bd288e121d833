"""One line per epoch on the console, the same row in ``history.csv`` (atomic), and the training curves."""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Sequence

import torch

from monai_gdl.bundle.atomic import atomic_write
from monai_gdl.bundle.ranks import rank

__all__ = ["HISTORY_FILE", "EpochSummary", "write_history"]

logger = logging.getLogger("monai_gdl.bundle")
HISTORY_FILE = "history.csv"


class EpochSummary:
    """One line per epoch on the console (loss, lr, validation mean and per-class Dice, the epoch's wall
    seconds with its validation), the same row in ``history.csv`` (atomic; a resumed run rewrites its future
    rows; ``epoch_s`` summed up to an epoch is the time to its Dice) and ``training_curves.png`` after the first
    validation, then at most every ``plot_every_s`` seconds (drawing takes about 0.3 s: every epoch of a
    short run would spend a quarter of its time on it), and at the end. MONAI's ``StatsHandler`` logs per
    iteration and per engine, so it cannot give this one line."""

    def __init__(
        self,
        log_dir: str,
        optimizer: torch.optim.Optimizer,
        class_names: Sequence[str],
        evaluator=None,
        include_background: bool = False,
        mean_metric: str = "val_mean_dice",
        plot_every_s: float = 30.0,
        loss_name: str = "",
    ) -> None:
        self.log_dir = log_dir
        self.loss_name = loss_name
        self.optimizer = optimizer
        self.evaluator = evaluator
        self.names = list(class_names)[0 if include_background else 1 :]
        self.mean_metric = mean_metric
        self._losses: list[float] = []
        self._lr = 0.0
        self._started = time.perf_counter()
        self.plot_every_s = plot_every_s
        self._plotted: float | None = None  # when the curves were last drawn (None: not yet)

    def attach(self, trainer) -> None:
        from ignite.engine import Events

        trainer.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._summarise)
        trainer.add_event_handler(Events.COMPLETED, self._finish)

    def _start_epoch(self, _trainer) -> None:
        self._losses.clear()
        self._lr = self.optimizer.param_groups[0]["lr"]  # the rate this epoch trains with
        self._started = time.perf_counter()

    def _collect(self, trainer) -> None:
        output = trainer.state.output
        item = output[0] if isinstance(output, list) else output
        self._losses.append(float(item["loss"]))

    def _validation(self, epoch: int) -> tuple[float | None, list[float]]:
        ev = self.evaluator
        if ev is None or ev.state.epoch != epoch or self.mean_metric not in ev.state.metrics:
            return None, []
        # per case and class (NaN where a case lacks the class), as MONAI's MeanDice keeps them
        details = getattr(ev.state, "metric_details", {}).get(self.mean_metric)
        per_class = [] if details is None else torch.nanmean(torch.as_tensor(details).float(), dim=0).tolist()
        return float(ev.state.metrics[self.mean_metric]), per_class

    def _summarise(self, trainer) -> None:
        if rank() != 0:
            return
        epoch = trainer.state.epoch
        loss = sum(self._losses) / max(1, len(self._losses))
        lr = self._lr
        mean_dice, per_class = self._validation(epoch)
        seconds = time.perf_counter() - self._started  # training and this epoch's validation: time to Dice
        row = {"epoch": epoch, "loss": loss, "lr": lr, "val_mean_dice": "" if mean_dice is None else mean_dice}
        row.update({f"val_dice_{n}": (per_class[i] if i < len(per_class) else "") for i, n in enumerate(self.names)})
        row["epoch_s"] = round(seconds, 2)
        text = f"epoch {epoch}/{trainer.state.max_epochs} loss {loss:.4f} lr {lr:.2e}"
        if mean_dice is not None:
            classes = " ".join(f"{n} {v:.4f}" for n, v in zip(self.names, per_class))
            text += f" val_mean_dice {mean_dice:.4f} [{classes}]"
        text += f" ({row['epoch_s']:.1f} s)"
        logger.info(text)
        os.makedirs(self.log_dir, exist_ok=True)
        write_history(os.path.join(self.log_dir, HISTORY_FILE), row)
        due = self._plotted is None or time.perf_counter() - self._plotted >= self.plot_every_s
        if mean_dice is not None and due:
            self._plot()

    def _plot(self) -> str:
        from monai_gdl.bundle.curves import plot_training_curves

        self._plotted = time.perf_counter()
        return plot_training_curves(self.log_dir, loss_name=self.loss_name)

    def _finish(self, trainer) -> None:
        if rank() == 0 and os.path.isfile(os.path.join(self.log_dir, HISTORY_FILE)):
            logger.info(
                "trained %d epochs: curves in %s, history in %s",
                trainer.state.epoch,
                self._plot(),
                os.path.join(self.log_dir, HISTORY_FILE),
            )


def write_history(path: str, row: dict) -> None:
    """Add ``row`` to the CSV at ``path``, dropping rows of its epoch and later (a resumed run rewrites its
    future), atomically: a kill during the write leaves the previous complete file."""
    rows = []
    if os.path.isfile(path):
        with open(path, newline="") as f:
            rows = [
                r for r in csv.DictReader(f) if str(r.get("epoch", "")).isdigit() and int(r["epoch"]) < row["epoch"]
            ]
    rows.append(row)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(row), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))
