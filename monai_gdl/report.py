"""``python -m monai_gdl.report OUTPUT_DIR``: training curves of a run, and its evaluation summary.

Draws ``OUTPUT_DIR/training_curves.png`` from ``history.csv`` (see :mod:`monai_gdl.bundle.report`)
and lists the evaluation summary and overlays written by ``configs/evaluate.json``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

from monai_gdl.bundle.report import plot_training_curves

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_gdl.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir")
    args = parser.parse_args(argv)
    try:
        print(f"training curves: {plot_training_curves(args.output_dir)}")
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = os.path.join(args.output_dir, "evaluation", "summary.json")
    if os.path.isfile(summary):
        with open(summary) as f:
            print("evaluation summary:", json.dumps(json.load(f), indent=1))
        for png in sorted(glob.glob(os.path.join(args.output_dir, "evaluation", "overlay_*.png"))):
            print(f"overlay: {png}")
    else:
        print("no evaluation yet: run configs/evaluate.json merged after configs/train.json for overlays and metrics.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
