"""Evaluation overlays (image, label, prediction, legend, the case's Dice) and the evaluation summary line."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from monai_gdl.bundle.ranks import rank

__all__ = ["EvaluationOverlays"]

logger = logging.getLogger("monai_gdl.bundle")


class EvaluationOverlays:
    """Mid-slice overlays (image, label, prediction, a legend of the classes, the case's per-class Dice) of
    the first ``num_overlays`` cases of an evaluator run, and a closing summary line. The metrics
    themselves are MONAI's (``MeanDice``, ``GeneralizedDiceScore``), written per case by ``MetricsSaver``.

    Expects decollated outputs with one-hot ``pred`` and ``label_key`` (C x spatial, the same grid) and
    the ``image`` on that grid.
    """

    def __init__(
        self,
        eval_dir: str,
        class_names: Sequence[str],
        num_overlays: int = 3,
        label_key: str = "label",
        metric: str = "val_mean_dice",
    ) -> None:
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

        if rank() != 0:
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
                ax.imshow(
                    (shown - 1).masked_fill(shown == 0, float("nan")),
                    cmap=cmap,
                    alpha=0.55,
                    origin="lower",
                    vmin=-0.5,
                    vmax=len(colours) - 0.5,
                    interpolation="nearest",
                )
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        scores = ", ".join(f"{n} {d:.3f}" for n, d in zip(self.names[1:], dice))
        fig.suptitle(f"{case} (slice {z}): Dice {scores}", fontsize=9)
        fig.legend(
            handles=[Patch(color=colours[i], label=n) for i, n in enumerate(self.names[1:])],
            loc="lower center",
            ncol=max(1, len(self.names) - 1),
            fontsize=8,
            frameon=False,
        )
        fig.tight_layout(rect=(0, 0.07, 1, 0.95))
        os.makedirs(self.eval_dir, exist_ok=True)
        path = os.path.join(self.eval_dir, f"overlay_{case}.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path

    def _summary(self, evaluator) -> None:
        if rank() != 0:
            return
        metrics = dict(evaluator.state.metrics)
        cases = len(evaluator.data_loader.dataset) if hasattr(evaluator.data_loader, "dataset") else "all"
        first = [self.metric] if self.metric in metrics else []
        values = "".join(f", {name} {float(metrics[name]):.4f}" for name in first + sorted(set(metrics) - set(first)))
        logger.info(
            "evaluated %s cases%s: per-case metrics (CSV) in %s, overlays of the first %d (--num_overlays N)",
            cases,
            values,
            self.eval_dir,
            len(self.written),
        )


def _original_image(path: str, shape) -> torch.Tensor:
    """The image as stored in ``path``: the grid the original-space label and prediction are on (the
    network's input is resampled and reoriented)."""
    import nibabel as nib

    return torch.as_tensor(np.asanyarray(nib.load(path).dataobj), dtype=torch.float32).reshape(tuple(shape))
