"""The training-curve plot: ``LOG_DIR/training_curves.png`` from ``LOG_DIR/history.csv``.

Training writes it after each validation and at the end (:class:`monai_gdl.bundle.epoch_summary.EpochSummary`);
``python -m monai_gdl.report OUTPUT_DIR`` redraws it for a run.
"""

from __future__ import annotations

import csv
import os

__all__ = ["plot_training_curves"]


def _floats(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _title(log_dir: str, loss_name: str) -> str:
    """The run (its output folder's name) and the loss (training names it; a redraw by ``python -m
    monai_gdl.report`` names the run only)."""
    run = os.path.basename(os.path.dirname(os.path.abspath(log_dir))) or log_dir
    return f"{run}: {loss_name}" if loss_name else run


def plot_training_curves(log_dir: str, loss_name: str = "") -> str:
    """Draw ``training_curves.png`` from ``history.csv`` in ``log_dir`` and return its path (written atomically:
    a viewer or a kill never sees half a PNG). The title names the run and ``loss_name``; the best validation
    epoch (the one ``model.pt`` holds) is marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = os.path.join(log_dir, "history.csv")
    if not os.path.isfile(history):
        raise FileNotFoundError(
            f"{history} not found: train with configs/train.json (it writes OUTPUT_DIR/logs/) first."
        )
    with open(history) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{history} has no epochs yet.")
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(*_floats(rows, "loss"), label="training loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss")
    epochs, mean = _floats(rows, "val_mean_dice")
    ax_dice.plot(epochs, mean, "k-", linewidth=2, label="mean")
    for key in rows[0]:
        if key.startswith("val_dice_"):
            ax_dice.plot(*_floats(rows, key), label=key[len("val_dice_") :])
    if mean:
        best = max(range(len(mean)), key=lambda i: (mean[i], -i))  # the first best, as the checkpoint keeps it
        ax_dice.plot([epochs[best]], [mean[best]], "r*", markersize=12, label=f"best {mean[best]:.3f} (model.pt)")
        ax_dice.axvline(epochs[best], color="r", alpha=0.3, linestyle="--")
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("Dice")
    ax_dice.set_ylim(0, 1)
    ax_dice.set_title("validation Dice")
    ax_dice.legend(loc="lower right", framealpha=0.9)
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
    fig.suptitle(_title(log_dir, loss_name))
    fig.tight_layout()
    out = os.path.join(log_dir, "training_curves.png")
    tmp = f"{out}.tmp-{os.getpid()}"
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    os.replace(tmp, out)
    return out
