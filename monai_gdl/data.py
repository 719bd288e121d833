"""``python -m monai_gdl.data``: write the synthetic dataset, or check a dataset folder.

``synth --out DIR`` writes the embedded default dataset (see :mod:`monai_gdl.bundle.datasets`);
``check DIR`` reads every case whole and prints one line per problem that training would choke on
or silently mis-learn (exit code 1), else lists what the bundle would train and validate on.
"""

from __future__ import annotations

import argparse
import sys

from monai_gdl.bundle.datasets import DatasetError, audit_dataset, case_id, msd_datalist, write_synthetic_dataset

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_gdl.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="write the synthetic MSD-layout dataset")
    synth.add_argument("--out", required=True)
    synth.add_argument("--cases", type=int, default=20)
    synth.add_argument("--shape", type=int, nargs=3, default=[48, 48, 32])
    synth.add_argument("--seed", type=int, default=0)
    check = sub.add_parser(
        "check", help="check every case of a dataset folder and list the split; exit 1 on any problem"
    )
    check.add_argument("dataset_dir")
    check.add_argument(
        "--num_classes",
        type=int,
        default=None,
        help="classes the network predicts (default: the number of dataset.json labels)",
    )
    check.add_argument("--val_fraction", type=float, default=0.2)
    check.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "synth":
        write_synthetic_dataset(args.out, num_cases=args.cases, shape=args.shape, seed=args.seed)
        print(f"wrote {args.cases} cases to {args.out}")
        return 0
    cases, problems = audit_dataset(args.dataset_dir, args.num_classes)
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        print(
            f"{len(problems)} problem(s) in {len(cases)} case(s) of {args.dataset_dir}; fix or remove those cases.",
            file=sys.stderr,
        )
        return 1
    try:
        for split in ("training", "validation"):
            chosen = msd_datalist(args.dataset_dir, split, args.val_fraction, args.seed, check_files=False)
            print(f"{split}: {len(chosen)} cases, e.g. {[case_id(c['image']) for c in chosen[:3]]}")
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"checked {len(cases)} cases: no problems found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
