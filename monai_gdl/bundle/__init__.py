"""The MONAI bundle's Python side: what ``configs/*.json`` reference and MONAI has no equivalent for.

One job per module: :mod:`.files` (where the bundle's files are; ``python -m monai_gdl.bundle
path|init``), :mod:`.console` (the first ``initialize`` step: readable errors, typo'd keys, log
level), :mod:`.checks` (arguments, boolean knobs, output folder and checkpoint, checked before data
loading), :mod:`.datasets` (MSD-layout datasets: find, split, check, synthesise), :mod:`.transforms`
(loading that names the bad file), :mod:`.checkpoints` (kill-safe checkpoints and resume),
:mod:`.seeding` (every epoch seeded), :mod:`.track_meta` (training patches drawn without metadata),
:mod:`.validation_schedule` (which epochs are validated),
:mod:`.split` (the train/validation split, recorded for evaluation; folds),
:mod:`.planning` (the nnU-Net-like recipe's plan from the dataset), :mod:`.mirroring` (test-time mirroring),
:mod:`.ensemble` (inference averaging several folds), :mod:`.crossval` (the folds' table),
:mod:`.epoch_summary` (the epoch line and ``history.csv``),
:mod:`.curves` (``training_curves.png``), :mod:`.overlays` (evaluation overlays),
:mod:`.predictions` (the inference summary), :mod:`.lock` (one training per output folder),
:mod:`.schedules` (loss weights that change over training), :mod:`.precision` (mixed precision and
channels-last on CPU and GPU), :mod:`.atomic` (atomic writes) and :mod:`.ranks`
(which process writes). The network, transforms and metrics themselves are written in the JSON
configs.
"""

from monai_gdl.bundle import (
    atomic,
    checkpoints,
    checks,
    console,
    crossval,
    curves,
    datasets,
    ensemble,
    epoch_summary,
    files,
    lock,
    mirroring,
    overlays,
    planning,
    precision,
    predictions,
    ranks,
    schedules,
    seeding,
    split,
    track_meta,
    transforms,
    validation_schedule,
)

__all__ = [
    "atomic",
    "checkpoints",
    "checks",
    "console",
    "crossval",
    "curves",
    "datasets",
    "ensemble",
    "epoch_summary",
    "files",
    "lock",
    "mirroring",
    "overlays",
    "planning",
    "precision",
    "predictions",
    "ranks",
    "schedules",
    "seeding",
    "split",
    "track_meta",
    "transforms",
    "validation_schedule",
]
