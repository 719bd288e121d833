"""Ignite handlers the bundle configs use where MONAI's own do not give what we promise: kill-safe
checkpoints with an exact resume, one line per epoch with ``history.csv``, evaluation overlays.

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
import logging
import math
import os
import random
import shutil
import warnings
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "EpochSeeds",
    "EpochSummary",
    "EvaluationOverlays",
    "OutputDirError",
    "TrainingCheckpoints",
    "check_checkpoint",
    "check_output_dir",
    "report_predictions",
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
    """Temporary files (``<name>.tmp-<pid>``) of writers that no longer run, in ``output_dir`` and its
    folders (``models/``, ``logs/``): what a kill leaves."""
    root = glob.escape(output_dir)
    for path in glob.glob(os.path.join(root, "*.tmp-*")) + glob.glob(os.path.join(root, "*", "*.tmp-*")):
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


def check_checkpoint(path: str, network: torch.nn.Module) -> None:
    """Before any data is loaded: ``path`` exists, can be read and fits ``network`` (MONAI's
    ``CheckpointLoader`` then loads it), else a :class:`CheckpointError` saying what to do."""
    if not os.path.isfile(path):
        raise CheckpointError(
            f"no checkpoint at {path}; train first (configs/train.json with the same --output_dir or --bundle_root), "
            "or pass --ckpt_dir with the folder that holds model.pt."
        )
    checkpoint = _read_checkpoint(path)
    _network_mismatch(checkpoint.get("model", checkpoint.get("network", checkpoint)), network, path)


def _read_checkpoint(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}).") from err


def _network_mismatch(state: dict, network: torch.nn.Module, path: str) -> None:
    own = _unwrap(network).state_dict()
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
    _network_mismatch(state, network, path)
    _unwrap(network).load_state_dict(state)


class TrainingCheckpoints:
    """Save ``last.pt`` every epoch and ``model.pt`` on a new best validation metric; resume from ``last.pt``.

    Kept instead of MONAI's ``CheckpointSaver``/``CheckpointLoader``: they neither fsync (a power loss
    can leave a torn file), nor replay the LR schedule to a raised ``--epochs``, nor carry the best
    metric over a resume.

    ``last.pt`` holds network, optimizer, scheduler, trainer state (epoch, iteration) and the best
    metric so far. Attach to the trainer *after* the ValidationHandler, so the epoch's validation has
    run when ``last.pt`` is written.
    """

    def __init__(
        self,
        ckpt_dir: str,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        evaluator=None,
        lr_scheduler=None,
        key_metric: str = "val_mean_dice",
        resume: bool | str = True,
    ) -> None:
        self.ckpt_dir = ckpt_dir
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
            best = os.path.join(self.ckpt_dir, BEST_CHECKPOINT)
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
            os.makedirs(self.ckpt_dir, exist_ok=True)
            _atomic_save(_unwrap(self.network).state_dict(), os.path.join(self.ckpt_dir, BEST_CHECKPOINT))

    def _save_last(self, trainer) -> None:
        if _rank() != 0:
            return
        os.makedirs(self.ckpt_dir, exist_ok=True)
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
        _atomic_save(state, os.path.join(self.ckpt_dir, LAST_CHECKPOINT))


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
    """One line per epoch on the console (loss, lr, validation mean and per-class Dice), the same row in
    ``history.csv`` (atomic; a resumed run rewrites its future rows) and ``training_curves.png`` after each
    validation and at the end. MONAI's ``StatsHandler`` logs per iteration and per engine, so it cannot
    give this one line."""

    def __init__(
        self,
        log_dir: str,
        optimizer: torch.optim.Optimizer,
        class_names: Sequence[str],
        evaluator=None,
        include_background: bool = False,
        mean_metric: str = "val_mean_dice",
    ) -> None:
        self.log_dir = log_dir
        self.optimizer = optimizer
        self.evaluator = evaluator
        self.names = list(class_names)[0 if include_background else 1 :]
        self.mean_metric = mean_metric
        self._losses: list[float] = []
        self._lr = 0.0

    def attach(self, trainer) -> None:
        from ignite.engine import Events

        trainer.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._summarise)
        trainer.add_event_handler(Events.COMPLETED, self._finish)

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
        # per case and class (NaN where a case lacks the class), as MONAI's MeanDice keeps them
        details = getattr(ev.state, "metric_details", {}).get(self.mean_metric)
        per_class = [] if details is None else torch.nanmean(torch.as_tensor(details).float(), dim=0).tolist()
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
        os.makedirs(self.log_dir, exist_ok=True)
        write_history(os.path.join(self.log_dir, HISTORY_FILE), row)
        if mean_dice is not None:
            self._plot()

    def _plot(self) -> str:
        from monai_gdl.bundle.report import plot_training_curves

        return plot_training_curves(self.log_dir)

    def _finish(self, trainer) -> None:
        if _rank() == 0 and os.path.isfile(os.path.join(self.log_dir, HISTORY_FILE)):
            logger.info("trained %d epochs: curves in %s, history in %s", trainer.state.epoch, self._plot(),
                        os.path.join(self.log_dir, HISTORY_FILE))


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


class EvaluationOverlays:
    """Mid-slice overlays (image, label, prediction, a legend of the classes, the case's per-class Dice) of
    the first ``num_overlays`` cases of an evaluator run, and a closing summary line. The metrics
    themselves are MONAI's (``MeanDice``, ``GeneralizedDiceScore``), written per case by ``MetricsSaver``.

    Expects decollated outputs with one-hot ``pred`` and ``label_key`` (C x spatial, the same grid) and
    the ``image`` on that grid.
    """

    def __init__(self, eval_dir: str, class_names: Sequence[str], num_overlays: int = 3,
                 label_key: str = "label", metric: str = "val_mean_dice") -> None:
        self.eval_dir = eval_dir
        self.names = list(class_names)
        self.num_overlays = int(num_overlays)
        self.label_key = label_key
        self.metric = metric
        self.written: list[str] = []

    def attach(self, evaluator) -> None:
        from ignite.engine import Events

        evaluator.add_event_handler(Events.STARTED, lambda _: self.written.clear())
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        evaluator.add_event_handler(Events.COMPLETED, self._summary)

    def _collect(self, evaluator) -> None:
        from monai.metrics import compute_dice

        from monai_gdl.bundle.datasets import case_id

        if _rank() != 0:
            return
        for item in evaluator.state.output:
            if len(self.written) >= self.num_overlays:
                return
            pred, label = torch.as_tensor(item["pred"]).float(), torch.as_tensor(item[self.label_key]).float()
            dice = compute_dice(pred[None], label[None], include_background=False, ignore_empty=False)[0].tolist()
            source = str((getattr(item["image"], "meta", {}) or {}).get("filename_or_obj", ""))
            image = _original_image(source, label.shape[1:])
            case = case_id(source) if source else f"case_{len(self.written)}"
            self.written.append(self._overlay(case, image, label, pred, dice))

    def _overlay(self, case: str, image, label, pred, dice: list[float]) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch

        img = torch.as_tensor(image).float().cpu()
        lab, prd = label.argmax(0).cpu(), pred.argmax(0).cpu()
        z = int(lab.sum(dim=(0, 1)).argmax()) if bool(lab.any()) else lab.shape[-1] // 2  # the slice with most label
        colours = plt.get_cmap("tab10")(range(max(1, len(self.names) - 1)))
        cmap = ListedColormap(colours)
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.8))
        for ax, overlay, title in zip(axes, (None, lab, prd), ("image", "label", "prediction")):
            ax.imshow(img[..., z].T, cmap="gray", origin="lower")
            if overlay is not None:
                shown = overlay[..., z].T.float()
                ax.imshow((shown - 1).masked_fill(shown == 0, float("nan")), cmap=cmap, alpha=0.55, origin="lower",
                          vmin=-0.5, vmax=len(colours) - 0.5, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        scores = ", ".join(f"{n} {d:.3f}" for n, d in zip(self.names[1:], dice))
        fig.suptitle(f"{case} (slice {z}): Dice {scores}", fontsize=9)
        fig.legend(handles=[Patch(color=colours[i], label=n) for i, n in enumerate(self.names[1:])],
                   loc="lower center", ncol=max(1, len(self.names) - 1), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.07, 1, 0.95))
        os.makedirs(self.eval_dir, exist_ok=True)
        path = os.path.join(self.eval_dir, f"overlay_{case}.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path

    def _summary(self, evaluator) -> None:
        if _rank() != 0:
            return
        value = evaluator.state.metrics.get(self.metric)
        cases = len(evaluator.data_loader.dataset) if hasattr(evaluator.data_loader, "dataset") else "all"
        mean = "" if value is None else f", {self.metric} {float(value):.4f}"
        logger.info("evaluated %s cases%s: per-case metrics (CSV) in %s, %d overlays", cases, mean, self.eval_dir,
                    len(self.written))


def _original_image(path: str, shape) -> torch.Tensor:
    """The image as stored in ``path``: the grid the original-space label and prediction are on (the
    network's input is resampled and reoriented)."""
    import nibabel as nib

    return torch.as_tensor(np.asanyarray(nib.load(path).dataobj), dtype=torch.float32).reshape(tuple(shape))


def report_predictions(datalist: Sequence[dict], prediction_dir: str) -> int:
    """The inference summary line: how many segmentations were written, and where. Returns the count."""
    from monai_gdl.bundle.datasets import case_id

    written = [d for d in datalist if glob.glob(os.path.join(glob.escape(prediction_dir), f"{case_id(d['image'])}_seg.nii*"))]
    logger.info("wrote %d segmentation(s) of %d image(s) to %s", len(written), len(datalist), prediction_dir)
    return len(written)
