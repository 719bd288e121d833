"""Deprecated (0.5): the handlers moved to rooms of their own (:mod:`.checkpoints`, :mod:`.seeding`,
:mod:`.epoch_summary`, :mod:`.overlays`, :mod:`.predictions`) and the pre-flight checks to
:mod:`.checks`. The old names work until 0.6, with a FutureWarning."""

from monai_gdl.bundle._moved import forward_moved

__getattr__ = forward_moved(
    __name__,
    {
        "TrainingCheckpoints": "monai_gdl.bundle.checkpoints.TrainingCheckpoints",
        "CheckpointError": "monai_gdl.bundle.checkpoints.CheckpointError",
        "EpochSeeds": "monai_gdl.bundle.seeding.EpochSeeds",
        "EpochSummary": "monai_gdl.bundle.epoch_summary.EpochSummary",
        "write_history": "monai_gdl.bundle.epoch_summary.write_history",
        "EvaluationOverlays": "monai_gdl.bundle.overlays.EvaluationOverlays",
        "report_predictions": "monai_gdl.bundle.predictions.report_predictions",
        "check_checkpoint": "monai_gdl.bundle.checks.check_checkpoint",
        "check_output_dir": "monai_gdl.bundle.checks.check_output_dir",
        "OutputDirError": "monai_gdl.bundle.checks.OutputDirError",
    },
)
