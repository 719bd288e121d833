"""Shared helpers for the tests: random logits and targets of the kinds the losses accept."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    # Triton kernels run through Triton's interpreter on CPU tensors (set before triton is imported).
    os.environ.setdefault("TRITON_INTERPRET", "1")


def random_case(
    shape: tuple[int, ...],
    *,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    all_present: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, label map B x 1 x spatial, one-hot B x C x spatial); every class present per sample if asked."""
    g = torch.Generator().manual_seed(seed)
    b, c = shape[:2]
    logits = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, c, (b, 1, *shape[2:]), generator=g)
    if all_present:
        flat = labels.view(b, -1)
        flat[:, :c] = torch.arange(c)
    onehot = torch.nn.functional.one_hot(labels[:, 0], c).movedim(-1, 1).to(torch.float64)
    return logits, labels, onehot
