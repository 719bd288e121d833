"""The fused sums as PyTorch operators: ``torch.ops.monai_gdl.fused_sums`` and its backward.

Registered with ``torch.library`` (fake implementations for shape propagation, autograd through
:func:`torch.library.register_autograd`), so ``torch.compile`` (``fullgraph=True``),
``torch.export`` and DDP treat the fused pass like any built-in op: a compiled training step
keeps it as one opaque node and calls its real implementation at run time.

``fused_sums(x, target, mask, activation, label_map, squared, soft, voxel_term, gamma, backend,
weight_map=None, map_labels=False) -> 8 x B x C`` (``I, P, G, V, F, Q, W, S``, see
:mod:`monai_gdl.kernels.contract`), ``x`` is ``B x C x N``; ``fused_sums_backward`` maps
``(dL/dI, dL/dP, dL/dF, dL/dQ, dL/dW)`` (``5 x B x C``) to ``dL/dx`` (``x``'s dtype and layout).
:func:`fused_sums` (the Python face) resolves ``"auto"`` to a backend once per
forward outside a compiled graph, so the backward runs on the backend that ran the forward; inside
a compiled or exported graph the operator resolves it at run time, so the same graph runs the
native kernel on CPU and Triton on CUDA.
"""

# No ``from __future__ import annotations``: torch.library reads the operators' schemas from the annotations,
# and torch 2.4's custom_op does not resolve them from strings.
from typing import Optional

import torch

from monai_gdl.kernels.backends import REGISTRY, get_backend, resolve_backend
from monai_gdl.kernels.contract import (
    LOGIT_ROWS,
    NUM_STATISTICS,
    DiceStatistics,
    VoxelTermSums,
    WeightMapSums,
    accumulation_dtype,
    check_pass_options,
)
from monai_gdl.kernels.reference import forward_chunk

__all__ = ["fused_sums"]


@torch.library.custom_op("monai_gdl::fused_sums", mutates_args=())
def fused_sums_op(
    x: torch.Tensor,
    target: torch.Tensor,
    mask: Optional[torch.Tensor],
    activation: str,
    label_map: bool,
    squared: bool,
    soft: bool,
    voxel_term: str,
    gamma: float,
    backend: str,
    weight_map: Optional[torch.Tensor] = None,
    map_labels: bool = False,
) -> torch.Tensor:
    check_pass_options(activation, voxel_term)
    pass_options = (activation, squared, soft, voxel_term, gamma)
    chosen = REGISTRY[resolve_backend(x, target, mask, label_map, backend, weight_map, map_labels, pass_options)]
    options = (activation, label_map, squared, soft, voxel_term, gamma, weight_map, map_labels)
    return chosen.forward(x, target, mask, *options).to(accumulation_dtype(x.dtype))


@fused_sums_op.register_fake
def _fused_sums_fake(x, target, mask, *options, **map_options):
    return x.new_empty((NUM_STATISTICS, x.shape[0], x.shape[1]), dtype=accumulation_dtype(x.dtype))


@torch.library.custom_op("monai_gdl::fused_sums_backward", mutates_args=())
def fused_sums_backward_op(
    grad: torch.Tensor,
    x: torch.Tensor,
    target: torch.Tensor,
    mask: Optional[torch.Tensor],
    activation: str,
    label_map: bool,
    squared: bool,
    soft: bool,
    voxel_term: str,
    gamma: float,
    backend: str,
    weight_map: Optional[torch.Tensor] = None,
    map_labels: bool = False,
) -> torch.Tensor:
    pass_options = (activation, squared, soft, voxel_term, gamma)
    chosen = REGISTRY[resolve_backend(x, target, mask, label_map, backend, weight_map, map_labels, pass_options)]
    options = (activation, label_map, squared, soft, voxel_term, gamma, weight_map, map_labels)
    grad_x = chosen.backward(grad, x, target, mask, *options)
    if grad_x.stride() != x.stride():  # the fake below promises x's layout
        grad_x = torch.empty_like(x).copy_(grad_x)
    return grad_x


@fused_sums_backward_op.register_fake
def _fused_sums_backward_fake(grad, x, target, mask, *options, **map_options):
    return torch.empty_like(x)


#: The operator's arguments after ``x, target, mask`` up to ``backend``, then ``weight_map, map_labels``.
_PASS_OPTIONS = 7


def _setup_context(ctx, inputs, output) -> None:
    x, target, mask, *rest = inputs
    options, (weight_map, map_labels) = rest[:_PASS_OPTIONS], (rest[_PASS_OPTIONS:] + [None, False])[:2]
    ctx.save_for_backward(x, target, mask, weight_map)
    ctx.options, ctx.map_labels = tuple(options), map_labels


def _backward(ctx, grad_sums):
    x, target, mask, weight_map = ctx.saved_tensors
    grad = grad_sums[list(LOGIT_ROWS)].to(accumulation_dtype(x.dtype)).contiguous()  # G, V, S do not depend on x
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.monai_gdl.fused_sums_backward(
            grad, x, target, mask, *ctx.options, weight_map, ctx.map_labels
        )
    grad_target = None
    if ctx.needs_input_grad[1]:
        grad_target = _target_gradient(grad_sums, x, target, mask, *ctx.options[:-1])
    return (grad_x, grad_target) + (None,) * (1 + _PASS_OPTIONS + 2)


#: Voxels per chunk of the target-gradient pass (a few MiB of temporaries whatever the volume).
TARGET_GRADIENT_CHUNK_ELEMENTS = 1 << 20


def _target_gradient(grad_sums, x, target, mask, activation, label_map, squared, soft, voxel_term, gamma):
    """``dL/dtarget`` of a soft target that requires grad (through ``I, G, V, F, Q``, as the reference path's
    autograd gives it): autograd of the chunk formulas, chunk by chunk, so memory stays chunk-sized. Only
    a target that requires grad pays for it."""
    weights = grad_sums.to(accumulation_dtype(x.dtype))
    grad_target = torch.empty_like(target)
    step = max(1, TARGET_GRADIENT_CHUNK_ELEMENTS // max(1, x.shape[0] * x.shape[1]))
    with torch.enable_grad():
        for start in range(0, x.shape[2], step):
            part = slice(start, start + step)
            t = target[..., part].detach().requires_grad_(True)
            m = None if mask is None else mask[..., part]
            sums = torch.stack(
                forward_chunk(x[..., part].detach(), t, m, activation, label_map, squared, soft, voxel_term, gamma)
            )  # W and S do not depend on the target: their rows are zero here
            (grad_part,) = torch.autograd.grad((sums * weights).sum(), t, allow_unused=True)
            grad_target[..., part] = 0 if grad_part is None else grad_part
    return grad_target


torch.library.register_autograd("monai_gdl::fused_sums", _backward, setup_context=_setup_context)


def _no_double_backward(ctx, grad):
    raise RuntimeError(
        "monai_gdl: second derivatives through the fused Dice statistics are not supported (their backward is a "
        "closed-form kernel). For double backward, pass implementation='reference' to the loss."
    )


torch.library.register_autograd(
    "monai_gdl::fused_sums_backward", _no_double_backward, setup_context=lambda ctx, inputs, output: None
)


def fused_sums(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    activation: str,
    label_map: bool,
    squared: bool,
    soft: bool = False,
    mask: Optional[torch.Tensor] = None,
    voxel_term: str = "none",
    gamma: float = 0.0,
    backend: Optional[str] = None,
    weight_map: Optional[torch.Tensor] = None,
    map_labels: bool = False,
) -> tuple[DiceStatistics, VoxelTermSums, WeightMapSums]:
    """Dice statistics, voxel-term sums and structure-map sums of ``input`` (``B x C x spatial``) by the fused
    operator, for all C channels (the voxel-term sums are zero when ``voxel_term`` is ``"none"``, the map
    sums without ``weight_map``).

    ``mask``: ``B x 1 x spatial`` bool (voxels to count) or None; ``weight_map``: ``B x 1 x spatial`` labels
    (``map_labels``) or ``B x C x spatial`` floats; ``backend``: a name from
    :data:`monai_gdl.kernels.BACKENDS`, default the process's choice.
    """
    check_pass_options(activation, voxel_term)
    b, c = input.shape[:2]
    x = input.reshape(b, c, -1)
    t = target.reshape(b, target.shape[1], -1)
    m = None if mask is None else mask.reshape(b, 1, -1)
    w = None if weight_map is None else weight_map.reshape(b, weight_map.shape[1], -1)
    chosen = get_backend() if backend is None else backend
    if chosen == "auto" and not torch.compiler.is_compiling():
        chosen = resolve_backend(
            x, t, m, label_map, chosen, w, map_labels, (activation, squared, soft, voxel_term, gamma)
        )
    stacked = torch.ops.monai_gdl.fused_sums(
        x, t, m, activation, label_map, squared, soft, voxel_term, float(gamma), chosen, w, map_labels
    )
    return (
        DiceStatistics.from_stacked(stacked),
        VoxelTermSums.from_stacked(stacked),
        WeightMapSums.from_stacked(stacked),
    )
