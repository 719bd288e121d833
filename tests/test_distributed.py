"""batch=True Dice under torch.distributed is the global-batch Dice, not a per-process one (gloo, 2 CPU ranks)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from monai_gdl import (
    VNetDiceCEBoundaryLoss,
    VNetDiceCELoss,
    VNetDiceCESkeletonRecallLoss,
    generalized_dice_loss,
    tversky_loss,
    vnet_dice_loss,
)

WORLD = 2


def _dice_ce(x, y, *, distributed=True, **_):
    """A compound loss: the CE sums and voxel counts are all-reduced with the Dice sums (global-batch mean)."""
    return VNetDiceCELoss(
        to_onehot_y=True,
        batch=True,
        label_smoothing=0.1,
        weight=[0.5, 1.0, 2.0],
        rescale_weight=False,
        distributed=distributed,
    )(x, y)


def _skeleton(x, y, *, distributed=True, **_):
    """Skeleton Recall: its map's sums are all-reduced with the rest (class 2's voxels stand in for a skeleton)."""
    skeleton = torch.where(y == 2, y, torch.zeros_like(y))
    return VNetDiceCESkeletonRecallLoss(to_onehot_y=True, batch=True, distributed=distributed)(x, y, skeleton=skeleton)


def _boundary(x, y, *, distributed=True, **_):
    """The boundary term: its sums and the voxel count are all-reduced (a +-1 map per class stands in)."""
    distance = torch.cat([(y != c).double() * 2 - 1 for c in range(3)], dim=1)
    return VNetDiceCEBoundaryLoss(to_onehot_y=True, batch=True, distributed=distributed)(x, y, distance=distance)


def _tversky(x, y, **options):
    return tversky_loss(x, y, alpha=0.3, beta=0.7, gamma=0.75, **options)


LOSSES = (
    ("vnet", vnet_dice_loss),
    ("gdl", generalized_dice_loss),
    ("dice_ce", _dice_ce),
    ("tversky", _tversky),
    ("skeleton", _skeleton),
    ("boundary", _boundary),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _case():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 3, 6, 5, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (4, 1, 6, 5, 4), generator=g)
    return x, y


def _rank_main(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x, y = _case()
        part = slice(2 * rank, 2 * rank + 2)
        out = {}
        for name, fn in LOSSES:
            xx = x[part].clone().requires_grad_(True)
            value = fn(xx, y[part], softmax=True, to_onehot_y=True, batch=True)
            value.backward()
            local = fn(x[part], y[part], softmax=True, to_onehot_y=True, batch=True, distributed=False)
            out[name] = (float(value), xx.grad, float(local))
        results[rank] = out
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_batch_dice_is_global_under_distributed():
    results = mp.Manager().dict()
    mp.spawn(_rank_main, args=(_free_port(), results), nprocs=WORLD, join=True)
    x, y = _case()
    for name, fn in LOSSES:
        xx = x.clone().requires_grad_(True)
        full = fn(xx, y, softmax=True, to_onehot_y=True, batch=True)
        full.backward()
        for rank in range(WORLD):
            value, grad, local = results[rank][name]
            assert value == pytest.approx(float(full), abs=1e-12)  # every rank sees the global-batch loss
            assert abs(local - float(full)) > 1e-4  # the per-process value would differ
            # all-reduce backward sums the ranks' identical upstream gradients; DDP's averaging divides it back
            torch.testing.assert_close(grad, WORLD * xx.grad[2 * rank : 2 * rank + 2], rtol=1e-10, atol=1e-12)
