"""``python -m monai_gdl.bundle``: where the installed bundle is, or a copy of it to edit and run.

``path`` prints the bundle folder (``configs/``, ``docs/``, ``models/``, ``LICENSE``); ``path train``
prints one config file. ``init DIR`` copies the bundle into ``DIR``; then
``python -m monai.bundle run --config_file DIR/configs/train.json --bundle_root DIR`` trains and
writes ``DIR/models/model.pt``. ``plan DATASET_DIR`` prints the plan the nnU-Net-like recipe would train
with (:mod:`monai_gdl.bundle.planning`).
"""

from __future__ import annotations

import argparse
import json
import sys

from monai_gdl.bundle.files import bundle_dir, config_file, init_bundle

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_gdl.bundle", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    path = sub.add_parser("path", help="print the bundle folder, or the path of one of its configs")
    path.add_argument("config", nargs="?", help="a config name: train, evaluate, inference, loss_gdl, ...")
    init = sub.add_parser("init", help="copy the bundle into a folder to edit and run")
    init.add_argument("directory")
    init.add_argument("--overwrite", action="store_true", help="replace configs and docs of an existing copy")
    plan = sub.add_parser("plan", help="print the nnU-Net-like recipe's plan for a dataset folder (MSD layout)")
    plan.add_argument("dataset_dir")
    plan.add_argument("--base_filters", type=int, default=32, help="the first stage's filters (default 32)")
    args = parser.parse_args(argv)
    try:
        if args.command == "path":
            print(config_file(args.config) if args.config else bundle_dir())
            return 0
        if args.command == "plan":
            from monai_gdl.bundle.planning import plan_dataset

            print(json.dumps(plan_dataset(args.dataset_dir, base_filters=args.base_filters), indent=2))
            return 0
        written = init_bundle(args.directory, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"wrote the bundle to {args.directory} ({len(written)} entries). Train with:\n"
        f"  python -m monai.bundle run --config_file {args.directory}/configs/train.json --bundle_root {args.directory}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
