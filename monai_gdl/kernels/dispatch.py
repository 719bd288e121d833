"""Which backend computes the statistics: the public choice, and what ``"auto"`` picks.

Backends: ``"native"`` (C kernel, CPU), ``"triton"`` (CUDA), ``"compile"`` (``torch.compile`` of
the chunk math), ``"eager"`` (the chunk math as plain PyTorch ops). ``"auto"`` (the default) takes
Triton for CUDA tensors, the native kernel for CPU tensors it covers, else ``compile`` for large
inputs (where compiling works) and ``eager`` for small ones.

Choose with :func:`set_backend` (process-wide), :func:`use_backend` (a ``with`` block) or the
``MONAI_GDL_BACKEND`` environment variable (read at import). Where ``"auto"`` cannot use the fast
backend of the device, it says so once per reason, at WARNING level, with the measured cost and the
fix; choosing a backend explicitly silences it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from monai_gdl._env import env_choice
from monai_gdl.kernels import chunked, native, triton_backend

__all__ = ["BACKENDS", "get_backend", "resolve_backend", "set_backend", "use_backend"]

logger = logging.getLogger("monai_gdl.kernels")

BACKENDS = ("auto", "native", "triton", "compile", "eager")
#: ``"auto"`` compiles only for inputs this large (4 Mi values, e.g. 2 x 4 x 80^3): below it the
#: eager chunk loop is already fast and a compile (seconds) would not pay for itself.
COMPILE_MIN_ELEMENTS = 1 << 22
#: What the slow path costs, as measured by ``python -m monai_gdl.benchmark`` (README, 2 x 14 x 128^3).
_CPU_COST = ("about 3x (compile) to 5x (eager) the time of the native kernel "
             "(V-Net Dice fwd+bwd at 2 x 14 x 128^3 on 2 cores: 166 ms native, 551 ms compile, 887 ms eager)")

_backend = env_choice("MONAI_GDL_BACKEND", "auto", BACKENDS)
_warned: set[str] = set()


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


def _warn_once(reason: str, fix: str) -> None:
    if reason in _warned:
        return
    _warned.add(reason)
    logger.warning("monai_gdl: the fast native CPU kernel is not used: %s. The loss runs on a slower path, %s. Fix: "
                   "%s; or choose a backend explicitly (MONAI_GDL_BACKEND=eager|compile, or "
                   "monai_gdl.set_backend) to silence this.", reason, _CPU_COST, fix)


def _native_or_explain(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, label_map: bool,
                       explain: bool) -> bool:
    """Whether the native kernel takes these CPU tensors; with ``explain``, warn once why not."""
    layout = native.unsupported(x, target, mask, label_map)
    if layout is not None:
        if explain:
            _warn_once(f"it does not take {layout}", "pass float32 (or bfloat16/float16) contiguous or channels-last "
                       "logits with an integer/float32 label map or a float32 one-hot target")
        return False
    why = native.unavailable_reason()
    if why is not None:
        if explain:
            _warn_once(f"it could not be built here ({why})", "install a C compiler (gcc or clang) or set CC")
        return False
    if x.dtype == torch.float16 and not native.supports(x, target, mask, label_map):
        if explain:
            _warn_once("this C compiler has no _Float16 for float16 logits", "use bfloat16 autocast or GCC >= 12")
        return False
    return True


def resolve_backend(
    x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, label_map: bool, requested: str | None = None
) -> str:
    """The backend that runs for logits ``x`` (``B x C x N``), ``target`` and ``mask``: the requested
    (else chosen) one if it can, or what ``"auto"`` picks. An explicit choice that cannot run these
    tensors is an error that names them."""
    requested = get_backend() if requested is None else requested
    if requested == "triton":
        if not triton_backend.usable(x):
            raise RuntimeError(
                f"backend 'triton' needs Triton installed and non-float64 CUDA tensors (or TRITON_INTERPRET=1 for CPU "
                f"ones); got {x.dtype} on {x.device.type}{'' if triton_backend.available() else ', no Triton'}. "
                "Use 'auto' to let monai_gdl choose."
            )
        return "triton"
    if requested == "native":
        if not _native_or_explain(x, target, mask, label_map, explain=False):
            why = native.unsupported(x, target, mask, label_map) or native.unavailable_reason() or "float16 without _Float16"
            raise RuntimeError(f"backend 'native' cannot run these tensors: {why}. Use 'auto' to fall back to the "
                               "other backends.")
        return "native"
    if requested in ("eager", "compile"):
        return requested
    if x.is_cuda:
        return "triton" if triton_backend.usable(x) else "eager"
    if x.device.type == "cpu" and _native_or_explain(x, target, mask, label_map, explain=x.numel() > 0):
        return "native"
    if x.numel() >= COMPILE_MIN_ELEMENTS and chunked.compile_works():
        return "compile"
    return "eager"
