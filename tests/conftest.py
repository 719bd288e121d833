"""Shared helpers for the tests: random logits and targets of the kinds the losses accept."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run through Triton's interpreter on CPU tensors (set before triton is imported).
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The suite builds the native kernel in several processes at once (pytest-xdist, the wheel's venv, the cache
# tests); on a busy 2-core machine one build took over the 45 s default and was stopped, so the native tests saw
# the fallback. The tests that check the timeout set their own.
os.environ.setdefault("MONAI_GDL_BUILD_TIMEOUT_S", "600")


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


def _native_available() -> bool:
    from monai_gdl.kernels import native

    return native.available()


#: Tests of the native CPU kernel: skipped where no C compiler could build it.
needs_native = pytest.mark.skipif(not _native_available(), reason="no C compiler for the native CPU kernel")


def skip_without_triton() -> None:
    """Skip the calling test where the Triton kernels cannot run: Triton missing or older than they need."""
    from monai_gdl.kernels import triton_backend

    reason = triton_backend.unusable_reason()
    if reason is not None:
        pytest.skip(reason)


def _triton_unusable_reason() -> str | None:
    from monai_gdl.kernels import triton_backend

    return triton_backend.unusable_reason()


#: Parameters that run the Triton kernels (under the interpreter on CPU): skipped where they cannot run.
needs_triton = pytest.mark.skipif(_triton_unusable_reason() is not None, reason=str(_triton_unusable_reason()))


def _monai_has_ignore_index() -> bool:
    import inspect

    from monai.losses import DiceLoss

    return "ignore_index" in inspect.signature(DiceLoss).parameters


#: Comparisons with MONAI's ``DiceLoss(ignore_index=...)``, which MONAI added in 1.6 (the floor, 1.5, lacks it; our
#: ``ignore_index`` is also checked against ``mask=`` and float64 math, which need no MONAI).
needs_monai_ignore_index = pytest.mark.skipif(
    not _monai_has_ignore_index(), reason="this MONAI's DiceLoss has no ignore_index (added in MONAI 1.6)"
)


def _monai_has_boundary_loss() -> bool:
    import monai.losses

    return hasattr(monai.losses, "BoundaryLoss")


#: Comparisons with MONAI's ``BoundaryLoss``, which MONAI added in 1.6 (not in the floor, 1.5).
needs_monai_boundary_loss = pytest.mark.skipif(
    not _monai_has_boundary_loss(), reason="this MONAI has no BoundaryLoss (added in MONAI 1.6)"
)


def run_python(code: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``code`` (dedented) in a fresh interpreter with ``env`` added to this one's environment."""
    full = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, env=full
    )


#: Bundle CLI arguments for a tiny, fast network and patch (end-to-end tests of the configs).
TINY = ["--patch_size", "[16,16,16]", "--network_def#channels", "[4,8,16,32]", "--spacing", "[2.0,2.0,2.0]"]
TINY += ["--progress", "false"]
