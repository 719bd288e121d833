"""The MONAI bundle's Python side: what ``configs/*.json`` reference and MONAI has no equivalent for.

:mod:`.files` (where the bundle's files are; ``python -m monai_gdl.bundle path|init``), :mod:`.cli`
(one line per epoch, readable errors, typo'd keys), :mod:`.checks` (arguments checked before data
loading), :mod:`.datasets` (MSD-layout datasets: find, split, check, synthesise), :mod:`.transforms`
(loading that names the bad file), :mod:`.handlers` (kill-safe checkpoints and resume, the epoch
line and ``history.csv``, overlays) and :mod:`.report` (``training_curves.png``). The network,
transforms and metrics themselves are written in the JSON configs.
"""

from monai_gdl.bundle import checks, cli, datasets, files, handlers, report, transforms

__all__ = ["checks", "cli", "datasets", "files", "handlers", "report", "transforms"]
