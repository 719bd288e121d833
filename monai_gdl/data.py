"""``python -m monai_gdl.data``: write the synthetic dataset, or check a dataset folder.

``synth --out DIR`` writes the embedded default dataset (see :mod:`monai_gdl.bundle.datasets`);
``check DIR`` lists what the bundle would train and validate on, or says exactly what is wrong.
"""

from __future__ import annotations

import argparse
import sys

from monai_gdl.bundle.datasets import DatasetError, case_id, msd_datalist, write_synthetic_dataset

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_gdl.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="write the synthetic MSD-layout dataset")
    synth.add_argument("--out", required=True)
    synth.add_argument("--cases", type=int, default=20)
    synth.add_argument("--shape", type=int, nargs=3, default=[48, 48, 32])
    synth.add_argument("--seed", type=int, default=0)
    check = sub.add_parser("check", help="list the training/validation split of a dataset folder, or say what is wrong")
    check.add_argument("dataset_dir")
    check.add_argument("--val_fraction", type=float, default=0.2)
    check.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "synth":
        write_synthetic_dataset(args.out, num_cases=args.cases, shape=args.shape, seed=args.seed)
        print(f"wrote {args.cases} cases to {args.out}")
        return 0
    try:
        for split in ("training", "validation"):
            cases = msd_datalist(args.dataset_dir, split, args.val_fraction, args.seed)
            print(f"{split}: {len(cases)} cases, e.g. {[case_id(c['image']) for c in cases[:3]]}")
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
