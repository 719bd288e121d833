"""The backends that compute the fused statistics, in one registry, and which one runs.

Each :class:`Backend` has a name, a ``why_not`` that says why it cannot run given tensors (None
when it can), and its forward and backward passes. :data:`REGISTRY` lists them in the order
``"auto"`` tries them: ``"triton"`` (CUDA), ``"native"`` (C kernel, CPU), ``"compile"``
(``torch.compile`` of the chunk math; for ``"auto"`` only on CPU inputs of at least
:data:`COMPILE_MIN_ELEMENTS` values), ``"eager"`` (the chunk math as plain PyTorch ops; runs anything).

**Checked before trusted.** A backend marked ``checked_by_auto`` (Triton: no GPU has run it in this project's
tests) is, the first time ``"auto"`` would pick it for a case (device, dtype, layout, target and map kind,
pass options), run once on a slice of the real inputs (the first sample's first :data:`CHECK_VOXELS`
voxels) forward and backward against the eager chunk math, within :data:`CHECK_TOLERANCE` for the logits'
dtype. A compile or launch error, or a mismatch, logs one WARNING naming the case and the fix, and ``"auto"``
runs that case on the next backend from then on (on CUDA: ``eager``); the result is cached per process, so
the cost is one small extra forward and backward per case per process. Choosing the backend explicitly
(``set_backend("triton")``, ``implementation="triton"``) skips the check and raises on any error.

Choose with :func:`set_backend` (process-wide), :func:`use_backend` (a ``with`` block) or the
``MONAI_GDL_BACKEND`` environment variable (read at import). A loss's ``implementation`` option
speaks the same vocabulary for one loss: ``"auto"``/``"fused"`` use the process's choice,
``"reference"`` plain PyTorch autograd, a backend name that backend. Where ``"auto"`` cannot use
the native kernel for CPU tensors, it says why once per reason, at WARNING level, with the fix;
choosing a backend explicitly silences it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from monai_gdl._env import env_choice
from monai_gdl.kernels import chunked, native, triton_backend
from monai_gdl.kernels.contract import LOGIT_ROWS
from monai_gdl.kernels.reference import backward_chunk, forward_chunk

__all__ = [
    "BACKENDS",
    "CHECK_TOLERANCE",
    "REGISTRY",
    "Backend",
    "get_backend",
    "resolve_backend",
    "set_backend",
    "use_backend",
]

logger = logging.getLogger("monai_gdl.kernels")

#: ``"auto"`` compiles only for inputs this large (4 Mi values, e.g. 2 x 4 x 80^3): below it the
#: eager chunk loop is already fast and a compile (seconds) would not pay for itself.
COMPILE_MIN_ELEMENTS = 1 << 22

#: ``why_not(x, target, mask, label_map, weight_map=None, map_labels=False) -> reason | None``
WhyNot = Callable[..., "str | None"]


def _runs_anything(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, label_map: bool, *map) -> None:
    return None


def _cuda_for_auto(
    x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, label_map: bool, *map
) -> str | None:
    return None if x.is_cuda else "auto uses Triton for CUDA tensors only (the interpreter is for tests)"


def _compile_for_auto(
    x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, label_map: bool, *map
) -> str | None:
    if x.device.type != "cpu":
        return "auto compiles the chunk math for CPU tensors only"
    if x.numel() < COMPILE_MIN_ELEMENTS:
        return f"the input is smaller than {COMPILE_MIN_ELEMENTS} values (a compile would not pay for itself)"
    if not chunked.compile_works():
        return "torch.compile does not work here"
    return None


@dataclass(frozen=True)
class Backend:
    """One way to run the fused passes: ``forward(x, target, mask, activation, label_map, squared, soft,
    voxel_term, gamma, weight_map, map_labels) -> 8 x B x C`` and ``backward(grad, x, ...) -> dL/dx``."""

    name: str
    why_not: WhyNot
    forward: Callable[..., torch.Tensor]
    backward: Callable[..., torch.Tensor]
    #: what ``"auto"`` asks on top of ``why_not`` before picking it
    why_not_auto: WhyNot = _runs_anything
    #: ``"auto"`` runs it once per case against the eager chunk math before trusting it
    checked_by_auto: bool = False


#: Every backend, in the order ``"auto"`` tries them.
REGISTRY: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "triton", triton_backend.why_not, triton_backend.forward, triton_backend.backward, _cuda_for_auto, True
        ),
        Backend("native", native.why_not, native.forward, native.backward),
        Backend("compile", _runs_anything, chunked.compiled_forward, chunked.compiled_backward, _compile_for_auto),
        Backend("eager", _runs_anything, chunked.forward, chunked.backward),
    )
}
#: The process-wide choices: ``"auto"`` or a backend's name.
BACKENDS = ("auto", *REGISTRY)

_backend = env_choice("MONAI_GDL_BACKEND", "auto", BACKENDS)
_warned: set[str] = set()

#: Voxels of the first sample the self-check runs on.
CHECK_VOXELS = 4096
#: ``(rtol, atol)`` of the self-check per logits dtype: float32 rounding of sums over a few thousand voxels;
#: half-precision logits are read the same way by both paths, so the same bound holds with room for
#: the gradient's rounding to the half dtype.
CHECK_TOLERANCE = {
    torch.float32: (1e-3, 1e-4),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (3e-2, 1e-2),
}
#: The self-check's verdict per (backend, case): None (trusted) or why not.
_checked: dict[tuple, str | None] = {}


def _case_key(x, target, mask, label_map, weight_map, map_labels, options) -> tuple:
    """What selects a kernel variant: device, dtypes, layout, target and map kind, pass options (``gamma`` only
    as zero or not)."""
    activation, squared, soft, voxel_term, gamma = options
    layout = "channels_last" if not x.is_contiguous() else "contiguous"
    mapped = None if weight_map is None else (weight_map.dtype, map_labels)
    return (
        str(x.device),
        x.dtype,
        layout,
        target.dtype,
        label_map,
        mask is not None,
        mapped,
        activation,
        squared,
        soft,
        voxel_term,
        gamma != 0,
    )


def _check_on_slice(backend: Backend, x, target, mask, label_map, weight_map, map_labels, options) -> str | None:
    """``backend`` on a slice of the real inputs against the eager chunk math: None if it agrees, else why not."""
    n = min(x.shape[2], CHECK_VOXELS)

    def part(t):
        return None if t is None else t[:1, :, :n]

    xs, ts, ms, ws = part(x).detach(), part(target).detach(), part(mask), part(weight_map)
    rows = torch.linspace(0.5, 1.5, len(LOGIT_ROWS) * x.shape[1], device=x.device, dtype=torch.float32)
    grad = rows.reshape(len(LOGIT_ROWS), 1, x.shape[1]) / max(n, 1)
    args = (*options[:1], label_map, *options[1:], ws, map_labels)
    try:
        got = backend.forward(xs, ts, ms, *args)
        got_grad = backend.backward(grad, xs, ts, ms, *args)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
    except Exception as err:  # a compile, launch or runtime error: the case goes to the next backend
        return f"it failed on this case ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    want = torch.stack(forward_chunk(xs, ts, ms, *args))
    want_grad = backward_chunk(xs, ts, ms, grad[..., None], *args)
    rtol, atol = CHECK_TOLERANCE.get(x.dtype, (1e-3, 1e-4))
    for name, a, b in (("sums", got, want), ("gradient", got_grad, want_grad)):
        a, b = a.float(), b.float()
        if a.shape != b.shape or not torch.allclose(a, b, rtol=rtol, atol=atol * max(1.0, float(b.abs().max()))):
            error = float((a - b).abs().max()) if a.shape == b.shape else float("nan")
            return f"its {name} disagree with the eager path on this case (max error {error:.3g})"
    return None


def _checked_reason(backend: Backend, x, target, mask, label_map, weight_map, map_labels, options) -> str | None:
    key = (backend.name, _case_key(x, target, mask, label_map, weight_map, map_labels, options))
    if key not in _checked:
        reason = _check_on_slice(backend, x, target, mask, label_map, weight_map, map_labels, options)
        _checked[key] = reason
        if reason is not None:
            logger.warning(
                "monai_gdl: the %s backend was checked on a slice of the inputs and is not used for this case (%s: "
                "%s logits on %s, %s target, activation=%s, voxel_term=%s): %s. The loss runs on the next backend "
                "instead (slower, same values). Please report it with the table of `python -m monai_gdl.gpu_check`; "
                "set MONAI_GDL_BACKEND=eager to silence this.",
                backend.name,
                "label map" if label_map else "dense",
                x.dtype,
                x.device,
                target.dtype,
                options[0],
                options[3],
                reason,
            )
    return _checked[key]


def get_backend() -> str:
    """The backend chosen for this process (``"auto"`` unless set)."""
    return _backend


def set_backend(name: str) -> None:
    """Choose the backend for this process: one of :data:`BACKENDS`."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r}; use one of {BACKENDS}.")
    _backend = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """``with use_backend("eager"): ...``: the backend inside the block, the previous one after it."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _warn_once(reason: str) -> None:
    if reason in _warned:
        return
    _warned.add(reason)
    logger.warning(
        "monai_gdl: the fast native CPU kernel is not used: %s. The loss runs on a slower path (about 3-5x the "
        "native kernel's time; `python -m monai_gdl.benchmark` measures it on this machine). Choose a backend "
        "explicitly (MONAI_GDL_BACKEND=eager|compile, or monai_gdl.set_backend) to silence this.",
        reason,
    )


def resolve_backend(
    x: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    label_map: bool,
    requested: str | None = None,
    weight_map: torch.Tensor | None = None,
    map_labels: bool = False,
    options: tuple | None = None,
) -> str:
    """The backend that runs for logits ``x`` (``B x C x N``), ``target``, ``mask`` and a structure term's
    ``weight_map``: the requested (else the process's) one, or for ``"auto"`` the first in :data:`REGISTRY`
    that can (and, for a backend ``checked_by_auto``, that passed its self-check on this case; ``options`` are
    the pass's ``(activation, squared, soft, voxel_term, gamma)``, without which the check is skipped). An
    explicit choice that cannot run these tensors is an error that names why."""
    requested = get_backend() if requested is None else requested
    tensors = (x, target, mask, label_map, weight_map, map_labels)
    if requested != "auto":
        if requested not in REGISTRY:
            raise ValueError(f"backend={requested!r}; use one of {BACKENDS}.")
        reason = REGISTRY[requested].why_not(*tensors)
        if reason is not None:
            raise RuntimeError(
                f"backend {requested!r} cannot run these tensors ({x.dtype} logits on {x.device.type}):"
                f" {reason}. Use 'auto' to let monai_gdl choose."
            )
        return requested
    for backend in REGISTRY.values():
        reason = backend.why_not(*tensors) or backend.why_not_auto(*tensors)
        if reason is None and backend.checked_by_auto and options is not None:
            reason = _checked_reason(backend, *tensors, options)
        if reason is None:
            return backend.name
        if backend.name == "native" and x.device.type == "cpu" and x.numel() > 0:
            _warn_once(reason)
    raise AssertionError("unreachable: the eager backend runs anything")
