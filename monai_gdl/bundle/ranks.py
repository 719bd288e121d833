"""Which process this is in multi-process training: only rank 0 writes files and prints."""

from __future__ import annotations

import torch

__all__ = ["rank", "unwrap"]


def rank() -> int:
    """This process's rank (0 without ``torch.distributed``)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The network inside a ``DistributedDataParallel`` wrapper (its state dict has no ``module.`` prefix)."""
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
