"""Fused, streaming computation of the Dice statistics and their gradient.

The loss depends on the volume only through the per-(sample, class) sums
``I = sum(m*p*g)`` and ``P = sum(m*p^k)`` (target sums carry no gradient). So for upstream
gradients ``a = dL/dI`` and ``b = dL/dP`` (``B x C``, from autograd on the tiny loss formula):

    dL/dp_c = m * (a_c * g_c + b_c * k * p_c^(k-1))
    softmax:  dL/dx_c = p_c * (dL/dp_c - sum_j p_j * dL/dp_j)
    sigmoid:  dL/dx_c = dL/dp_c * p_c * (1 - p_c)

:class:`StreamingDiceStatistics` evaluates the sums in a forward pass and this closed-form
gradient in a backward pass, each streaming over the flattened volume in chunks of about
``chunk_elements`` values: the activation is recomputed per chunk, in float32 (float64 for float64
input), and the gradient is written straight into one buffer of the input's dtype. No one-hot,
``p*g`` or ``p^2`` volume ever exists; extra memory is O(chunk).
"""

from __future__ import annotations

import os

import torch

from monai_gdl.functional import DiceStatistics, statistics_dtype

__all__ = ["CHUNK_ELEMENTS", "StreamingDiceStatistics", "streaming_statistics"]

#: Values (B x C x chunk) processed per step: 512 Ki float32 = 2 MiB, cache-sized.
CHUNK_ELEMENTS = int(os.environ.get("MONAI_GDL_CHUNK_ELEMENTS", 1 << 19))
ACTIVATIONS = ("softmax", "sigmoid", "none")


def _activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "softmax":
        return torch.softmax(x, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(x)
    return x


def _chunk_bounds(n: int, rows: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(1, rows))
    return [(s, min(s + step, n)) for s in range(0, n, step)]


def _labels(target: torch.Tensor, mask: torch.Tensor | None, s: int, e: int) -> torch.Tensor:
    """``B x 1 x L`` int64 labels of a chunk, ignored voxels mapped to 0 (masked out later)."""
    y = target[:, :, s:e].long()
    if mask is not None:
        y = torch.where(mask[:, :, s:e], y, torch.zeros_like(y))
    return y


class StreamingDiceStatistics(torch.autograd.Function):
    """Autograd function ``(x, target, mask) -> (I, P, G, V)``, all ``B x C`` in float32/float64.

    ``x``: ``B x C x N`` logits (or probabilities for ``activation="none"``); ``target``: ``B x 1 x N``
    labels (``label_map=True``) or ``B x C x N`` one-hot/soft labels; ``mask``: ``B x 1 x N`` bool or
    None. Only ``I`` and ``P`` are differentiable.
    """

    @staticmethod
    def forward(ctx, x, target, mask, activation: str, label_map: bool, squared: bool):  # type: ignore[override]
        b, c, n = x.shape
        acc = statistics_dtype(x.dtype)
        inter = torch.zeros(b, c, dtype=acc, device=x.device)
        pred = torch.zeros_like(inter)
        tsum = torch.zeros_like(inter)
        tvol = tsum if label_map else torch.zeros_like(inter)
        for s, e in _chunk_bounds(n, b * c):
            p = _activate(x[:, :, s:e].to(acc), activation)
            m = None if mask is None else mask[:, :, s:e].to(acc)
            pm = p if m is None else p * m
            pred += (pm * p).sum(-1) if squared else pm.sum(-1)
            if label_map:
                y = _labels(target, mask, s, e)
                at_label = pm.gather(1, y)
                inter.scatter_add_(1, y[:, 0], at_label[:, 0])
                tsum.scatter_add_(1, y[:, 0], torch.ones_like(at_label[:, 0]) if m is None else m[:, 0])
            else:
                g = target[:, :, s:e].to(acc)
                inter += (pm * g).sum(-1)
                gm = g if m is None else g * m
                tvol += gm.sum(-1)
                if squared:
                    tsum += (gm * g).sum(-1)
        if not label_map and not squared:
            tsum.copy_(tvol)
        ctx.save_for_backward(x, target, mask)
        ctx.options = (activation, label_map, squared)
        ctx.mark_non_differentiable(tsum, tvol)
        return inter, pred, tsum, tvol

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_inter, grad_pred, _grad_tsum, _grad_tvol):  # type: ignore[override]
        x, target, mask = ctx.saved_tensors
        activation, label_map, squared = ctx.options
        b, c, n = x.shape
        acc = statistics_dtype(x.dtype)
        a = torch.zeros(b, c, 1, dtype=acc, device=x.device) if grad_inter is None else grad_inter[..., None].to(acc)
        beta = torch.zeros_like(a) if grad_pred is None else grad_pred[..., None].to(acc)
        grad_x = torch.empty_like(x)
        for s, e in _chunk_bounds(n, b * c):
            p = _activate(x[:, :, s:e].to(acc), activation)
            du = beta * (2.0 * p) if squared else beta.expand_as(p).clone()
            if label_map:
                y = _labels(target, mask, s, e)
                du.scatter_add_(1, y, a[:, :, 0].gather(1, y[:, 0])[:, None])
            else:
                du += a * target[:, :, s:e].to(acc)
            if mask is not None:
                du *= mask[:, :, s:e]
            if activation == "softmax":
                du -= (p * du).sum(dim=1, keepdim=True)
                du *= p
            elif activation == "sigmoid":
                du *= p * (1.0 - p)
            grad_x[:, :, s:e] = du
        return grad_x, None, None, None, None, None


def streaming_statistics(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    activation: str,
    label_map: bool,
    squared: bool,
    mask: torch.Tensor | None = None,
) -> DiceStatistics:
    """Dice statistics of ``input`` (``B x C x spatial``) by the fused streaming pass, for all C channels."""
    b, c = input.shape[:2]
    x = input.reshape(b, c, -1)
    t = target.reshape(b, target.shape[1], -1)
    m = None if mask is None else mask.reshape(b, 1, -1).bool()
    return DiceStatistics(*StreamingDiceStatistics.apply(x, t, m, activation, label_map, squared))
