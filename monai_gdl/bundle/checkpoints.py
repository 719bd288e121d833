"""Kill-safe checkpoints with an exact resume (:class:`TrainingCheckpoints`).

``last.pt`` (every epoch) and ``model.pt`` (best validation metric) are written atomically, so an
interrupted run always leaves the last complete pair behind. A new run with the same ``output_dir``
resumes from ``last.pt`` and reproduces the uninterrupted run (with :class:`~.seeding.EpochSeeds`):
the learning-rate schedule is replayed to the resumed epoch.
"""

from __future__ import annotations

import logging
import math
import os
import warnings

import torch

from monai_gdl.bundle.atomic import atomic_save
from monai_gdl.bundle.ranks import rank, unwrap

__all__ = [
    "BEST_CHECKPOINT",
    "LAST_CHECKPOINT",
    "CheckpointError",
    "TrainingCheckpoints",
    "read_checkpoint",
    "network_mismatch",
    "network_state",
]

logger = logging.getLogger("monai_gdl.bundle")
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "model.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or does not fit the configured network."""


def read_checkpoint(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}).") from err


def network_state(checkpoint: dict) -> dict:
    """The network's weights in a checkpoint: ``model.pt`` (the weights themselves, or under ``model``) or
    ``last.pt`` (under ``network``)."""
    return checkpoint.get("model", checkpoint.get("network", checkpoint))


def network_mismatch(state: dict, network: torch.nn.Module, path: str) -> None:
    own = unwrap(network).state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs network {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = sorted(set(own) - set(state))
    if mismatched or missing:
        detail = "; ".join(mismatched[:3]) or f"missing keys {missing[:3]}"
        raise CheckpointError(
            f"checkpoint {path} was saved from a different network ({detail}). Use the num_classes and "
            "network_def#channels it was trained with, or a fresh --output_dir to train this network."
        )


def _apply_network_state(state: dict, network: torch.nn.Module, path: str) -> None:
    network_mismatch(state, network, path)
    unwrap(network).load_state_dict(state)


class TrainingCheckpoints:
    """Save ``last.pt`` every epoch and ``model.pt`` on a new best validation metric; resume from ``last.pt``.

    Kept instead of MONAI's ``CheckpointSaver``/``CheckpointLoader``: they neither fsync (a power loss
    can leave a torn file), nor replay the LR schedule to a raised ``--epochs``, nor carry the best
    metric over a resume.

    ``last.pt`` holds network, optimizer, scheduler, trainer state (epoch, iteration), the best
    metric so far and the train/validation split. Attach to the trainer *after* the ValidationHandler, so
    the epoch's validation has run when ``last.pt`` is written.
    """

    def __init__(
        self,
        ckpt_dir: str,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        evaluator=None,
        lr_scheduler=None,
        key_metric: str = "val_mean_dice",
        resume: bool = True,
        split: dict | None = None,
    ) -> None:
        self.ckpt_dir = ckpt_dir
        self.network = network
        self.optimizer = optimizer
        self.evaluator = evaluator
        self.lr_scheduler = lr_scheduler
        self.key_metric = key_metric
        self.resume = bool(resume)  # the config parses the knob (checks.flag)
        self.best = -math.inf
        self.split = split  # the train/validation cases (monai_gdl.bundle.split), kept in last.pt

    def attach(self, trainer) -> None:
        from ignite.engine import Events

        trainer.add_event_handler(Events.STARTED, self._resume)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._save_last)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.COMPLETED, self._save_best)

    def _read_last(self, path: str) -> dict:
        try:
            state = read_checkpoint(path)
            missing = {"network", "optimizer", "epoch", "iteration"} - set(state)
            if missing:
                raise CheckpointError(f"it lacks {sorted(missing)}")
            return state
        except CheckpointError as err:
            best = os.path.join(self.ckpt_dir, BEST_CHECKPOINT)
            raise CheckpointError(
                f"cannot resume: {path} is truncated or corrupt ({err}). Start over with --resume false (or delete "
                f"{path})"
                + (
                    f"; the best weights so far are in {best}, which evaluate.json and inference.json use "
                    "(copy it first: a new run overwrites it)."
                    if os.path.isfile(best)
                    else "."
                )
            ) from err

    def _replay_schedule(self, epochs: int) -> None:
        """Put the configured schedule at ``epochs`` by stepping it from its start, so a resumed run trains at
        the rate the uninterrupted one did (and with a raised ``--epochs``, the rate of the new, longer
        schedule at that epoch). Schedules that depend on metrics (``ReduceLROnPlateau``) load their saved state."""
        scheduler = self.lr_scheduler
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("initial_lr", group["lr"])
        scheduler.last_epoch = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
            for _ in range(epochs):
                scheduler.step()

    def _resume(self, trainer) -> None:
        path = os.path.join(self.ckpt_dir, LAST_CHECKPOINT)
        if not (self.resume and os.path.isfile(path)):
            return
        state = self._read_last(path)
        _apply_network_state(state["network"], self.network, path)
        self.optimizer.load_state_dict(state["optimizer"])
        if _replayable(self.lr_scheduler):
            self._replay_schedule(int(state["epoch"]))
        elif self.lr_scheduler is not None and state.get("lr_scheduler") is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        scaler = getattr(trainer, "scaler", None)
        if scaler is not None and state.get("grad_scaler") is not None:
            scaler.load_state_dict(state["grad_scaler"])
        max_epochs = trainer.state.max_epochs
        trainer.state.epoch = int(state["epoch"])
        trainer.state.iteration = int(state["iteration"])
        trainer.state.max_epochs = max_epochs
        self.best = float(state.get("best_metric", -math.inf))
        if rank() == 0:
            logger.info(
                "resumed from %s at epoch %d (best %s %.4f)", path, trainer.state.epoch, self.key_metric, self.best
            )
        if trainer.state.epoch >= max_epochs and rank() == 0:
            logger.info(
                "already trained %d epochs (epochs=%d): nothing to do; raise --epochs to continue",
                trainer.state.epoch,
                max_epochs,
            )

    def _save_best(self, evaluator) -> None:
        value = evaluator.state.metrics.get(self.key_metric)
        if value is None or not value > self.best:
            return
        self.best = float(value)
        if rank() == 0:
            os.makedirs(self.ckpt_dir, exist_ok=True)
            atomic_save(unwrap(self.network).state_dict(), os.path.join(self.ckpt_dir, BEST_CHECKPOINT))

    def _save_last(self, trainer) -> None:
        if rank() != 0:
            return
        os.makedirs(self.ckpt_dir, exist_ok=True)
        state = {
            "network": unwrap(self.network).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": None if self.lr_scheduler is None else self.lr_scheduler.state_dict(),
            "epoch": trainer.state.epoch,
            "iteration": trainer.state.iteration,
            "best_metric": self.best,
        }
        if self.split is not None:
            state["split"] = self.split
        scaler = getattr(trainer, "scaler", None)
        if scaler is not None:
            state["grad_scaler"] = scaler.state_dict()
        atomic_save(state, os.path.join(self.ckpt_dir, LAST_CHECKPOINT))


def _replayable(scheduler) -> bool:
    schedulers = torch.optim.lr_scheduler
    return isinstance(scheduler, schedulers.LRScheduler) and not isinstance(scheduler, schedulers.ReduceLROnPlateau)
