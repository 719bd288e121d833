"""Inference with several trained folds at once, as nnU-Net's ``predict`` with ``-f 0 1 2 3 4``: one network per
fold (``FOLD_DIR/models/model.pt``), each one's softmax computed and the softmaxes averaged (MONAI's
``EnsembleEvaluator`` and ``MeanEnsembled`` do the running and the averaging; ``configs/ensemble.json`` wires them).
``configs/evaluate_ensemble.json`` scores such an average on held-out cases: only on cases every model was held out
from (models trained on one split with other ``--seed``s), never on cross-validation folds' own validation cases,
which the other folds trained on. What MONAI has no helper for is here: a loaded copy of the network per fold, the
folds' shared plan, and the cases all of them held out.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from monai_gdl.bundle.checkpoints import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    CheckpointError,
    network_mismatch,
    network_state,
    read_checkpoint,
)
from monai_gdl.bundle.checks import ArgumentError
from monai_gdl.bundle.planning import PLAN_FILE, PlanError, recorded_plan
from monai_gdl.bundle.ranks import unwrap
from monai_gdl.bundle.split import SPLIT_FILE, SplitError, evaluation_datalist, recorded_split

__all__ = ["fold_checkpoints", "fold_networks", "fold_plan", "held_out_by_all"]


def fold_checkpoints(
    fold_dirs: Sequence[str], checkpoint: str = BEST_CHECKPOINT, argument: str = "fold_dirs"
) -> list[str]:
    """``FOLD_DIR/models/CHECKPOINT`` of each fold folder, after checking the list: at least one folder, no folder
    twice, each holding a trained model. ``checkpoint``: ``model.pt`` (each training's best validated epoch, the
    default) or ``last.pt`` (its last epoch, which nnU-Net ensembles: chosen without looking at validation cases).
    ``argument``: the knob that gave the list, named in errors."""
    if checkpoint not in (BEST_CHECKPOINT, LAST_CHECKPOINT):
        raise ArgumentError(
            f"fold_checkpoint={checkpoint!r}; use {BEST_CHECKPOINT!r} (each training's best validated epoch) or "
            f"{LAST_CHECKPOINT!r} (its last epoch)."
        )
    if isinstance(fold_dirs, str) or not isinstance(fold_dirs, (list, tuple)) or not fold_dirs:
        raise ArgumentError(
            f"{argument}={fold_dirs!r}; give the trained folds' output folders as a list, e.g. "
            f"--{argument} \"['runs/fold0','runs/fold1']\"."
        )
    seen = [os.path.realpath(str(d)) for d in fold_dirs]
    twice = sorted({d for d in fold_dirs if seen.count(os.path.realpath(str(d))) > 1})
    if twice:
        raise ArgumentError(f"{argument} names {twice} more than once; list each trained fold once.")
    paths = [os.path.join(str(d), "models", checkpoint) for d in fold_dirs]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise CheckpointError(
            f"no trained model at {', '.join(missing)}; train each fold first (configs/train.json with "
            "--fold k --num_folds N --output_dir FOLD_DIR), then pass those folders as --fold_dirs."
        )
    return paths


def fold_networks(
    network: torch.nn.Module,
    fold_dirs: Sequence[str],
    checkpoint: str = BEST_CHECKPOINT,
    argument: str = "fold_dirs",
) -> list[torch.nn.Module]:
    """One copy of ``network`` per fold folder, each with that fold's ``models/CHECKPOINT`` loaded and in eval
    mode; a checkpoint from another network is refused, naming it. ``argument``: the knob that gave the folders
    (``second_fold_dirs`` for the second network of ``configs/ensemble_second_network.json``)."""
    networks = []
    for path in fold_checkpoints(fold_dirs, checkpoint, argument):
        state = network_state(read_checkpoint(path))
        network_mismatch(state, network, path)
        copy_ = copy.deepcopy(unwrap(network))
        copy_.load_state_dict(state)
        networks.append(copy_.eval())
    return networks


def _recorded(
    fold_dirs: Sequence[str],
    read: Callable[[str], Any],
    error: type[Exception],
    missing_message: str,
    checkpoint: str = BEST_CHECKPOINT,
) -> dict[str, Any]:
    """``read(folder)`` for each trained folder, by folder; folders where it finds nothing are refused with
    ``missing_message`` (``{}``: the folders)."""
    fold_checkpoints(fold_dirs, checkpoint)
    found = {str(d): read(str(d)) for d in fold_dirs}
    missing = [d for d, value in found.items() if value is None]
    if missing:
        raise error(missing_message.format(", ".join(missing)))
    return found


def fold_plan(fold_dirs: Sequence[str], checkpoint: str = BEST_CHECKPOINT) -> dict[str, Any]:
    """The plan the folds were trained with (``FOLD_DIR/plan.json``, the nnU-Net-like recipe); folds planned
    differently cannot be averaged voxel by voxel and are refused."""
    plans = _recorded(
        fold_dirs,
        recorded_plan,
        PlanError,
        f"no {PLAN_FILE} in {{}}: the nnU-Net-like recipe records its plan when it trains; pass the folds it "
        "trained, or leave configs/recipe_nnunet_like.json out for the default recipe's folds.",
        checkpoint,
    )
    first, *others = fold_dirs
    for other in others:
        if plans[str(other)] != plans[str(first)]:
            raise PlanError(
                f"{other} and {first} were trained with different plans ({PLAN_FILE} differs): their predictions "
                "do not share a grid and network; ensemble folds of one training setup."
            )
    return plans[str(first)]


def held_out_by_all(
    fold_dirs: Sequence[str],
    dataset_dir: str,
    val_fraction: float,
    seed: int,
    fold: int = 0,
    num_folds: int = 0,
    checkpoint: str = BEST_CHECKPOINT,
) -> list[dict]:
    """The validation cases an ensemble of ``fold_dirs`` is scored on: the split every folder records (each
    model trained on the same cases, e.g. ``--seed 1 --split_seed 0`` and ``--seed 2 --split_seed 0``). Folders
    holding out different cases (cross-validation folds: each fold's validation cases are the others' training
    cases) or recording no split are refused, naming them; the arguments are checked against the first folder's
    split as :func:`evaluation_datalist` does."""
    splits = _recorded(
        fold_dirs,
        recorded_split,
        SplitError,
        f"no {SPLIT_FILE} in {{}}: without the cases a model trained on, its held-out cases are unknown; score "
        "folders this bundle's train.json trained.",
        checkpoint,
    )
    first, *others = (str(d) for d in fold_dirs)
    for other in others:
        a, b = splits[first], splits[other]
        if a["dataset_dir"] != b["dataset_dir"]:
            raise SplitError(
                f"{other} was trained on {b['dataset_dir']}, {first} on {a['dataset_dir']}: ensemble models "
                "trained on one dataset."
            )
        if a["validation"] != b["validation"]:
            raise SplitError(
                f"{other} held out other cases than {first} ({len(set(b['validation']) - set(a['validation']))} "
                f"of its {len(b['validation'])} validation cases are training cases of {first}): the ensemble "
                "would be scored on cases some of its models trained on. Score an ensemble of models trained on "
                "one split (another --seed, the same --split_seed and --val_fraction or --fold); a "
                "cross-validation's folds are scored by python -m monai_gdl.report, each on its own cases."
            )
    return evaluation_datalist(first, dataset_dir, val_fraction, seed, fold, num_folds)
