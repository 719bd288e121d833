"""Which process this is in multi-process training: only rank 0 writes files and prints."""

from __future__ import annotations

import os

import torch

__all__ = ["global_batch", "rank", "unwrap"]


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


def global_batch(loss: torch.nn.Module) -> torch.nn.Module:
    """``loss`` made a global-batch loss (``batch = True``; on the loss inside a deep-supervision wrapper): under
    ``DistributedDataParallel`` the fused losses all-reduce their sums, so the "batch" Dice is the whole batch's
    across ranks, not each GPU's. ``configs/multi_gpu_train.json`` applies it to whichever loss the recipe built."""
    inner = getattr(loss, "loss", loss)
    if not hasattr(inner, "batch"):
        raise TypeError(
            f"configs/multi_gpu_train.json makes the loss a global-batch loss, but {type(inner).__name__} has no "
            "batch option; use one of monai_gdl's losses, or leave multi_gpu_train.json's loss_function entry out."
        )
    inner.batch = True
    return loss
