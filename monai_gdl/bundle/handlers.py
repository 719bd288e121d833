"""Ignite handlers and helpers the bundle configs use: checkpoints with resume, epoch summaries, evaluation.

Checkpoints and ``history.csv`` are written atomically (temporary file, fsync, rename), so an
interrupted run always leaves the last complete ``last.pt``, ``model.pt`` (best validation Dice)
and ``history.csv`` behind, and the next run removes the temporary files a killed one left. A new
run with the same ``output_dir`` resumes from ``last.pt`` and reproduces the uninterrupted run:
every epoch's random streams (torch, NumPy, Python, the transforms' and the sampler's) are seeded
from ``(seed, epoch, rank)`` by :class:`EpochSeeds`, and the learning-rate schedule is replayed to the
resumed epoch. In multi-process training only rank 0 writes files and prints.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import logging
import math
import os
import random
import shutil
import warnings
from collections.abc import Sequence

import torch

__all__ = [
    "CheckpointError",
    "EpochSeeds",
    "EpochSummary",
    "EvaluationReport",
    "OutputDirError",
    "TrainingCheckpoints",
    "check_output_dir",
    "load_network_checkpoint",
    "write_history",
]

logger = logging.getLogger("monai_gdl.bundle")
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "model.pt"
HISTORY_FILE = "history.csv"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or does not fit the configured network."""


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network


class OutputDirError(OSError):
    """An ``output_dir`` the run cannot write to."""


def check_output_dir(output_dir: str) -> str:
    """Create ``output_dir`` and prove it writable (a file is written, synced and removed) before any data
    is loaded, so a read-only or mistyped folder fails at once, naming the path; then (rank 0) remove the
    temporary files a killed run left there. Returns ``output_dir``."""
    probe = os.path.join(output_dir, f".write-test.tmp-{os.getpid()}")
    try:
        os.makedirs(output_dir, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ok")
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as err:
        raise OutputDirError(
            f"output_dir={output_dir!r} is not writable ({type(err).__name__}: {err.strerror or err}); pass "
            "--output_dir with a folder you can write to."
        ) from err
    if _rank() == 0:  # other ranks' (or nodes') writers are not ours to judge
        _remove_leftovers(output_dir)
    return output_dir


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_leftovers(output_dir: str) -> None:
    """Temporary files (``<name>.tmp-<pid>``) of writers that no longer run: what a kill leaves."""
    for path in glob.glob(os.path.join(glob.escape(output_dir), "*.tmp-*")):
        pid = path.rsplit(".tmp-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(path)


def _sync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: str, write) -> None:
    """``write(file)`` into ``path.tmp-<pid>``, fsync, rename over ``path``: a kill at any point leaves the
    previous complete ``path``."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _sync_dir(path)


def _atomic_save(obj: dict, path: str) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


def load_network_checkpoint(path: str, network: torch.nn.Module) -> torch.nn.Module:
    """Load network weights from ``path`` (``model.pt`` or ``last.pt``), explaining a missing or mismatched file."""
    if not os.path.isfile(path):
        raise CheckpointError(
            f"no checkpoint at {path}; train first (configs/train.json with the same --output_dir) or point "
            "--output_dir at the folder that holds model.pt."
        )
    checkpoint = _read_checkpoint(path)
    _apply_network_state(checkpoint.get("network", checkpoint), network, path)
    return network


def _read_checkpoint(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}).") from err


def _apply_network_state(state: dict, network: torch.nn.Module, path: str) -> None:
    target = _unwrap(network)
    own = target.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs network {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = sorted(set(own) - set(state))
    if mismatched or missing:
        detail = "; ".join(mismatched[:3]) or f"missing keys {missing[:3]}"
        raise CheckpointError(
            f"checkpoint {path} was saved from a different network ({detail}). Use the num_classes/channels it "
            "was trained with, or a fresh --output_dir to train this network."
        )
    target.load_state_dict(state)


class TrainingCheckpoints:
    """Save ``last.pt`` every epoch and ``model.pt`` on a new best validation metric; resume from ``last.pt``.

    ``last.pt`` holds network, optimizer, scheduler, trainer state (epoch, iteration) and the best
    metric so far. Attach to the trainer *after* the ValidationHandler, so the epoch's validation has
    run when ``last.pt`` is written.
    """

    def __init__(
        self,
        output_dir: str,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        evaluator=None,
        lr_scheduler=None,
        key_metric: str = "val_mean_dice",
        resume: bool | str = True,
    ) -> None:
        self.output_dir = output_dir
        self.network = network
        self.optimizer = optimizer
        self.evaluator = evaluator
        self.lr_scheduler = lr_scheduler
        self.key_metric = key_metric
        # "--resume false" reaches us as a string from the command line
        self.resume = resume.strip().lower() in ("1", "true", "yes") if isinstance(resume, str) else bool(resume)
        self.best = -math.inf

    def attach(self, trainer) -> None:
        from ignite.engine import Events

        trainer.add_event_handler(Events.STARTED, self._resume)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._save_last)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.COMPLETED, self._save_best)

    def _read_last(self, path: str) -> dict:
        try:
            state = _read_checkpoint(path)
            missing = {"network", "optimizer", "epoch", "iteration"} - set(state)
            if missing:
                raise CheckpointError(f"it lacks {sorted(missing)}")
            return state
        except CheckpointError as err:
            best = os.path.join(self.output_dir, BEST_CHECKPOINT)
            raise CheckpointError(
                f"cannot resume: {path} is truncated or corrupt ({err}). Start over with --resume false (or delete "
                f"{path})" + (f"; the best weights so far are in {best}, which evaluate.json and inference.json use "
                              "(copy it first: a new run overwrites it)." if os.path.isfile(best) else ".")
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
        path = os.path.join(self.output_dir, LAST_CHECKPOINT)
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
        if _rank() == 0:
            logger.info("resumed from %s at epoch %d (best %s %.4f)", path, trainer.state.epoch, self.key_metric, self.best)
        if trainer.state.epoch >= max_epochs and _rank() == 0:
            logger.info("already trained %d epochs (epochs=%d): nothing to do; raise --epochs to continue",
                        trainer.state.epoch, max_epochs)

    def _save_best(self, evaluator) -> None:
        value = evaluator.state.metrics.get(self.key_metric)
        if value is None or not value > self.best:
            return
        self.best = float(value)
        if _rank() == 0:
            os.makedirs(self.output_dir, exist_ok=True)
            _atomic_save(_unwrap(self.network).state_dict(), os.path.join(self.output_dir, BEST_CHECKPOINT))

    def _save_last(self, trainer) -> None:
        if _rank() != 0:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        state = {
            "network": _unwrap(self.network).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": None if self.lr_scheduler is None else self.lr_scheduler.state_dict(),
            "epoch": trainer.state.epoch,
            "iteration": trainer.state.iteration,
            "best_metric": self.best,
        }
        scaler = getattr(trainer, "scaler", None)
        if scaler is not None:
            state["grad_scaler"] = scaler.state_dict()
        _atomic_save(state, os.path.join(self.output_dir, LAST_CHECKPOINT))


def _replayable(scheduler) -> bool:
    schedulers = torch.optim.lr_scheduler
    return isinstance(scheduler, schedulers.LRScheduler) and not isinstance(scheduler, schedulers.ReduceLROnPlateau)


class EpochSeeds:
    """Seed every random stream at the start of each epoch from ``(seed, epoch, rank)``: torch (CPU and CUDA),
    NumPy, Python's ``random`` and the random transforms of ``dataloader``'s dataset (the sampler's
    shuffle and the workers' seeds come from torch's). Each epoch's randomness then depends on nothing
    that happened before it, so a run resumed at epoch ``k`` trains epoch ``k + 1`` exactly as the
    uninterrupted run did."""

    def __init__(self, seed: int, dataloader) -> None:
        self.seed = int(seed)
        self.dataloader = dataloader

    def attach(self, trainer) -> None:
        from ignite.engine import Events

        trainer.add_event_handler(Events.EPOCH_STARTED, self._seed)

    def epoch_seed(self, epoch: int) -> int:
        """One seed per (seed, epoch) and process: ranks of a multi-process run augment differently."""
        return ((self.seed * 1_000_003 + epoch) * 1_009 + _rank()) % (2**31 - 1)

    def _seed(self, trainer) -> None:
        import numpy as np
        from monai.data.utils import set_rnd

        seed = self.epoch_seed(trainer.state.epoch)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        set_rnd(self.dataloader.dataset, seed)


class EpochSummary:
    """One line per epoch (loss, lr, validation mean and per-class Dice) to the log, ``history.csv`` and TensorBoard."""

    def __init__(
        self,
        output_dir: str,
        optimizer: torch.optim.Optimizer,
        class_names: Sequence[str],
        evaluator=None,
        include_background: bool = False,
        mean_metric: str = "val_mean_dice",
        class_metric: str = "val_class_dice",
    ) -> None:
        self.output_dir = output_dir
        self.optimizer = optimizer
        self.evaluator = evaluator
        self.names = list(class_names)[0 if include_background else 1 :]
        self.mean_metric = mean_metric
        self.class_metric = class_metric
        self._losses: list[float] = []
        self._lr = 0.0
        self._writer = None

    def attach(self, trainer) -> None:
        from ignite.engine import Events

        trainer.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._summarise)
        trainer.add_event_handler(Events.COMPLETED, self._close)

    def _start_epoch(self, _trainer) -> None:
        self._losses.clear()
        self._lr = self.optimizer.param_groups[0]["lr"]  # the rate this epoch trains with

    def _collect(self, trainer) -> None:
        output = trainer.state.output
        item = output[0] if isinstance(output, list) else output
        self._losses.append(float(item["loss"]))

    def _validation(self, epoch: int) -> tuple[float | None, list[float]]:
        ev = self.evaluator
        if ev is None or ev.state.epoch != epoch or self.mean_metric not in ev.state.metrics:
            return None, []
        per_class = torch.as_tensor(ev.state.metrics.get(self.class_metric, [])).flatten().tolist()
        return float(ev.state.metrics[self.mean_metric]), per_class

    def _summarise(self, trainer) -> None:
        if _rank() != 0:
            return
        epoch = trainer.state.epoch
        loss = sum(self._losses) / max(1, len(self._losses))
        lr = self._lr
        mean_dice, per_class = self._validation(epoch)
        row = {"epoch": epoch, "loss": loss, "lr": lr, "val_mean_dice": "" if mean_dice is None else mean_dice}
        row.update({f"val_dice_{n}": (per_class[i] if i < len(per_class) else "") for i, n in enumerate(self.names)})
        text = f"epoch {epoch}/{trainer.state.max_epochs} loss {loss:.4f} lr {lr:.2e}"
        if mean_dice is not None:
            classes = " ".join(f"{n} {v:.4f}" for n, v in zip(self.names, per_class))
            text += f" val_mean_dice {mean_dice:.4f} [{classes}]"
        logger.info(text)
        os.makedirs(self.output_dir, exist_ok=True)
        write_history(os.path.join(self.output_dir, HISTORY_FILE), row)
        self._tensorboard(epoch, loss, lr, mean_dice, per_class)

    def _tensorboard(self, epoch, loss, lr, mean_dice, per_class) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(os.path.join(self.output_dir, "tensorboard"))
        self._writer.add_scalar("train/loss", loss, epoch)
        self._writer.add_scalar("train/lr", lr, epoch)
        if mean_dice is not None:
            self._writer.add_scalar("val/mean_dice", mean_dice, epoch)
            for name, value in zip(self.names, per_class):
                self._writer.add_scalar(f"val/dice_{name}", value, epoch)
        self._writer.flush()

    def _close(self, _trainer) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def write_history(path: str, row: dict) -> None:
    """Add ``row`` to the CSV at ``path``, dropping rows of its epoch and later (a resumed run rewrites its
    future), atomically: a kill during the write leaves the previous complete file."""
    rows = []
    if os.path.isfile(path):
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if str(r.get("epoch", "")).isdigit() and int(r["epoch"]) < row["epoch"]]
    rows.append(row)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(row), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(path, lambda f: f.write(text.getvalue().encode()))


class EvaluationReport:
    """Per-case, per-class Dice and GDL score of an evaluator run, written as CSV, JSON, a table and overlays.

    Expects decollated evaluator outputs with one-hot ``pred`` and ``label`` (C x spatial) and the
    ``image``. The GDL score is ``1 - SudreGeneralizedDiceLoss`` of the hard prediction, over the
    foreground classes. Overlays: the mid axial slice of the first ``num_overlays`` cases.
    """

    def __init__(self, output_dir: str, class_names: Sequence[str], num_overlays: int = 3) -> None:
        self.output_dir = os.path.join(output_dir, "evaluation")
        self.names = list(class_names)
        self.num_overlays = num_overlays
        self.rows: list[dict] = []

    def attach(self, evaluator) -> None:
        from ignite.engine import Events

        evaluator.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        evaluator.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, evaluator) -> None:
        from monai.metrics import compute_dice

        from monai_gdl.bundle.datasets import case_id
        from monai_gdl.losses import generalized_dice_loss

        for item in evaluator.state.output:
            pred, label = item["pred"].float()[None], item["label"].float()[None]
            dice = compute_dice(pred, label, include_background=False, ignore_empty=False)[0]
            gdl = generalized_dice_loss(pred, label, include_background=False, validate=False)
            meta = getattr(item["image"], "meta", {}) or {}
            case = case_id(str(meta.get("filename_or_obj", f"case_{len(self.rows)}")))
            row = {"case": case}
            row.update({f"dice_{n}": float(v) for n, v in zip(self.names[1:], dice)})
            row.update({"mean_dice": float(dice.mean()), "gdl_score": 1.0 - float(gdl)})
            self.rows.append(row)
            if len(self.rows) <= self.num_overlays and _rank() == 0:
                self._overlay(case, item["image"], item["label"], item["pred"])

    def _overlay(self, case: str, image, label, pred) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        img = torch.as_tensor(image)[0].float().cpu()
        z = img.shape[-1] // 2
        lab = torch.as_tensor(label).argmax(0).cpu()[..., z]
        prd = torch.as_tensor(pred).argmax(0).cpu()[..., z]
        fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
        for ax, overlay, title in zip(axes, (None, lab, prd), ("image", "label", "prediction")):
            ax.imshow(img[..., z].T, cmap="gray", origin="lower")
            if overlay is not None:
                ax.imshow(overlay.T.float().masked_fill(overlay.T == 0, float("nan")), cmap="autumn", alpha=0.5,
                          origin="lower", vmin=0, vmax=max(1, len(self.names) - 1))
            ax.set_title(f"{case}: {title}", fontsize=8)
            ax.axis("off")
        fig.tight_layout()
        os.makedirs(self.output_dir, exist_ok=True)
        fig.savefig(os.path.join(self.output_dir, f"overlay_{case}.png"), dpi=80)
        plt.close(fig)

    def _write(self, _evaluator) -> None:
        if _rank() != 0 or not self.rows:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        keys = list(self.rows[0])
        with open(os.path.join(self.output_dir, "per_case.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        summary = {k: sum(r[k] for r in self.rows) / len(self.rows) for k in keys if k != "case"}
        summary["num_cases"] = len(self.rows)
        with open(os.path.join(self.output_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        lines = ["| metric | mean over cases |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in summary.items() if k != "num_cases"]
        lines.append(f"| cases | {len(self.rows)} |")
        print(f"evaluation of {len(self.rows)} cases, written to {self.output_dir}:\n" + "\n".join(lines), flush=True)
