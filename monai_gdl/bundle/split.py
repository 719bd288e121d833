"""The train/validation split a run used, recorded, so evaluation scores the cases training held out.

An MSD folder without a ``validation`` list is split by a seeded shuffle (``--split_seed``, which defaults to
``--seed``, and ``--val_fraction``; a run with another ``--seed`` and the same ``--split_seed`` trains another model
on the same cases, e.g. for an ensemble scored on the same held-out cases);
evaluation derived it again from its own arguments, so ``--seed 2`` at training and the default at
evaluation scored training cases and inflated the Dice. Training now writes ``OUTPUT_DIR/split.json``
(the dataset folder, the seed and fraction, and every case by name; also in ``models/last.pt``), and
evaluation uses it: with no ``--seed``/``--val_fraction`` on the command line the recorded split is
used; asking for a different one is refused, naming both. A resumed run must use the same split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from monai_gdl.bundle.atomic import atomic_write
from monai_gdl.bundle.datasets import DatasetError, case_id, msd_datalist
from monai_gdl.bundle.ranks import rank

__all__ = ["SPLIT_FILE", "SplitError", "evaluation_datalist", "record_split", "recorded_split"]

SPLIT_FILE = "split.json"


class SplitError(DatasetError):
    """An evaluation or a resumed training on another split than the one recorded."""


def _describe(split: dict) -> str:
    how = f"val_fraction {split['val_fraction']}"
    if split.get("num_folds"):
        how = f"fold {split['fold']} of {split['num_folds']}"
    return f"split seed {split['seed']}, {how}, {len(split['validation'])} validation cases"


def _arguments(split: dict) -> str:
    """The command-line arguments that ask for ``split``."""
    if split.get("num_folds"):
        return f"--split_seed {split['seed']} --fold {split['fold']} --num_folds {split['num_folds']}"
    return f"--split_seed {split['seed']} --val_fraction {split['val_fraction']}"


def recorded_split(output_dir: str) -> dict | None:
    """The split recorded in ``output_dir`` (None before the first training there)."""
    path = os.path.join(output_dir, SPLIT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _given_on_the_command_line() -> dict[str, str]:
    """The split's arguments the running ``monai.bundle`` command sets (none from Python), by their key in
    ``split.json``, each with the argument as written: ``seed`` is the split's seed, set by ``--split_seed`` or,
    where that is not given, by ``--seed`` (its default)."""
    from monai_gdl.bundle.console import command_line_keys

    keys = set(command_line_keys())
    given = {k: k for k in keys if k in ("val_fraction", "fold", "num_folds")}
    if "split_seed" in keys or "seed" in keys:
        given["seed"] = "split_seed" if "split_seed" in keys else "seed"
    return given


def record_split(
    output_dir: str,
    dataset_dir: str,
    seed: int,
    val_fraction: float,
    training: Sequence[dict],
    validation: Sequence[dict],
    fold: int = 0,
    num_folds: int = 0,
) -> dict:
    """Write ``output_dir/split.json`` (rank 0; ``seed`` is the split's seed) and return it; a folder that
    already records another split (a resumed run with another ``--split_seed`` or ``--fold``) is refused, naming
    both."""
    split = {
        "dataset_dir": os.path.abspath(dataset_dir),
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "fold": int(fold) if num_folds else 0,
        "num_folds": int(num_folds),
        "training": sorted(case_id(c["image"]) for c in training),
        "validation": sorted(case_id(c["image"]) for c in validation),
    }
    recorded = recorded_split(output_dir)
    cases = ("training", "validation")
    if recorded is not None and [recorded[k] for k in cases] != [split[k] for k in cases]:
        raise SplitError(
            f"{os.path.join(output_dir, SPLIT_FILE)} records the split this folder's run trained on "
            f"({_describe(recorded)}), but this run asks for another ({_describe(split)}): resuming would train on "
            f"former validation cases. Pass {_arguments(recorded)}, or another --output_dir."
        )
    if rank() == 0 and recorded != split:
        os.makedirs(output_dir, exist_ok=True)
        atomic_write(os.path.join(output_dir, SPLIT_FILE), lambda f: f.write(json.dumps(split, indent=2).encode()))
    return split


def evaluation_datalist(
    output_dir: str, dataset_dir: str, val_fraction: float, seed: int, fold: int = 0, num_folds: int = 0
) -> list[dict]:
    """The validation cases of the run in ``output_dir``: the recorded split when there is one (an explicit
    ``--split_seed`` or ``--seed``, ``--val_fraction``, ``--fold`` or ``--num_folds`` that disagrees with it is
    refused), else the split from the arguments."""
    asked = msd_datalist(dataset_dir, "validation", val_fraction, seed, fold=fold, num_folds=num_folds)
    recorded = recorded_split(output_dir)
    if recorded is None:
        return asked
    if sorted(case_id(c["image"]) for c in asked) == recorded["validation"]:
        return asked
    asked_for = {"seed": seed, "val_fraction": val_fraction, "fold": fold, "num_folds": num_folds}
    conflicting = sorted(
        spelled
        for key, spelled in _given_on_the_command_line().items()
        if float(asked_for[key]) != float(recorded.get(key, 0))
    )
    if conflicting:
        described = _describe({**asked_for, "validation": asked})
        raise SplitError(
            f"--{' --'.join(conflicting)} asks to evaluate on another split ({described}) than the model in "
            f"{output_dir} was trained with ({_describe(recorded)}, recorded in "
            f"{os.path.join(output_dir, SPLIT_FILE)}): some evaluated cases would be training cases. Drop "
            f"{'that argument' if len(conflicting) == 1 else 'those arguments'} to evaluate on the recorded "
            "validation cases."
        )
    every = msd_datalist(dataset_dir, "training", val_fraction, seed, False, fold=fold, num_folds=num_folds) + asked
    by_id = {case_id(c["image"]): c for c in every}
    missing = [c for c in recorded["validation"] if c not in by_id]
    if missing:
        raise SplitError(
            f"{os.path.join(output_dir, SPLIT_FILE)} names validation cases that {dataset_dir} does not hold "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): evaluate with the --dataset_dir the "
            f"model was trained on ({recorded['dataset_dir']})."
        )
    return [by_id[c] for c in recorded["validation"]]
