"""Train one nnU-Net v2 trainer the way ``nnUNetv2_train DATASET 3d_fullres 0 -tr NAME -device cpu`` does, then
nnU-Net's own final validation (its predictor, sliding window, mirroring), and write what the test checks.

The trainer class is found by nnU-Net's external trainer search over the folders in ``nnUNet_extTrainer``:
the call ``nnUNetv2_train`` makes once the trainer is not in nnU-Net's own package. ``nnUNetv2_train`` itself
first walks nnU-Net's package, whose Primus trainers import ``timm`` (hence torchvision), which does not
load beside this machine's CPU torch; ``test_nnunet_e2e.py`` runs the real command where it does.

Before training it also records the trainer's loss on one fixed, seeded deep-supervision input (logits and
label maps at every level of the plan's patch), so that two trainers' losses can be compared exactly.

usage: python tests/nnunet_train.py DATASET_ID TRAINER_NAME OUT_JSON [--no-final-validation] [--probe-loss]
"""

from __future__ import annotations

import json
import math
import os
import sys

import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class


def find_trainer(name: str) -> type:
    for folder in os.environ["nnUNet_extTrainer"].split(os.pathsep):
        found = recursive_find_python_class(
            folder, name, None, base_folder=folder, cleanup_imports_from_base_folder=True
        )
        if found is not None:
            return found
    raise SystemExit(f"trainer {name} not found in nnUNet_extTrainer={os.environ['nnUNet_extTrainer']}")


def loss_on_fixed_input(trainer) -> float:
    """The trainer's loss (deep supervision included) on seeded logits and label maps shaped like its batches."""
    generator = torch.Generator().manual_seed(0)
    patch = trainer.configuration_manager.patch_size
    scales = trainer._get_deep_supervision_scales() or [[1.0] * len(patch)]
    classes = trainer.label_manager.num_segmentation_heads
    logits, targets = [], []
    for scale in scales:
        shape = [2] + [max(1, round(p * s)) for p, s in zip(patch, scale)]
        logits.append(3 * torch.randn([shape[0], classes, *shape[1:]], generator=generator))
        targets.append(torch.randint(0, classes, [shape[0], 1, *shape[1:]], generator=generator).float())
    with torch.no_grad():
        return float(trainer.loss(logits, targets))


def main() -> None:
    dataset_id, trainer_name, out = sys.argv[1:4]
    validate = "--no-final-validation" not in sys.argv[4:]
    dataset = maybe_convert_to_dataset_name(int(dataset_id))
    plans = load_json(join(nnUNet_preprocessed, dataset, "nnUNetPlans.json"))
    plans["continue_training"] = False
    dataset_json = load_json(join(nnUNet_preprocessed, dataset, "dataset.json"))
    trainer = find_trainer(trainer_name)(plans, "3d_fullres", 0, dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    fixed_input_loss = loss_on_fixed_input(trainer) if "--probe-loss" in sys.argv[4:] else None
    trainer.run_training()
    if validate:
        trainer.perform_actual_validation(False)
    log = trainer.logger.local_logger.my_fantastic_logging
    epoch_s = [b - a for a, b in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])]
    summary_file = join(trainer.output_folder, "validation", "summary.json")
    summary = load_json(summary_file) if validate else None
    result = {
        "trainer": type(trainer).__name__,
        "loss_class": type(trainer.loss.loss if hasattr(trainer.loss, "loss") else trainer.loss).__name__,
        "train_losses": [float(v) for v in log["train_losses"]],
        "val_losses": [float(v) for v in log["val_losses"]],
        "fixed_input_loss": fixed_input_loss,
        "seconds_per_iteration": [s / trainer.num_iterations_per_epoch for s in epoch_s],
        "output_folder": trainer.output_folder,
        "validation_dice": summary["foreground_mean"]["Dice"] if summary else None,
    }
    assert all(math.isfinite(v) for v in result["train_losses"])
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
