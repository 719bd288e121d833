"""Plots of a training run (the command line is ``python -m monai_gdl.report OUTPUT_DIR``).

Reads ``history.csv`` (written every epoch by :class:`monai_gdl.bundle.handlers.EpochSummary`) and draws
the training loss and the validation mean and per-class Dice against the epoch into
``OUTPUT_DIR/training_curves.png``. Mid-slice overlays of image, label and prediction are written
by the evaluate step (``configs/evaluate.json``) into ``OUTPUT_DIR/evaluation/``; this command
lists them with the evaluation summary when they exist.
"""

from __future__ import annotations

import csv
import os

__all__ = ["plot_training_curves"]


def _floats(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_training_curves(output_dir: str) -> str:
    """Draw ``training_curves.png`` from ``history.csv`` in ``output_dir`` and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = os.path.join(output_dir, "history.csv")
    if not os.path.isfile(history):
        raise FileNotFoundError(f"{history} not found: train with configs/train.json and --output_dir {output_dir} first.")
    with open(history) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{history} has no epochs yet.")
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(*_floats(rows, "loss"), label="training loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss")
    ax_dice.plot(*_floats(rows, "val_mean_dice"), "k-", linewidth=2, label="mean")
    for key in rows[0]:
        if key.startswith("val_dice_"):
            ax_dice.plot(*_floats(rows, key), label=key[len("val_dice_") :])
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("Dice")
    ax_dice.set_ylim(0, 1)
    ax_dice.set_title("validation Dice")
    ax_dice.legend(loc="lower right")
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = os.path.join(output_dir, "training_curves.png")
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
