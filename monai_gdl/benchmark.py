"""Speed and memory of our losses against MONAI's and cross-entropy: ``python -m monai_gdl.benchmark``.

Every (case, method) pair runs in fresh processes, so peaks never mix between methods. One
process measures the median wall time of forward+backward over ``--reps`` runs after ``--warmup``
untimed ones (lazy init, compilation, and the first page faults of a fresh process, which on some
virtual machines cost several times a steady-state step). Another measures the peak *extra*
memory: beyond the logits, the target and the gradient, over the warm-up steps and one more. Its
baseline is taken once a tiny call of the same method has loaded the libraries (and built or
compiled any kernel) and the full-size inputs exist, before the first full-size call, so memory a
method keeps resident after its first step (caches, pools, workspaces) counts. The forward and the
backward are read apart: the forward's peak against the baseline, the backward's against the baseline
plus the gradient. Read over the whole step, a temporary the forward makes and frees (a copy of the
target, say) would hide under the gradient the backward allocates later. On CPU the peak is the
process's peak resident set (``VmHWM``, reset before each phase), with glibc told to return freed
blocks at once so the reading counts live memory only (which slows allocation, hence the separate
process); on CUDA it is ``torch.cuda.max_memory_allocated`` (reset before each phase).

Label maps come as ``int64`` (``torch.randint``, MONAI's ``AsDiscrete``) or ``float32`` (MONAI's
``LoadImaged`` of a NIfTI label): ``--label-dtypes`` runs the label-map cases with each.

Ratios are computed within the same run: ``xMONAI`` = MONAI's time / ours (V-Net Dice against
``DiceLoss(softmax=True, squared_pred=True, to_onehot_y=True)``, GDL against
``GeneralizedDiceLoss``, the compound losses against ``DiceCELoss`` / ``DiceFocalLoss`` /
``GeneralizedDiceFocalLoss`` with the same options; Tversky against ``TverskyLoss(alpha=0.3, beta=0.7)``,
Dice + CE + boundary against ``DiceCELoss + BoundaryLoss``, which runs its distance transform every step),
``xCE`` = cross-entropy's time / ours, ``/Dice`` = the method's time / our fused V-Net Dice's (what a
compound term costs on top), ``/D+CE`` = the method's time / our fused Dice + CE's (what a structure term
costs on top of it; its map, a skeleton label map or ``C`` distance maps, is an input made beforehand,
as the data pipeline does),
``mem%`` = our extra memory as a percentage of MONAI's, ``%copyBW`` = the bytes a two-pass loss must move
(read logits and target
twice, write the gradient) per second of the method, as a share of the copy bandwidth measured on
the same tensors in the same process. The case heading names the backend our fused rows ran on.

``--structure-maps`` times instead the data-pipeline transforms the structure terms read (the tubed skeleton,
the signed distance maps): per case on the MSD hippocampus labels (``--hippocampus DIR``) and on 128^3
synthetic labels (a large ellipsoid and branching tubes), median over the cases after one warm-up case.

``--busy N`` times every method beside ``N`` processes that keep a core busy each, as data-loading workers
do during training: a pass split into many small parallel regions waits for descheduled threads there, so a
loss that is fast alone can be slow beside them. Memory is measured without them.

``--huge-pages`` runs every method with ``THP_MEM_ALLOC_ENABLE=1``, so PyTorch's allocator puts
all large tensors on transparent huge pages, as our native backend does for its gradient buffer:
a like-for-like allocator comparison (page faults dominate MONAI's time on some machines).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

METHODS = {
    "vnet_fused": "V-Net Dice, fused (ours)",
    "gdl_fused": "GDL, fused (ours)",
    "vnet_reference": "V-Net Dice, reference path (ours)",
    "gdl_reference": "GDL, reference path (ours)",
    "monai_dice": "MONAI DiceLoss(squared_pred)",
    "monai_gdl": "MONAI GeneralizedDiceLoss",
    "cross_entropy": "F.cross_entropy",
    "vnet_ce_fused": "V-Net Dice + CE, fused (ours)",
    "vnet_plus_ce": "fused V-Net Dice + F.cross_entropy",
    "gdl_ce_fused": "GDL + CE, fused (ours)",
    "vnet_focal_fused": "V-Net Dice + focal, fused (ours)",
    "gdl_focal_fused": "GDL + focal, fused (ours)",
    "monai_dice_ce": "MONAI DiceCELoss(squared_pred)",
    "monai_dice_focal": "MONAI DiceFocalLoss(squared_pred)",
    "monai_gdl_focal": "MONAI GeneralizedDiceFocalLoss",
    "tversky_fused": "Tversky (0.3, 0.7), fused (ours)",
    "monai_tversky": "MONAI TverskyLoss(0.3, 0.7)",
    "vnet_ce_skel_fused": "Dice + CE + Skeleton Recall (ours)",
    "vnet_ce_boundary_fused": "Dice + CE + boundary, fused (ours)",
    "monai_dice_ce_boundary": "MONAI DiceCELoss + BoundaryLoss",
}
#: The structure map a method reads (made before the timed steps, as a data pipeline does).
MAPS = {"vnet_ce_skel_fused": "skeleton", "vnet_ce_boundary_fused": "distance"}
#: The rows of the default run: the Dice losses and their peers. The compound rows are opt-in
#: (``--methods``), with the README's command for them.
DEFAULT_METHODS = (
    "vnet_fused",
    "gdl_fused",
    "vnet_reference",
    "gdl_reference",
    "monai_dice",
    "monai_gdl",
    "cross_entropy",
)
MONAI_PEER = {
    "vnet_fused": "monai_dice",
    "vnet_reference": "monai_dice",
    "gdl_fused": "monai_gdl",
    "gdl_reference": "monai_gdl",
    "vnet_ce_fused": "monai_dice_ce",
    "vnet_plus_ce": "monai_dice_ce",
    "vnet_focal_fused": "monai_dice_focal",
    "gdl_focal_fused": "monai_gdl_focal",
    "tversky_fused": "monai_tversky",
    "vnet_ce_boundary_fused": "monai_dice_ce_boundary",
}
_MIB = 1 << 20


def _loss_callable(method: str, target_kind: str):
    import torch.nn.functional as F
    from monai import losses as monai_losses

    import monai_gdl

    label_map = target_kind == "label"
    common = dict(softmax=True, to_onehot_y=label_map)
    if method == "cross_entropy":
        return lambda x, target, labels, maps: F.cross_entropy(x, labels[:, 0])
    if method == "vnet_plus_ce":
        dice = monai_gdl.VNetDiceLoss(**common)
        return lambda x, target, labels, maps: dice(x, target) + F.cross_entropy(x, labels[:, 0])
    if method == "vnet_ce_skel_fused":
        skel = monai_gdl.VNetDiceCESkeletonRecallLoss(**common)
        return lambda x, target, labels, maps: skel(x, target, skeleton=maps["skeleton"])
    if method == "vnet_ce_boundary_fused":
        boundary = monai_gdl.VNetDiceCEBoundaryLoss(**common)
        return lambda x, target, labels, maps: boundary(x, target, distance=maps["distance"])
    if method == "monai_dice_ce_boundary":
        dice_ce = monai_losses.DiceCELoss(**common, squared_pred=True)
        their_boundary = monai_losses.BoundaryLoss(**common)
        return lambda x, target, labels, maps: dice_ce(x, target) + their_boundary(x, target)
    ours = {
        "vnet": lambda impl: monai_gdl.VNetDiceLoss(**common, implementation=impl),
        "gdl": lambda impl: monai_gdl.SudreGeneralizedDiceLoss(**common, implementation=impl),
        "vnet_ce": lambda impl: monai_gdl.VNetDiceCELoss(**common, implementation=impl),
        "gdl_ce": lambda impl: monai_gdl.SudreGeneralizedDiceCELoss(**common, implementation=impl),
        "vnet_focal": lambda impl: monai_gdl.VNetDiceFocalLoss(**common, implementation=impl),
        "gdl_focal": lambda impl: monai_gdl.SudreGeneralizedDiceFocalLoss(**common, implementation=impl),
        "tversky": lambda impl: monai_gdl.SalehiTverskyLoss(**common, alpha=0.3, beta=0.7, implementation=impl),
    }
    theirs = {
        "monai_dice": lambda: monai_losses.DiceLoss(**common, squared_pred=True),
        "monai_gdl": lambda: monai_losses.GeneralizedDiceLoss(**common),
        "monai_dice_ce": lambda: monai_losses.DiceCELoss(**common, squared_pred=True),
        "monai_dice_focal": lambda: monai_losses.DiceFocalLoss(**common, squared_pred=True),
        "monai_gdl_focal": lambda: monai_losses.GeneralizedDiceFocalLoss(**common),
        "monai_tversky": lambda: monai_losses.TverskyLoss(**common, alpha=0.3, beta=0.7),
    }
    if method in theirs:
        loss = theirs[method]()
    else:
        name, impl = method.rsplit("_", 1)
        loss = ours[name]("fused" if impl == "fused" else "reference")
    return lambda x, target, labels, maps: loss(x, target)


def _rss(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def _peak_meter(device):
    """``(reset, peak)``: start a phase, then read its peak memory in bytes (CUDA allocator or resident set)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.reset_peak_memory_stats, torch.cuda.max_memory_allocated

    def reset() -> None:
        with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS
            f.write("5")

    return reset, lambda: _rss("VmHWM:")


def _worker(spec: dict) -> dict:
    """Run one (case, method) in this process and return its timings and peak extra memory."""
    import torch

    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    b, c, s = spec["batch"], spec["classes"], spec["size"]
    loss_fn = _loss_callable(spec["method"], spec["target"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def make_inputs(size: int):
        gen = torch.Generator(device="cpu").manual_seed(0)
        logits = torch.randn(b, c, size, size, size, generator=gen).to(device=device, dtype=dtype)
        labels = torch.randint(0, c, (b, 1, size, size, size), generator=gen).to(device)
        target = labels.to(getattr(torch, spec.get("label_dtype", "int64")))
        if spec["target"] == "onehot":
            target = torch.nn.functional.one_hot(labels[:, 0], c).movedim(-1, 1).to(dtype).contiguous()
        maps = {}
        if MAPS.get(spec["method"]) == "skeleton":  # about 5% of each class's voxels on its skeleton
            on = torch.rand(labels.shape, generator=gen) < 0.05
            maps["skeleton"] = torch.where(on, labels.cpu(), 0).to(device=device, dtype=torch.uint8)
        elif MAPS.get(spec["method"]) == "distance":  # the kernel's cost does not depend on the values
            maps["distance"] = torch.randn(b, c, size, size, size, generator=gen).to(device)
        return logits.requires_grad_(True), target, labels, maps

    def step(logits, target, labels, maps) -> None:
        logits.grad = None
        loss_fn(logits, target, labels, maps).backward()
        sync()

    step(*make_inputs(8))  # a tiny call: libraries loaded, kernels built or compiled
    logits, target, labels, maps = make_inputs(s)
    if spec["measure"] == "time":
        for _ in range(spec["warmup"]):  # lazy init, compilation, the allocator's first page faults
            step(logits, target, labels, maps)
        times = []
        for _ in range(spec["reps"]):
            t0 = time.perf_counter()
            step(logits, target, labels, maps)
            times.append(time.perf_counter() - t0)
        return {
            "median_s": statistics.median(times),
            "backend": _backend_used(spec["method"], logits, target),
            **_bandwidth(logits, target, spec["reps"], sync),
        }
    grad_bytes = logits.numel() * logits.element_size()
    reset, peak = _peak_meter(device)
    sync()
    before = torch.cuda.memory_allocated() if device.type == "cuda" else _rss("VmRSS:")
    extra = 0
    for _ in range(spec["warmup"] + 1):
        logits.grad = None
        reset()
        loss = loss_fn(logits, target, labels, maps)
        sync()
        extra = max(extra, peak() - before)  # forward: no gradient yet
        reset()
        loss.backward()
        del loss
        sync()
        extra = max(extra, peak() - before - grad_bytes)
    return {"extra_bytes": extra}


def _backend_used(method: str, logits, target) -> str | None:
    """Which kernel backend our fused methods ran on (None for the others)."""
    if not method.endswith("fused"):
        return None
    from monai_gdl import kernels

    flat = logits.detach().reshape(*logits.shape[:2], -1)
    return kernels.resolve_backend(flat, target.reshape(*target.shape[:2], -1), None, target.shape[1] == 1)


def _bandwidth(logits, target, reps: int, sync) -> dict:
    """The bytes a two-pass fused loss must move, and the copy bandwidth measured on the same tensors.

    Forward reads logits and target, backward reads them again and writes the gradient; the
    reference bandwidth is ``dst.copy_(logits)`` (read + write) into a preallocated buffer.
    """
    import torch

    nbytes = logits.numel() * logits.element_size()
    moved = 3 * nbytes + 2 * target.numel() * target.element_size()
    dst = torch.empty_like(logits, requires_grad=False)
    with torch.no_grad():
        dst.copy_(logits)
        times = []
        for _ in range(max(3, reps)):
            t0 = time.perf_counter()
            dst.copy_(logits)
            sync()
            times.append(time.perf_counter() - t0)
    return {"moved_bytes": moved, "copy_bytes_per_s": 2 * nbytes / statistics.median(times)}


def _run_worker(spec: dict, env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "monai_gdl.benchmark", "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


#: What a ``--busy`` process runs: a spin loop, as a data-loading worker keeps a core busy (the tag names it).
BUSY_LOOP = "# monai_gdl.benchmark --busy\nwhile True:\n    pass\n"


def _run_case(spec: dict, huge_pages: bool, busy: int = 0) -> dict:
    env = dict(os.environ)
    if huge_pages:  # PyTorch's CPU allocator advises every allocation >= 2 MiB onto huge pages
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    spinners = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
    try:
        timing = _run_worker(dict(spec, measure="time"), env)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    memory = _run_worker(
        dict(spec, measure="memory"), dict(env, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    )
    return {**timing, **memory}


def _machine(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} threads={torch.get_num_threads()}"


def _structure_map_times(hippocampus: str, cases: int) -> int:
    """Median seconds per case of :func:`~monai_gdl.tubed_skeleton` and :func:`~monai_gdl.signed_distance_map`."""
    import glob

    import numpy as np

    from monai_gdl import signed_distance_map, tubed_skeleton

    labels: dict[str, list] = {}
    files = sorted(glob.glob(os.path.join(hippocampus, "labelsTr", "*.nii*")))[: cases + 1]
    if files:
        import nibabel as nib

        labels["MSD hippocampus (native grid, 3 classes)"] = [np.asarray(nib.load(f).dataobj) for f in files]
    else:
        print(f"# no labels in {hippocampus}/labelsTr: hippocampus rows skipped (--hippocampus DIR)")
    from monai_gdl.study import write_tube_dataset

    with __import__("tempfile").TemporaryDirectory() as tmp:
        folder, _ = write_tube_dataset(tmp, min(cases, 4) + 1, (128, 128, 128), seed=0)
        import nibabel as nib

        labels["128^3 synthetic (ellipsoid + tubes, 3 classes)"] = [
            np.asarray(nib.load(f).dataobj) for f in sorted(glob.glob(os.path.join(folder, "labelsTr", "*.nii*")))
        ]
    print(f"# structure maps: seconds per case (median after one warm-up case), machine: {_machine('cpu')}")
    print("| labels | cases | shape | tubed_skeleton s | signed_distance_map s |")
    print("|---|---|---|---|---|")
    for name, volumes in labels.items():
        times: dict[str, list[float]] = {"skeleton": [], "distance": []}
        for i, label in enumerate(volumes):
            for key, fn in (("skeleton", tubed_skeleton), ("distance", signed_distance_map)):
                t0 = time.perf_counter()
                fn(label, 3)
                if i:
                    times[key].append(time.perf_counter() - t0)
        shape = "x".join(map(str, volumes[0].shape))
        print(
            f"| {name} | {len(volumes) - 1} | {shape} | {statistics.median(times['skeleton']):.3f} | "
            f"{statistics.median(times['distance']):.3f} |"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, nargs="+", default=[4, 14, 32])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--targets", nargs="+", default=["label", "onehot"], choices=["label", "onehot"])
    parser.add_argument(
        "--label-dtypes",
        nargs="+",
        default=["int64"],
        choices=["int64", "float32", "int32", "uint8"],
        help="dtypes of the label-map target (default int64, as torch.randint; float32 is what LoadImaged gives)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        choices=list(METHODS),
        help="rows to run (default: the Dice losses and their peers; add e.g. vnet_ce_fused "
        "monai_dice_ce for the compound losses)",
    )
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before the timed ones (default 5)")
    parser.add_argument(
        "--huge-pages",
        action="store_true",
        help="run every method with THP_MEM_ALLOC_ENABLE=1 (PyTorch's allocator on transparent huge pages, Linux)",
    )
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        help="time every method beside this many busy processes (spin loops), as beside data-loading workers "
        "(default 0; memory is measured without them)",
    )
    parser.add_argument("--json", help="also write all results to this JSON file")
    parser.add_argument(
        "--structure-maps", action="store_true", help="time the skeleton and distance map transforms instead"
    )
    parser.add_argument(
        "--hippocampus",
        default=os.path.join("..", "shared", "data", "Task04_Hippocampus"),
        help="MSD Task04 folder for --structure-maps (default: ../shared/data/Task04_Hippocampus)",
    )
    parser.add_argument("--cases", type=int, default=20, help="cases per dataset for --structure-maps (default 20)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.busy < 0:
        parser.error(f"--busy is a number of processes, 0 or more; got {args.busy}")
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    if args.structure_maps:
        return _structure_map_times(args.hippocampus, args.cases)

    print(
        f"# monai_gdl benchmark: fwd+bwd, {args.device} {args.dtype}, B={args.batch}, median of {args.reps} "
        f"after {args.warmup} warm-up steps"
        + (", THP_MEM_ALLOC_ENABLE=1 for all" if args.huge_pages else "")
        + (f", timed beside {args.busy} busy processes" if args.busy else "")
    )
    print(f"# machine: {_machine(args.device)}")
    results = []
    kinds = [(t, d) for t in args.targets for d in (args.label_dtypes if t == "label" else [args.dtype])]
    for target, target_dtype in kinds:
        for classes in args.classes:
            for size in args.sizes:
                case = dict(
                    device=args.device,
                    dtype=args.dtype,
                    batch=args.batch,
                    classes=classes,
                    size=size,
                    target=target,
                    label_dtype=target_dtype,
                    reps=args.reps,
                    warmup=args.warmup,
                )
                rows = {m: _run_case(dict(case, method=m), args.huge_pages, args.busy) for m in args.methods}
                results.append(dict(case, huge_pages=args.huge_pages, busy=args.busy, results=rows))
                backends = sorted({r["backend"] for r in rows.values() if r.get("backend")})
                print(
                    f"\n## target={target} ({target_dtype}) C={classes} {size}^3"
                    + (f" (fused backend: {', '.join(backends)})" if backends else "")
                )
                print(
                    f"| {'method':<36} | {'ms':>9} | {'extra MiB':>9} | {'xMONAI':>7} | {'xCE':>6} | {'/Dice':>6} "
                    f"| {'/D+CE':>6} | {'mem%':>7} | {'%copyBW':>7} |"
                )
                print(f"|{'-' * 38}|{'-' * 11}|{'-' * 11}|{'-' * 9}|{'-' * 8}|{'-' * 8}|{'-' * 8}|{'-' * 9}|{'-' * 9}|")
                for method, r in rows.items():
                    if "error" in r or "median_s" not in r:
                        print(f"| {METHODS[method]:<36} | error: {r.get('error', '?')[:60]}")
                        continue
                    peer = rows.get(MONAI_PEER.get(method, ""), {})
                    ce = rows.get("cross_entropy", {})
                    x_monai = f"{peer['median_s'] / r['median_s']:.1f}x" if "median_s" in peer else "-"
                    x_ce = f"{ce['median_s'] / r['median_s']:.2f}x" if "median_s" in ce else "-"
                    dice = rows.get("vnet_fused", {})
                    per_dice = f"{r['median_s'] / dice['median_s']:.2f}" if "median_s" in dice else "-"
                    dice_ce = rows.get("vnet_ce_fused", {})
                    per_dice_ce = f"{r['median_s'] / dice_ce['median_s']:.2f}" if "median_s" in dice_ce else "-"
                    mem = f"{100 * r['extra_bytes'] / peer['extra_bytes']:.1f}%" if peer.get("extra_bytes") else "-"
                    bw = f"{100 * r['moved_bytes'] / r['median_s'] / r['copy_bytes_per_s']:.0f}%"
                    print(
                        f"| {METHODS[method]:<36} | {1e3 * r['median_s']:9.1f} | {r['extra_bytes'] / _MIB:9.1f} "
                        f"| {x_monai:>7} | {x_ce:>6} | {per_dice:>6} | {per_dice_ce:>6} | {mem:>7} | {bw:>7} |",
                        flush=True,
                    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
