"""Which process this is in multi-process training: only rank 0 writes files and prints."""

from __future__ import annotations

import os

import torch

__all__ = ["rank", "unwrap"]


def rank() -> int:
    """This process's rank: the process group's, else the launcher's ``RANK`` (the configs' checks run before
    ``init_process_group``; torchrun sets it), else 0."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    value = os.environ.get("RANK", "0")
    return int(value) if value.isdigit() else 0


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The network inside a ``DistributedDataParallel`` wrapper (its state dict has no ``module.`` prefix)."""
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
