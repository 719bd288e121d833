"""Checks of the run's arguments, made before any data is loaded: each failure names the argument, the
value seen and the fix (:class:`ArgumentError`). Dataset and label checks are in :mod:`.datasets`,
checkpoint checks in :mod:`.handlers`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["ArgumentError", "check_device", "check_network", "check_training"]


class ArgumentError(ValueError):
    """A bundle argument (``--key value``) whose value cannot work."""


def check_device(device) -> torch.device:
    """``device`` parsed, and present on this machine."""
    try:
        parsed = torch.device(str(device))
    except (RuntimeError, ValueError) as err:
        raise ArgumentError(f"device={device!r} is not a device ({err}); use cpu, cuda or cuda:N.") from err
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ArgumentError(f"device={device!r} but this machine has no usable CUDA GPU (torch {torch.__version__}, "
                                "cuda available: False); pass --device cpu.")
        if parsed.index is not None and parsed.index >= count:
            raise ArgumentError(f"device={device!r} but this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1}); "
                                "pass one of those.")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ArgumentError(f"device={device!r} but MPS is not available here; pass --device cpu.")
    return parsed


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < minimum:
        raise ArgumentError(f"{name}={value!r}; it must be a whole number >= {minimum} (e.g. --{name} {max(minimum, 1)}).")
    return int(value)


def check_training(device, epochs, val_interval, batch_size, learning_rate) -> None:
    """The training knobs: ``epochs``, ``val_interval``, ``batch_size`` whole numbers >= 1, a positive finite
    ``learning_rate``, a ``device`` this machine has."""
    _positive_int("epochs", epochs)
    _positive_int("val_interval", val_interval)
    _positive_int("batch_size", batch_size)
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or not (
        math.isfinite(learning_rate) and learning_rate > 0
    ):
        raise ArgumentError(f"learning_rate={learning_rate!r}; it must be a positive number (e.g. --learning_rate 0.002).")
    check_device(device)


def check_network(network: torch.nn.Module, patch_size: Sequence[int], num_classes: int) -> None:
    """The patch fits the network: three sizes, each divisible by the product of the network's strides (the
    UNet halves the patch that many times and must concatenate equal sizes back); and the network predicts
    ``num_classes`` channels."""
    _positive_int("num_classes", num_classes, minimum=2)
    sizes = list(patch_size) if isinstance(patch_size, (list, tuple)) else None
    if sizes is None or len(sizes) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ArgumentError(f"patch_size={patch_size!r}; give three whole numbers, e.g. --patch_size [32,32,32].")
    strides = getattr(network, "strides", None)
    if strides is not None:
        factor = math.prod(int(s) if isinstance(s, int) else max(int(v) for v in s) for s in strides)
        bad = [s for s in sizes if s % factor]
        if bad:
            fixed = [max(factor, round(s / factor) * factor) for s in sizes]
            raise ArgumentError(
                f"patch_size={sizes} does not fit the network: its strides {list(strides)} shrink the patch by "
                f"{factor}, so every size must be divisible by {factor} (not {bad}); pass --patch_size "
                f"[{','.join(map(str, fixed))}]."
            )
    out_channels = getattr(network, "out_channels", None)
    if out_channels is not None and int(out_channels) != int(num_classes):
        raise ArgumentError(f"network_def#out_channels={out_channels} but num_classes={num_classes}; the network must "
                            "predict one channel per class: leave network_def#out_channels at @num_classes.")
