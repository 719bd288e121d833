"""The nnU-Net-like recipe's planning step against nnU-Net v2's own planner: its pooling/kernel rules
(``get_pool_and_conv_props``) and target-spacing rule (``ExperimentPlanner.determine_fullres_target_spacing``) on
random fingerprints, and its published plan for MSD hippocampus (``tests/data/nnunet/hippocampus_plans.json``,
written by ``nnUNetv2_plan_and_preprocess``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from monai_gdl.bundle.planning import PlanError, network_shape, plan_dataset, plan_for_run, target_spacing

HERE = os.path.dirname(__file__)
HIPPOCAMPUS = os.path.join(HERE, "..", "..", "shared", "data", "Task04_Hippocampus")


def _nnunet():
    if os.environ.get("MONAI_GDL_REQUIRE_NNUNET") != "1":
        pytest.importorskip("nnunetv2", reason='nnU-Net v2 is not installed (pip install "monai_gdl[nnunet]")')
    import nnunetv2

    return nnunetv2


def test_network_shape_is_nnunets_pooling_and_kernels():
    _nnunet()
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    rng = np.random.default_rng(0)
    for _ in range(400):
        spacing = [float(s) for s in rng.choice([0.5, 0.7, 0.8, 1.0, 1.5, 2.5, 3.0, 5.0, 7.5], 3)]
        patch = [int(p) for p in rng.integers(5, 300, 3)]
        _, strides, kernels, padded, _ = get_pool_and_conv_props(spacing, patch, 4, 5)
        assert network_shape(patch, spacing, 4, 5) == (
            [list(s) for s in strides],
            [list(k) for k in kernels],
            [int(p) for p in padded],
        ), (spacing, patch)


def test_target_spacing_is_nnunets():
    _nnunet()
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    rng = np.random.default_rng(1)
    for case in range(60):
        n = int(rng.integers(3, 30))
        spacings = rng.uniform(0.5, 1.5, (n, 3))
        shapes = rng.integers(40, 300, (n, 3)).astype(float)
        if case % 2:  # thick slices on one axis, few of them: nnU-Net's 10th-percentile rule
            axis = int(rng.integers(0, 3))
            spacings[:, axis] = rng.choice([3.0, 5.0, 6.0, 8.0, 10.0], n)
            shapes[:, axis] = rng.integers(8, 30, n)
        planner = object.__new__(ExperimentPlanner)
        planner.overwrite_target_spacing = None
        planner.anisotropy_threshold = 3
        planner.dataset_fingerprint = {"spacings": list(spacings), "shapes_after_crop": list(shapes)}
        np.testing.assert_allclose(
            target_spacing(spacings, shapes), planner.determine_fullres_target_spacing(), rtol=0, atol=1e-9
        )


@pytest.mark.skipif(not os.path.isdir(HIPPOCAMPUS), reason="../shared/data/Task04_Hippocampus not found")
def test_hippocampus_plan_is_nnunets_3d_fullres():
    """nnU-Net's axes are SimpleITK's (z, y, x), ours the RAS voxel axes: reversed."""
    with open(os.path.join(HERE, "data", "nnunet", "hippocampus_plans.json")) as f:
        nnunet = json.load(f)["configurations"]["3d_fullres"]
    arch = nnunet["architecture"]["arch_kwargs"]
    plan = plan_dataset(HIPPOCAMPUS)
    assert plan["spacing"] == nnunet["spacing"][::-1]
    assert plan["patch_size"] == nnunet["patch_size"][::-1]
    assert plan["strides"] == [s[::-1] for s in arch["strides"]]
    assert plan["kernel_size"] == [k[::-1] for k in arch["kernel_sizes"]]
    assert plan["filters"] == arch["features_per_stage"]
    assert plan["deep_supr_num"] == arch["n_stages"] - 2
    # nnU-Net's batch cap: 5% of the dataset's voxels (median image x cases), at least 2
    cap = round(0.05 * np.prod(plan["median_size"]) * plan["cases"] / np.prod(plan["patch_size"]))
    assert plan["batch_size"] == max(2, cap)


def _write_dataset(folder, shapes, spacing):
    os.makedirs(os.path.join(folder, "imagesTr"))
    os.makedirs(os.path.join(folder, "labelsTr"))
    for i, shape in enumerate(shapes):
        affine = np.diag([*spacing, 1.0])
        for sub in ("imagesTr", "labelsTr"):
            nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), affine), os.path.join(folder, sub, f"c{i}.nii.gz"))
    return folder


def test_a_large_patch_shrinks_to_the_voxel_budget_along_its_longest_axis(tmp_path):
    data = _write_dataset(str(tmp_path / "ds"), [(256, 192, 96), (240, 200, 100), (250, 190, 90)], (0.8, 0.8, 2.0))
    big = plan_dataset(data)
    small = plan_dataset(data, max_patch_voxels=48**3)
    assert np.prod(small["patch_size"]) <= 48**3 < np.prod(big["patch_size"])
    for plan in (big, small):
        pools = np.sum(np.asarray(plan["strides"]) == 2, axis=0)
        assert all(p % 2**n == 0 for p, n in zip(plan["patch_size"], pools))
        assert plan["spacing"] == [0.8, 0.8, 2.0]
    assert small["strides"][1] == [2, 2, 1]  # the 2 mm axis waits until the others are as coarse


def test_the_plan_is_recorded_and_a_run_asking_for_another_is_refused(tmp_path):
    data = _write_dataset(str(tmp_path / "ds"), [(40, 40, 30)] * 3, (1.0, 1.0, 1.0))
    out = str(tmp_path / "out")
    plan = plan_for_run(data, out, base_filters=8)
    assert plan["filters"][0] == 8 and json.load(open(os.path.join(out, "plan.json"))) == plan
    assert plan_for_run("", out, base_filters=8) == plan  # inference: no dataset needed
    with pytest.raises(PlanError, match=r"records the plan .*'base_filters': 8.*asks for \{'base_filters': 16\}"):
        plan_for_run(data, out, base_filters=16)
    with pytest.raises(PlanError, match=r"no plan.json in output_dir=.*--output_dir of the trained run"):
        plan_for_run("", str(tmp_path / "elsewhere"))
    with pytest.raises(PlanError, match=r"--plan_options#base_filters 0; give a whole number >= 1"):
        plan_dataset(data, base_filters=0)
    import monai_gdl.bundle as bundle
    from monai_gdl.bundle.checks import OutputDirError

    package = os.path.dirname(bundle.__file__)
    with pytest.raises(OutputDirError, match=r"inside the installed monai_gdl package"):
        plan_for_run(data, package)
    assert not os.path.exists(os.path.join(package, "plan.json"))


def test_the_plan_command_prints_the_plan_and_names_a_missing_folder(tmp_path):
    data = _write_dataset(str(tmp_path / "ds"), [(40, 48, 30)] * 2, (1.0, 1.0, 1.0))
    run = subprocess.run([sys.executable, "-m", "monai_gdl.bundle", "plan", data], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["patch_size"] == plan_dataset(data)["patch_size"] == [40, 48, 32]
    run = subprocess.run([sys.executable, "-m", "monai_gdl.bundle", "plan", str(tmp_path / "no")], capture_output=True)
    assert run.returncode == 1 and b"does not exist" in run.stderr.strip().splitlines()[-1]
