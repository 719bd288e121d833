"""Checks of the run's arguments, made before any data is loaded: each failure names the argument, the
value seen and the fix (:class:`ArgumentError`, :class:`OutputDirError`, :class:`CheckpointError`):
the boolean knobs (:func:`flag`, the one parser for all of them), the device, the training numbers,
the network against the patch, the output folder and the checkpoint to load. Dataset and label
checks are in :mod:`.datasets`."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from monai_gdl.bundle.atomic import remove_leftovers
from monai_gdl.bundle.checkpoints import CheckpointError, network_mismatch, network_state, read_checkpoint
from monai_gdl.bundle.ranks import rank

__all__ = [
    "ArgumentError",
    "CheckpointError",
    "OutputDirError",
    "check_checkpoint",
    "check_device",
    "check_network",
    "check_output_dir",
    "refuse_package_folder",
    "check_training",
    "flag",
]

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class ArgumentError(ValueError):
    """A bundle argument (``--key value``) whose value cannot work."""


def flag(name: str, value: object) -> bool:
    """A boolean knob as MONAI's CLI or an args file may pass it: a bool, or true/false/1/0/yes/no/on/off
    in any case; anything else is an error naming the knob (``"false"`` must never read as True)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ArgumentError(f"{name}={value!r} is not a boolean; pass --{name} true or --{name} false.")


def check_device(device) -> torch.device:
    """``device`` parsed, and present on this machine."""
    try:
        parsed = torch.device(str(device))
    except (RuntimeError, ValueError) as err:
        raise ArgumentError(f"device={device!r} is not a device ({err}); use cpu, cuda or cuda:N.") from err
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ArgumentError(
                f"device={device!r} but this machine has no usable CUDA GPU (torch {torch.__version__}, "
                "cuda available: False); pass --device cpu."
            )
        if parsed.index is not None and parsed.index >= count:
            raise ArgumentError(
                f"device={device!r} but this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1}); "
                "pass one of those."
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ArgumentError(f"device={device!r} but MPS is not available here; pass --device cpu.")
    return parsed


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < minimum:
        raise ArgumentError(
            f"{name}={value!r}; it must be a whole number >= {minimum} (e.g. --{name} {max(minimum, 1)})."
        )
    return int(value)


def check_training(device, epochs, val_interval, batch_size, learning_rate) -> None:
    """The training knobs: ``epochs``, ``val_interval``, ``batch_size`` whole numbers >= 1, a positive finite
    ``learning_rate``, a ``device`` this machine has."""
    _positive_int("epochs", epochs)
    _positive_int("val_interval", val_interval)
    _positive_int("batch_size", batch_size)
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, (int, float))
        or not (math.isfinite(learning_rate) and learning_rate > 0)
    ):
        raise ArgumentError(
            f"learning_rate={learning_rate!r}; it must be a positive number (e.g. --learning_rate 0.002)."
        )
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
        raise ArgumentError(
            f"network_def#out_channels={out_channels} but num_classes={num_classes}; the network must "
            "predict one channel per class: leave network_def#out_channels at @num_classes."
        )


class OutputDirError(OSError):
    """An ``output_dir`` the run cannot write to."""


def refuse_package_folder(output_dir: str) -> str:
    """An ``output_dir`` inside the installed monai_gdl package (``--bundle_root $(python -m monai_gdl.bundle
    path)`` without ``--output_dir``) is refused: runs never write into site-packages. Returns ``output_dir``."""
    package = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    target = os.path.realpath(os.path.abspath(os.path.expanduser(output_dir)))
    if target == package or target.startswith(package + os.sep):
        raise OutputDirError(
            f"output_dir={output_dir!r} is inside the installed monai_gdl package ({package}), which runs never "
            "write to. Copy the bundle to a folder of your own with `python -m monai_gdl.bundle init DIR` and "
            "pass --bundle_root DIR, or keep the bundle root and pass --output_dir DIR."
        )
    return output_dir


def check_output_dir(output_dir: str) -> str:
    """Create ``output_dir`` and prove it writable (a file is written, synced and removed) before any data
    is loaded, so a read-only or mistyped folder fails at once, naming the path; then (rank 0) remove the
    temporary files a killed run left there. Returns ``output_dir``."""
    refuse_package_folder(output_dir)
    probe = os.path.join(output_dir, f".write-test.tmp-{os.getpid()}")
    try:
        os.makedirs(output_dir, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ok")
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as err:
        raise OutputDirError(
            f"output_dir={output_dir!r} is not writable ({type(err).__name__}: {err.strerror or err}); pass "
            "--output_dir with a folder you can write to."
        ) from err
    if rank() == 0:  # other ranks' (or nodes') writers are not ours to judge
        remove_leftovers(output_dir)
    return output_dir


def check_checkpoint(path: str, network: torch.nn.Module, loaded: bool = True) -> None:
    """Before any data is loaded: ``path`` exists, can be read and fits ``network`` (MONAI's
    ``CheckpointLoader`` then loads it), else a :class:`CheckpointError` saying what to do. Nothing is
    checked when the loader is disabled (``loaded=False``: ``--handlers#0#_disabled_ true``, the model-zoo's
    convention for running a bundle's inference without weights, or with a network given whole)."""
    if not loaded:
        return
    if not os.path.isfile(path):
        raise CheckpointError(
            f"no checkpoint at {path}; train first (configs/train.json with the same --output_dir or --bundle_root), "
            "or pass --ckpt_dir with the folder that holds model.pt."
        )
    checkpoint = read_checkpoint(path)
    network_mismatch(network_state(checkpoint), network, path)


def flag_value(value: object) -> bool:
    """:func:`flag` for a knob whose name is unknown (the deprecated ``monai_gdl.bundle.cli.as_bool``)."""
    return flag("value", value)
