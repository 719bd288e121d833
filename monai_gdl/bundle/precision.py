"""Mixed precision and memory layout for the bundle's engines, on a CPU as on a GPU.

MONAI's ``SupervisedTrainer`` and ``SupervisedEvaluator`` open ``torch.autocast("cuda")`` only, so ``--amp true``
did nothing on a CPU (a warning, then float32). Here ``--amp true`` means: on CUDA, MONAI's own path (float16
autocast with its ``GradScaler``); on a CPU, bfloat16 autocast around the network's forward pass, opened by
:class:`MixedPrecisionInferer` (bfloat16 has float32's range: no loss scaling). A CPU without native bfloat16
(AVX-512 BF16 or AMX on x86, the BF16 extension on Arm) would emulate it slower than float32, so there the run stays
in float32 and says so in one line. The losses take bfloat16 logits and sum in float32.

``--channels_last true`` stores the network's weights and activations as ``torch.channels_last_3d`` (N, D, H, W, C),
the layout oneDNN's 3D convolutions run fastest in on these CPUs; the fused losses read it in place.
``--compile True`` compiles the network's forward (and so backward) pass with ``torch.compile``.
"""

from __future__ import annotations

import logging
import platform
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from monai_gdl.bundle.checks import flag

__all__ = ["MixedPrecisionInferer", "cpu_has_native_bfloat16", "engine_amp", "prepare_network"]

log = logging.getLogger(__name__)
_said: set[str] = set()


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (Linux: the flags in ``/proc/cpuinfo``; elsewhere: no)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            words = set(f.read().split())
    except OSError:
        return False
    if platform.machine().lower() in ("x86_64", "amd64"):
        return bool(words & {"avx512_bf16", "amx_bf16"})
    return "bf16" in words  # aarch64 'Features' line


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.warning(message)


def _autocast_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """The dtype our inferer autocasts to: bfloat16 on a CPU with native bfloat16 when ``amp``; else None."""
    if not amp or device.type != "cpu":
        return None  # CUDA: MONAI's engines autocast (engine_amp); off: float32
    if cpu_has_native_bfloat16():
        return torch.bfloat16
    _say_once(
        "amp=true: this CPU has no native bfloat16 (AVX-512 BF16 / AMX / Arm BF16), where emulated bfloat16 "
        "is slower than float32; training in float32."
    )
    return None


def engine_amp(amp: object, device: object) -> bool:
    """The ``amp`` for MONAI's engines: on for CUDA (their float16 autocast and GradScaler), off elsewhere (where
    their CUDA-only autocast would warn and do nothing; :class:`MixedPrecisionInferer` casts instead)."""
    return flag("amp", amp) and torch.device(str(device)).type == "cuda"


def prepare_network(
    network: torch.nn.Module, device: object, channels_last: object, compile: object = False
) -> torch.nn.Module:
    """``network`` on ``device``, its weights in ``torch.channels_last_3d`` when asked (5D weights only), its
    forward pass compiled by ``torch.compile`` when ``compile`` (``nn.Module.compile``: in place, so the
    checkpoints' keys and the optimizer's parameters stay those of the plain network). Compiling happens at the
    first training step and again at the first validation (other shapes, no gradients): on 2 CPU cores about a
    minute for the default UNet, which then steps about 1.3x faster (see docs/reference/bundle.md)."""
    network = network.to(torch.device(str(device)))
    if flag("channels_last", channels_last):
        network = network.to(memory_format=torch.channels_last_3d)
    if flag("compile", compile):
        network.compile()
    return network


class MixedPrecisionInferer(Inferer):
    """``inferer`` run under bfloat16 autocast on a CPU when ``amp`` (see the module), with 5D inputs in
    ``channels_last_3d`` when ``channels_last``, on plain tensors. Wraps any MONAI inferer (``SimpleInferer`` for
    training, ``SlidingWindowInferer`` for validation and inference).

    The network gets ``inputs.as_tensor()``: a ``MetaTensor`` runs every operation of the forward and backward
    passes through its ``__torch_function__`` (a quarter of a training epoch of the default UNet on a CPU), and
    nothing downstream reads the prediction's metadata: ``Invertd`` takes the inverse from the image's."""

    def __init__(self, inferer: Inferer, device: object, amp: object = False, channels_last: object = False) -> None:
        super().__init__()
        self.inferer = inferer
        self.device = torch.device(str(device))
        self.dtype = _autocast_dtype(flag("amp", amp), self.device)
        self.channels_last = flag("channels_last", channels_last)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(inputs, MetaTensor):
            inputs = inputs.as_tensor()
        if self.channels_last and inputs.ndim == 5:
            inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
        if self.dtype is None:
            return self.inferer(inputs, network, *args, **kwargs)
        with torch.autocast(self.device.type, dtype=self.dtype):
            return self.inferer(inputs, network, *args, **kwargs)
