"""A cross-validation's result: each fold's validation Dice and the mean over every case validated once.

Each fold trained with ``--fold k --num_folds N --output_dir DIR`` records its split in ``DIR/split.json``
and its epochs in ``DIR/logs/history.csv``; :func:`summarise_folds` reads both for every fold given and
:func:`format_folds` prints the fold-wise table (``python -m monai_gdl.report DIR0 DIR1 ...``). The mean row
weighs each fold by its validation cases, so it is the mean over all cases, each scored by the one fold that
held it out (nnU-Net's cross-validation figure). The last validated epoch is the figure; the best epoch (the
one ``model.pt`` keeps) was chosen on the same cases, so it is optimistic and shown apart.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from monai_gdl.bundle.epoch_summary import HISTORY_FILE
from monai_gdl.bundle.split import SPLIT_FILE, recorded_split

__all__ = ["CrossValidationError", "FoldResult", "format_folds", "read_fold", "summarise_folds"]


class CrossValidationError(ValueError):
    """Folders that are not the folds of one cross-validation, or a fold without a validated epoch."""


@dataclass(frozen=True)
class FoldResult:
    """One fold's run: its split and its validation Dice at the last validated epoch and at the best."""

    output_dir: str
    fold: int
    num_folds: int
    dataset_dir: str
    seed: int
    validation: tuple[str, ...]
    epochs: int
    last_epoch: int
    last_mean: float
    last_per_class: dict[str, float]
    best_epoch: int
    best_mean: float
    seconds: float


def _float(text: str | None) -> float:
    return float(text) if text not in (None, "") else math.nan


def read_fold(output_dir: str) -> FoldResult:
    """The fold trained in ``output_dir``; a folder without a fold split or without a validated epoch is an
    error naming the folder and what to do."""
    split = recorded_split(output_dir)
    if split is None:
        raise CrossValidationError(
            f"{output_dir} has no {SPLIT_FILE}: not a training output folder. Train each fold with "
            "--fold k --num_folds N --output_dir DIR and pass those folders."
        )
    if not split.get("num_folds"):
        raise CrossValidationError(
            f"{output_dir} trained on a --val_fraction {split.get('val_fraction')} split, not on a cross-validation "
            "fold: train it with --fold k --num_folds N."
        )
    history = os.path.join(output_dir, "logs", HISTORY_FILE)
    rows: list[dict] = []
    if os.path.isfile(history):
        with open(history, newline="") as f:
            rows = list(csv.DictReader(f))
    validated = [r for r in rows if r.get("val_mean_dice") not in (None, "")]
    if not validated:
        raise CrossValidationError(
            f"{history} has no validated epoch yet: let fold {split['fold']}'s training run to its first "
            "validation (or resume it with the same command)."
        )
    last = validated[-1]
    best = max(validated, key=lambda r: (_float(r["val_mean_dice"]), -int(r["epoch"])))  # the first best
    return FoldResult(
        output_dir=output_dir,
        fold=int(split["fold"]),
        num_folds=int(split["num_folds"]),
        dataset_dir=str(split["dataset_dir"]),
        seed=int(split["seed"]),
        validation=tuple(split["validation"]),
        epochs=len(rows),
        last_epoch=int(last["epoch"]),
        last_mean=_float(last["val_mean_dice"]),
        last_per_class={k[len("val_dice_") :]: _float(v) for k, v in last.items() if k.startswith("val_dice_")},
        best_epoch=int(best["epoch"]),
        best_mean=_float(best["val_mean_dice"]),
        seconds=sum(_float(r.get("epoch_s", "")) for r in rows if r.get("epoch_s") not in (None, "")),
    )


def _same(results: Sequence[FoldResult], attribute: str, what: str) -> None:
    first = results[0]
    for other in results[1:]:
        if getattr(other, attribute) != getattr(first, attribute):
            raise CrossValidationError(
                f"{first.output_dir} and {other.output_dir} are not folds of one cross-validation: {what} "
                f"{getattr(first, attribute)!r} against {getattr(other, attribute)!r}. Pass the folds of one "
                "--num_folds / --split_seed / --dataset_dir."
            )


def summarise_folds(output_dirs: Sequence[str]) -> list[FoldResult]:
    """The folds in ``output_dirs``, by fold number; they must be folds of one cross-validation (one dataset,
    seed and number of folds; each fold once; validation cases disjoint)."""
    if not output_dirs:
        raise CrossValidationError("no fold folders given: pass each fold's --output_dir.")
    results = sorted((read_fold(d) for d in output_dirs), key=lambda r: r.fold)
    _same(results, "dataset_dir", "dataset")
    _same(results, "num_folds", "--num_folds")
    _same(results, "seed", "--split_seed")
    for a, b in zip(results, results[1:]):
        if a.fold == b.fold:
            raise CrossValidationError(
                f"fold {a.fold} is given twice ({a.output_dir} and {b.output_dir}): pass each fold's folder once."
            )
    seen: dict[str, int] = {}
    for r in results:
        for case in r.validation:
            if case in seen:
                raise CrossValidationError(
                    f"case {case} is a validation case of fold {seen[case]} and of fold {r.fold} "
                    f"({r.output_dir}): the folds' splits disagree; retrain the folds with one --seed."
                )
            seen[case] = r.fold
    return results


def _weighted(values: Sequence[float], weights: Sequence[int]) -> float:
    pairs = [(v, w) for v, w in zip(values, weights) if not math.isnan(v)]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else math.nan


def format_folds(results: Sequence[FoldResult]) -> str:
    """The fold-wise table (Markdown), the mean over all validated cases, and which folds are missing."""
    classes = list(results[0].last_per_class)
    head = ["fold", "validation cases", "epochs", "val mean Dice (last)", *classes, "best (epoch)", "epochs' time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [str(r.fold), str(len(r.validation)), str(r.epochs), f"{r.last_mean:.4f}"]
        cells += [f"{r.last_per_class.get(c, math.nan):.4f}" for c in classes]
        cells += [f"{r.best_mean:.4f} ({r.best_epoch})", f"{r.seconds / 60:.1f} min"]
        lines.append("| " + " | ".join(cells) + " |")
    cases = [len(r.validation) for r in results]
    cells = ["mean over cases", str(sum(cases)), "", f"{_weighted([r.last_mean for r in results], cases):.4f}"]
    cells += [f"{_weighted([r.last_per_class.get(c, math.nan) for r in results], cases):.4f}" for c in classes]
    minutes = sum(r.seconds for r in results) / 60
    cells += [f"{_weighted([r.best_mean for r in results], cases):.4f}", f"{minutes:.1f} min"]
    lines.append("| " + " | ".join(cells) + " |")
    missing = sorted(set(range(results[0].num_folds)) - {r.fold for r in results})
    if missing:
        lines.append(
            f"fold{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {results[0].num_folds} not "
            f"given: the mean covers the {sum(cases)} cases of the folds above, not the whole dataset."
        )
    return "\n".join(lines)
