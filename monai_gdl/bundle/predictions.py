"""The inference summary line: how many segmentations were written, and where."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence

__all__ = ["report_predictions"]

logger = logging.getLogger("monai_gdl.bundle")


def report_predictions(datalist: Sequence[dict], prediction_dir: str) -> int:
    """The inference summary line: how many segmentations were written, and where. Returns the count."""
    from monai_gdl.bundle.datasets import case_id

    written = [
        d for d in datalist if glob.glob(os.path.join(glob.escape(prediction_dir), f"{case_id(d['image'])}_seg.nii*"))
    ]
    logger.info("wrote %d segmentation(s) of %d image(s) to %s", len(written), len(datalist), prediction_dir)
    return len(written)
