"""Every epoch's random streams seeded from ``(seed, epoch, rank)``: what makes a resumed run exact."""

from __future__ import annotations

import random

import torch

from monai_gdl.bundle.ranks import rank

__all__ = ["EpochSeeds"]


class EpochSeeds:
    """Seed every random stream at the start of each epoch from ``(seed, epoch, rank)``: torch (CPU and CUDA),
    NumPy, Python's ``random`` and the random transforms of ``dataloader``'s dataset (the sampler's
    shuffle and the workers' seeds come from torch's). Each epoch's randomness then depends on nothing
    that happened before it, so a run resumed at epoch ``k`` trains epoch ``k + 1`` exactly as the
    uninterrupted run did."""

    def __init__(self, seed: int, dataloader) -> None:
        self.seed = int(seed)
        self.dataloader = dataloader

    def attach(self, trainer) -> None:
        from ignite.engine import Events

        trainer.add_event_handler(Events.EPOCH_STARTED, self._seed)

    def epoch_seed(self, epoch: int) -> int:
        """One seed per (seed, epoch) and process: ranks of a multi-process run augment differently."""
        return ((self.seed * 1_000_003 + epoch) * 1_009 + rank()) % (2**31 - 1)

    def _seed(self, trainer) -> None:
        import numpy as np
        from monai.data.utils import set_rnd

        seed = self.epoch_seed(trainer.state.epoch)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        set_rnd(self.dataloader.dataset, seed)
