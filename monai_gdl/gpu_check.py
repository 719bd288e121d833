"""``python -m monai_gdl.gpu_check``: everything CUDA checked at once, for a GPU owner to run and paste.

Every loss, on every logits dtype (float32, float16, bfloat16), layout (contiguous, channels-last) and target
kind (``int64`` and ``uint8`` label maps, a float one-hot), is run on the Triton backend and on the eager chunk
math (the reference the kernels are tested against) on the same random inputs; the table gives the largest
relative difference of the value and of the gradient, and **pass** when both are within the dtype's tolerance
(:data:`monai_gdl.kernels.backends.CHECK_TOLERANCE`). Then the benchmark's target case runs on the device
(``--no-benchmark`` skips it). Exit status 0 when every row passes, 1 otherwise, 2 when no device is there.

``--device cpu`` runs the same check on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``; slow: use
``--quick``); the tests do that.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Callable

import torch

__all__ = ["CASES", "check_case", "main"]


def _losses() -> dict[str, tuple[Callable[..., torch.nn.Module], str | None]]:
    """name -> (constructor taking ``implementation``, the structure map it reads or None)."""
    import monai_gdl as m

    return {
        "VNetDiceLoss": (lambda impl: m.VNetDiceLoss(softmax=True, implementation=impl), None),
        "SudreGeneralizedDiceLoss": (lambda impl: m.SudreGeneralizedDiceLoss(softmax=True, implementation=impl), None),
        "VNetDiceCELoss": (lambda impl: m.VNetDiceCELoss(implementation=impl), None),
        "VNetDiceBCELoss": (lambda impl: m.VNetDiceBCELoss(sigmoid=True, implementation=impl), None),
        "VNetDiceFocalLoss": (lambda impl: m.VNetDiceFocalLoss(softmax=True, implementation=impl), None),
        "SudreGeneralizedDiceFocalLoss": (
            lambda impl: m.SudreGeneralizedDiceFocalLoss(softmax=True, use_softmax=True, implementation=impl),
            None,
        ),
        "FocalTverskyLoss": (lambda impl: m.FocalTverskyLoss(softmax=True, implementation=impl), None),
        "VNetDiceCESkeletonRecallLoss": (
            lambda impl: m.VNetDiceCESkeletonRecallLoss(implementation=impl),
            "skeleton",
        ),
        "VNetDiceCEBoundaryLoss": (lambda impl: m.VNetDiceCEBoundaryLoss(implementation=impl), "distance"),
    }


CASES = {
    "dtypes": ("float32", "float16", "bfloat16"),
    "layouts": ("contiguous", "channels_last"),
    "targets": ("int64 labels", "uint8 labels", "one-hot"),
}


def check_case(
    loss_name: str, dtype: str, layout: str, target_kind: str, device: str, size: int, classes: int = 4
) -> dict:
    """One row: Triton against eager on the same inputs; relative errors of the value and the gradient."""
    from monai_gdl.kernels import CHECK_TOLERANCE

    make, map_kind = _losses()[loss_name]
    g = torch.Generator().manual_seed(0)
    shape = (2, classes, size, size, size)
    logits = torch.randn(shape, generator=g).to(device=device, dtype=getattr(torch, dtype))
    if layout == "channels_last":
        logits = logits.to(memory_format=torch.channels_last_3d)
    labels = torch.randint(0, classes, (2, 1, size, size, size), generator=g)
    if target_kind == "one-hot":
        target = torch.nn.functional.one_hot(labels[:, 0], classes).movedim(-1, 1).float().to(device)
    else:
        target = labels.to(device=device, dtype=torch.int64 if target_kind.startswith("int64") else torch.uint8)
    maps = {}
    if map_kind == "skeleton":
        maps["skeleton"] = torch.where(labels % 2 == 1, labels, 0).to(device=device, dtype=torch.uint8)
    elif map_kind == "distance":
        maps["distance"] = torch.randn(shape, generator=g).to(device)
    one_hot_target = target_kind == "one-hot"
    results = {}
    for impl in ("triton", "eager"):
        x = logits.detach().clone().requires_grad_(True)
        try:
            loss = make(impl)
            loss.to_onehot_y = not one_hot_target
            value = loss(x, target, **maps)
            value.backward()
            results[impl] = (value.detach().double().cpu(), x.grad.double().cpu())
        except Exception as err:  # a failing kernel is a row of the table, not the end of the check
            results[impl] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:120]
    row = {"loss": loss_name, "dtype": dtype, "layout": layout, "target": target_kind}
    if isinstance(results["triton"], str) or isinstance(results["eager"], str):
        error = results["triton"] if isinstance(results["triton"], str) else results["eager"]
        return {**row, "value_err": float("nan"), "grad_err": float("nan"), "ok": False, "error": error}
    (v_t, g_t), (v_e, g_e) = results["triton"], results["eager"]
    rtol, atol = CHECK_TOLERANCE[getattr(torch, dtype)]
    value_err = float((v_t - v_e).abs() / v_e.abs().clamp_min(1e-12))
    grad_err = float((g_t - g_e).abs().max() / g_e.abs().max().clamp_min(1e-30))
    ok = bool(torch.allclose(v_t, v_e, rtol=rtol, atol=atol) and grad_err <= max(rtol, atol) * 10)
    return {**row, "value_err": value_err, "grad_err": grad_err, "ok": ok, "error": ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_gdl.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--size", type=int, default=32, help="spatial size of the check's volumes (default 32)")
    parser.add_argument("--quick", action="store_true", help="float32, contiguous, int64 labels only")
    parser.add_argument("--losses", nargs="+", default=None, choices=list(_losses()))
    parser.add_argument("--no-benchmark", action="store_true", help="skip the benchmark's target case")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; run this on the GPU machine (or --device cpu with TRITON_INTERPRET=1).")
        return 2
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("error: --device cpu runs Triton's interpreter: set TRITON_INTERPRET=1.")
        return 2
    try:
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        print("error: Triton is not installed (pip install triton).")
        return 2
    dtypes, layouts, targets = (
        (("float32",), ("contiguous",), ("int64 labels",))
        if args.quick
        else (
            CASES["dtypes"],
            CASES["layouts"],
            CASES["targets"],
        )
    )
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (Triton interpreter)"
    print(f"# monai_gdl gpu_check on {device_name}, torch {torch.__version__}, triton {triton_version}")
    print("| loss | dtype | layout | target | value rel. err | grad rel. err | result |")
    print("|---|---|---|---|---|---|---|")
    failures = 0
    for loss_name in args.losses or list(_losses()):
        for dtype in dtypes:
            for layout in layouts:
                for target in targets:
                    row = check_case(loss_name, dtype, layout, target, args.device, args.size)
                    failures += not row["ok"]
                    verdict = "pass" if row["ok"] else f"FAIL {row['error']}".strip()
                    print(
                        f"| {row['loss']} | {dtype} | {layout} | {target} | {row['value_err']:.2e} | "
                        f"{row['grad_err']:.2e} | {verdict} |",
                        flush=True,
                    )
    print(f"\n{failures} failing row(s)." if failures else "\nall rows pass.")
    if not args.no_benchmark:
        print("\n# benchmark, target case")
        command = [
            sys.executable,
            "-m",
            "monai_gdl.benchmark",
            "--device",
            args.device,
            "--classes",
            "14",
            "--sizes",
            "128",
            "--targets",
            "label",
            "--methods",
            "vnet_fused",
            "vnet_ce_fused",
            "monai_dice",
            "monai_dice_ce",
            "cross_entropy",
        ]
        subprocess.run(command, check=False)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
