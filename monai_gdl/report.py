"""``python -m monai_gdl.report OUTPUT_DIR``: training curves of a run, and its evaluation summary.

Redraws ``OUTPUT_DIR/logs/training_curves.png`` from ``logs/history.csv`` (see
:mod:`monai_gdl.bundle.curves`) and lists the evaluation summary and overlays that
``configs/evaluate.json`` wrote to ``OUTPUT_DIR/eval/``. Given several folders, the folds of one
cross-validation (``--fold k --num_folds N``), it prints their fold-wise table and the mean over all
validated cases instead (see :mod:`monai_gdl.bundle.crossval`).
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import sys

from monai_gdl.bundle.curves import plot_training_curves

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_gdl.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", nargs="+", help="a run's --output_dir, or every fold's of a cross-validation")
    args = parser.parse_args(argv)
    if len(args.output_dir) > 1:
        return _folds(args.output_dir)
    args.output_dir = args.output_dir[0]
    try:
        print(f"training curves: {plot_training_curves(os.path.join(args.output_dir, 'logs'))}")
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = os.path.join(args.output_dir, "eval", "metrics.csv")
    if os.path.isfile(summary):
        with open(summary, newline="") as f:  # MetricsSaver's default: comma-separated name, value
            for row in csv.reader(f):
                print("evaluation:", " ".join(row))
        for png in sorted(glob.glob(os.path.join(args.output_dir, "eval", "overlay_*.png"))):
            print(f"overlay: {png}")
    else:
        print("no evaluation yet: run configs/evaluate.json merged after configs/train.json for overlays and metrics.")
    return 0


def _folds(output_dirs: list[str]) -> int:
    from monai_gdl.bundle.crossval import CrossValidationError, format_folds, summarise_folds

    try:
        print(format_folds(summarise_folds(output_dirs)))
    except CrossValidationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
