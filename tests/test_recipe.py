"""The nnU-Net-like recipe (configs/recipe_nnunet_like*.json), cross-validation folds, test-time mirroring and the
fold ensemble: folds against their definition, mirroring against the 2^k flipped passes computed here, the
ensemble's segmentations against the folds' softmax averaged here, and the recipe's training resumed and repeated
bit for bit."""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import TINY
from monai.bundle import ConfigParser
from monai.inferers import SimpleInferer, SlidingWindowInferer

from monai_gdl.bundle.checks import ArgumentError
from monai_gdl.bundle.datasets import DatasetError, case_id, fold_cases, msd_datalist, write_synthetic_dataset
from monai_gdl.bundle.mirroring import MirroredInferer

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
RECIPE = ["train.json", "recipe_nnunet_like.json", "recipe_nnunet_like_training.json"]


def test_folds_are_disjoint_cover_every_case_and_differ_in_size_by_at_most_one():
    cases = [{"image": f"/d/imagesTr/case_{i:03d}.nii.gz", "label": "x"} for i in range(23)]
    folds = [fold_cases(cases, k, 5, seed=3) for k in range(5)]
    names = [sorted(case_id(c["image"]) for c in fold) for fold in folds]
    assert sorted(itertools.chain(*names)) == sorted(case_id(c["image"]) for c in cases)
    assert [len(f) for f in folds] == [5, 5, 5, 4, 4]
    assert folds[0] == fold_cases(list(reversed(cases)), 0, 5, seed=3)  # by name, not by listing order
    assert folds[0] != fold_cases(cases, 0, 5, seed=4)


def test_fold_knobs_split_the_dataset_and_bad_ones_are_refused(tmp_path):
    data = write_synthetic_dataset(str(tmp_path / "ds"), num_cases=7, shape=(8, 8, 8))
    for k in range(3):
        train = msd_datalist(data, "training", fold=k, num_folds=3, check_files=False)
        val = msd_datalist(data, "validation", fold=k, num_folds=3, check_files=False)
        assert len(train) + len(val) == 7 and not {c["image"] for c in train} & {c["image"] for c in val}
    for kwargs, message in [
        ({"fold": 2}, r"--fold 2 without --num_folds; pass --num_folds 5"),
        ({"fold": 3, "num_folds": 3}, r"--fold 3 with --num_folds 3; folds are numbered 0 to 2"),
        ({"num_folds": 1}, r"--num_folds 1; give a whole number >= 2"),
        ({"num_folds": 8}, r"--num_folds 8 but the dataset has 7 labelled case\(s\); use at most 7"),
        ({"fold": -1, "num_folds": 3}, r"--fold -1; give a whole number >= 0"),
    ]:
        with pytest.raises(DatasetError, match=message):
            msd_datalist(data, "validation", **kwargs)
    meta = json.load(open(os.path.join(data, "dataset.json")))
    meta["validation"] = meta["training"][:2]
    json.dump(meta, open(os.path.join(data, "dataset.json"), "w"))
    with pytest.raises(DatasetError, match=r"--num_folds 3 splits the cases into folds, but .*fixes a validation"):
        msd_datalist(data, "validation", num_folds=3)


def test_mirroring_averages_the_flipped_passes():
    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 3, (3, 2, 1), padding="same").eval()  # not symmetric along any axis
    x = torch.randn(2, 1, 6, 5, 4)
    with torch.no_grad():
        expected = torch.zeros(2, 3, 6, 5, 4)
        for flips in itertools.product([False, True], repeat=3):
            dims = [a + 2 for a in range(3) if flips[a]]
            expected += torch.flip(network(torch.flip(x, dims)), dims) / 8
        mirrored = MirroredInferer(SimpleInferer(), [0, 1, 2])(x, network)
        plain = MirroredInferer(SimpleInferer(), [])(x, network)
        only_first = MirroredInferer(SimpleInferer(), [0])(x, network)
    torch.testing.assert_close(mirrored, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain, network(x), rtol=0, atol=0)
    torch.testing.assert_close(only_first, (network(x) + torch.flip(network(torch.flip(x, [2])), [2])) / 2)
    assert not torch.allclose(mirrored, plain)
    for bad in ([3], [0, 0], "012", [True]):
        with pytest.raises(ArgumentError, match=r"mirror_axes=.*give distinct spatial axes from 0, 1, 2"):
            MirroredInferer(SimpleInferer(), bad)


def test_mirroring_along_an_axis_training_never_flipped_is_refused():
    """The default recipe on hippocampus mirrored along all three axes scored 0.0019 (anterior and posterior
    swapped on the mirrored passes) against 0.8900 unmirrored: only the axes training flipped are allowed."""
    MirroredInferer(SimpleInferer(), [0], trained_axes=[0])
    MirroredInferer(SimpleInferer(), [], trained_axes=[])
    with pytest.raises(
        ArgumentError,
        match=r"mirror_axes=\[0, 1, 2\] mirrors along axes \[1, 2\], which training never "
        r"flipped \(it flipped along \[0\]\).*Pass --mirror_axes \[0\] \(or \[\] for no mirroring\)",
    ):
        MirroredInferer(SimpleInferer(), [0, 1, 2], trained_axes=[0])
    with pytest.raises(ArgumentError, match=r"it flipped along none\).*Pass --mirror_axes \[\]"):
        MirroredInferer(SimpleInferer(), [2], trained_axes=[])


def _config(*names: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([os.path.join(CONFIGS, name) for name in names])
    parser.update(overrides)
    return parser


@pytest.mark.parametrize(
    "training, running, want",
    [
        (["train.json"], ["train.json", "evaluate.json"], [0]),
        (["train.json"], ["inference.json"], [0]),
        (
            ["train.json", "recipe_nnunet_like.json", "recipe_nnunet_like_training.json"],
            ["train.json", "recipe_nnunet_like.json", "evaluate.json"],
            [0, 1, 2],
        ),
        (
            ["train.json", "recipe_nnunet_like.json", "recipe_nnunet_like_training.json"],
            ["inference.json", "recipe_nnunet_like.json"],
            [0, 1, 2],
        ),
    ],
)
def test_the_mirror_axes_evaluation_allows_are_those_training_flipped(tmp_path, training, running, want):
    """What evaluation and inference declare as trained (``trained_mirror_axes``) against the RandFlipd axes found in
    the training pipeline the same recipe builds; and mirroring along the others is refused by the config."""
    from monai_gdl.bundle.mirroring import flipped_axes

    dataset = write_synthetic_dataset(str(tmp_path / "data"), num_cases=4, shape=(24, 24, 24), seed=0)
    knobs = dict(dataset_dir=dataset, output_dir=str(tmp_path / "out"))
    train = _config(*training, **knobs)
    assert flipped_axes(train.get_parsed_content("train#random_transforms")) == want
    assert list(_config(*running, **knobs).get_parsed_content("trained_mirror_axes")) == want
    if want != [0, 1, 2]:
        run = _config(*running, **knobs, mirror_axes=[0, 1, 2])
        key = "validate#inferer#inferer" if "evaluate.json" in running else "inferer#inferer"
        with pytest.raises(RuntimeError) as refused:  # MONAI wraps it; the bundle's CLI prints the cause alone
            run.get_parsed_content(key)
        assert isinstance(refused.value.__cause__, ArgumentError), refused.value
        assert "which training never flipped" in str(refused.value.__cause__)


def test_the_recipe_builds_nnunets_pieces_from_the_plan(tmp_path):
    from monai.networks.nets import DynUNet

    from monai_gdl import DeepSupervisionWrapper

    data = write_synthetic_dataset(str(tmp_path / "ds"), num_cases=4, shape=(40, 40, 24))
    parser = ConfigParser()
    parser.read_config([os.path.join(CONFIGS, f) for f in RECIPE])
    parser.update({"dataset_dir": data, "output_dir": str(tmp_path / "out")})
    plan = parser.get_parsed_content("plan")
    network = parser.get_parsed_content("network")
    assert isinstance(network, DynUNet) and network.deep_supervision
    assert [list(s) if isinstance(s, (list, tuple)) else s for s in network.strides] == plan["strides"]
    assert parser.get_parsed_content("patch_size") == plan["patch_size"]
    assert parser.get_parsed_content("batch_size") == plan["batch_size"]
    loss = parser.get_parsed_content("loss")
    assert isinstance(loss, DeepSupervisionWrapper) and loss.weight_mode == "nnunet"
    assert loss.loss.include_background is False
    optimizer = parser.get_parsed_content("optimizer")
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 0.002
    sgd = ConfigParser()  # nnU-Net's own optimizer, one more file
    sgd.read_config([os.path.join(CONFIGS, f) for f in [*RECIPE, "recipe_nnunet_like_sgd.json"]])
    sgd.update({"dataset_dir": data, "output_dir": str(tmp_path / "out")})
    optimizer = sgd.get_parsed_content("optimizer")
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]
    assert optimizer.defaults["momentum"] == 0.99 and optimizer.defaults["lr"] == 0.01
    assert isinstance(parser.get_parsed_content("lr_scheduler"), torch.optim.lr_scheduler.PolynomialLR)
    network.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = network(torch.randn(2, 1, *plan["patch_size"]))
    levels = out.shape[1]
    assert levels == plan["deep_supr_num"] + 1
    value = loss(out.float(), torch.randint(0, 3, (2, 1, *plan["patch_size"])))
    value.backward()
    assert torch.isfinite(value)


def _bundle(files, *args, cwd):
    config = "[" + ",".join(f"'{os.path.join(CONFIGS, f)}'" for f in files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--progress", "false", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def _train_on_split_zero(out: str, seed: int, epochs: int, *args: str, cwd: str) -> None:
    """Train a model with its own ``--seed`` on the cases of ``--split_seed 0``, as ensembles of seeds are made."""
    run = _bundle(
        ["train.json"],
        *args,
        "--output_dir",
        out,
        "--seed",
        str(seed),
        "--split_seed",
        "0",
        "--epochs",
        str(epochs),
        cwd=cwd,
    )
    assert run.returncode == 0, run.stderr[-3000:]


def _history(out):
    with open(os.path.join(out, "logs", "history.csv")) as f:
        return [(r["epoch"], r["val_mean_dice"], r["loss"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_folds_train_resume_evaluate_with_mirroring_and_ensemble_from_the_command_line(tmp_path):
    data = write_synthetic_dataset(str(tmp_path / "ds"), num_cases=6, shape=(24, 24, 16), seed=5)
    os.makedirs(os.path.join(data, "imagesTs"))
    test_image = os.path.join(data, "imagesTs", "new_000.nii.gz")
    nib.save(nib.load(os.path.join(data, "imagesTr", "synth_000.nii.gz")), test_image)
    tiny = ["--plan_options#base_filters", "4", "--dataset_dir", data, "--num_folds", "3"]
    folds = [str(tmp_path / f"fold{k}") for k in range(3)]
    runs = {}
    for name, out, fold, epochs in [("a", folds[0], 0, 1), ("a", folds[0], 0, 2), ("b", folds[1], 1, 1)]:
        runs[name] = _bundle(
            RECIPE, *tiny, "--output_dir", out, "--fold", str(fold), "--epochs", str(epochs), cwd=str(tmp_path)
        )
        assert runs[name].returncode == 0, runs[name].stderr[-3000:]
    split = json.load(open(os.path.join(folds[0], "split.json")))
    assert (split["fold"], split["num_folds"]) == (0, 3) and len(split["validation"]) == 2
    assert json.load(open(os.path.join(folds[1], "split.json")))["validation"] != split["validation"]
    # resumed from epoch 1 to 2 == 2 epochs straight: same losses, same last epoch's Dice, same weights (epoch 1
    # was validated only in the 1-epoch run, where it was the last)
    straight = str(tmp_path / "straight")
    run = _bundle(RECIPE, *tiny, "--output_dir", straight, "--fold", "0", "--epochs", "2", cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    (first, second), (resumed_first, resumed_second) = _history(straight), _history(folds[0])
    assert second == resumed_second and first[2] == resumed_first[2]
    assert first[1] == "" and resumed_first[1] != ""
    last = [os.path.join(d, "models", "last.pt") for d in (straight, folds[0])]
    weights = [torch.load(path, weights_only=True)["network"] for path in last]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # the cross-validation table of the two trained folds (its arithmetic: tests/test_crossval.py)
    report = subprocess.run(
        [sys.executable, "-m", "monai_gdl.report", *folds[:2]], capture_output=True, text=True, timeout=300
    )
    assert report.returncode == 0, report.stderr
    fold_rows = [line for line in report.stdout.splitlines() if line[:4] in ("| 0 ", "| 1 ")]
    assert [row.split("|")[3].strip() for row in fold_rows] == ["2", "1"]  # epochs: fold 0 resumed to 2
    assert "fold 2 of 3 not given: the mean covers the 4 cases" in report.stdout

    evaluate = ["train.json", "recipe_nnunet_like.json", "evaluate.json"]
    run = _bundle(evaluate, *tiny, "--output_dir", folds[0], cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "evaluated 2 cases" in run.stdout + run.stderr
    run = _bundle(evaluate, *tiny, "--output_dir", folds[0], "--fold", "1", cwd=str(tmp_path))
    assert run.returncode == 1
    assert "--fold asks to evaluate on another split (split seed 0, fold 1 of 3" in run.stderr.strip().splitlines()[-1]

    ensemble = ["inference.json", "recipe_nnunet_like.json", "ensemble.json"]
    fold_dirs = "[" + ",".join(f"'{d}'" for d in folds[:2]) + "]"
    out = str(tmp_path / "ensemble")
    run = _bundle(
        ensemble,
        "--dataset_dir",
        data,
        "--output_dir",
        out,
        "--fold_dirs",
        fold_dirs,
        "--mirror_axes",
        "[]",
        cwd=str(tmp_path),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    written = nib.load(os.path.join(out, "predictions", "new_000_seg.nii.gz"))
    # independent: each fold's network from its plan and weights, softmax averaged, on the image reoriented to RAS
    # (the plan's spacing is the data's, so no resampling)
    from monai.networks.nets import DynUNet

    plan = json.load(open(os.path.join(folds[0], "plan.json")))
    image = nib.as_closest_canonical(nib.load(test_image))
    x = torch.as_tensor(np.ascontiguousarray(image.dataobj, dtype=np.float32))
    nonzero = x != 0
    x = torch.where(nonzero, (x - x[nonzero].mean()) / x[nonzero].std(unbiased=False), x)[None, None]
    probabilities = torch.zeros(1, 3, *x.shape[2:])
    for fold in folds[:2]:
        net = DynUNet(
            3,
            1,
            3,
            plan["kernel_size"],
            plan["strides"],
            plan["strides"][1:],
            filters=plan["filters"],
            norm_name=("instance", {"affine": True}),
            act_name=("leakyrelu", {"negative_slope": 0.01}),
            deep_supervision=True,
            deep_supr_num=plan["deep_supr_num"],
            res_block=False,
        )
        net.load_state_dict(torch.load(os.path.join(fold, "models", "model.pt"), weights_only=True))
        with torch.no_grad():
            logits = SlidingWindowInferer(plan["patch_size"], sw_batch_size=4, overlap=0.5)(x, net.eval())
        probabilities += torch.softmax(logits, 1) / 2
    expected = probabilities.argmax(1)[0].numpy()
    got = np.asarray(nib.as_closest_canonical(written).dataobj)
    assert got.shape == expected.shape and (got == expected).mean() > 0.999, (got == expected).mean()


@pytest.mark.slow
def test_an_ensemble_of_seeds_is_scored_on_the_cases_all_of_them_held_out(tmp_path):
    """Models trained on one split with other seeds (``--seed k --split_seed 0``) scored together by
    ``evaluate_ensemble.json``: an ensemble of one scores as ``evaluate.json`` does; an ensemble of two scores
    each case with the Dice of the segmentation that ``ensemble.json``'s inference writes (its averaging is checked
    against a hand-made average above), computed here with numpy on the label files; folders holding out other
    cases (cross-validation folds, another split seed) are refused, naming both."""
    data = write_synthetic_dataset(str(tmp_path / "ds"), num_cases=6, shape=(24, 24, 16), seed=6)
    common = ["--dataset_dir", data, "--val_fraction", "0.34", *TINY]
    models = [str(tmp_path / f"seed{s}") for s in (1, 2)]
    for seed, out in zip((1, 2), models):
        _train_on_split_zero(out, seed, 8, *common, "--learning_rate", "0.01", cwd=str(tmp_path))
    splits = [json.load(open(os.path.join(out, "split.json"))) for out in models]
    assert splits[0]["validation"] == splits[1]["validation"] and splits[0]["seed"] == 0
    weights = [torch.load(os.path.join(out, "models", "model.pt"), weights_only=True) for out in models]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # two different models

    def scores(out):
        with open(os.path.join(out, "eval", "val_mean_dice_raw.csv")) as f:
            rows = list(csv.DictReader(f))
        return {(case_id(r["filename"]), c): float(r[f"class{c - 1}"]) for r in rows for c in (1, 2)}

    ensemble = ["train.json", "evaluate.json", "evaluate_ensemble.json"]
    scoring = [*common, "--amp", "False", "--validate#inferer#inferer#inferer#overlap", "0.5"]  # as inference.json
    one = _bundle(
        ensemble, *scoring, "--output_dir", str(tmp_path / "one"), "--fold_dirs", f"['{models[0]}']", cwd=str(tmp_path)
    )
    assert one.returncode == 0, one.stderr[-3000:]
    alone = _bundle(["train.json", "evaluate.json"], *scoring, "--output_dir", models[0], cwd=str(tmp_path))
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert scores(str(tmp_path / "one")) == pytest.approx(scores(models[0]))
    assert sorted({case for case, _ in scores(models[0])}) == splits[0]["validation"]

    two = str(tmp_path / "two")
    fold_dirs = "[" + ",".join(f"'{d}'" for d in models) + "]"
    run = _bundle(ensemble, *scoring, "--output_dir", two, "--fold_dirs", fold_dirs, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    images = tmp_path / "held_out"
    images.mkdir()
    for case in splits[0]["validation"]:
        os.symlink(os.path.join(data, "imagesTr", f"{case}.nii.gz"), images / f"{case}.nii.gz")
    infer = _bundle(
        ["inference.json", "ensemble.json"],
        *TINY,
        "--input_dir",
        str(images),
        "--output_dir",
        str(tmp_path / "inf"),
        "--fold_dirs",
        fold_dirs,
        cwd=str(tmp_path),
    )
    assert infer.returncode == 0, infer.stderr[-3000:]
    expected = {}
    for case in splits[0]["validation"]:
        seg = np.asarray(nib.load(str(tmp_path / "inf" / "predictions" / f"{case}_seg.nii.gz")).dataobj)
        label = np.asarray(nib.load(os.path.join(data, "labelsTr", f"{case}.nii.gz")).dataobj)
        for c in (1, 2):
            expected[case, c] = 2 * np.sum((seg == c) & (label == c)) / (np.sum(seg == c) + np.sum(label == c))
    assert scores(two) == pytest.approx(expected, abs=1e-5)
    assert min(v for (_, c), v in expected.items() if c == 1) > 0.5, expected  # a segmentation, not noise
    # an inference ensemble of one model writes what inference.json writes with that model (MONAI's MeanEnsembled
    # reads a single key as models already stacked: it averaged over the classes and wrote a 2D image)
    for files, args in (
        (["inference.json", "ensemble.json"], ["--fold_dirs", f"['{models[0]}']"]),
        (["inference.json"], ["--ckpt_dir", os.path.join(models[0], "models")]),
    ):
        out = str(tmp_path / f"inf{len(files)}")
        run = _bundle(files, *TINY, "--input_dir", str(images), "--output_dir", out, *args, cwd=str(tmp_path))
        assert run.returncode == 0, run.stderr[-3000:]
    for case in splits[0]["validation"]:
        one, alone = (nib.load(str(tmp_path / f"inf{n}" / "predictions" / f"{case}_seg.nii.gz")) for n in (2, 1))
        assert one.shape == alone.shape == nib.load(os.path.join(data, "labelsTr", f"{case}.nii.gz")).shape
        assert np.array_equal(np.asarray(one.dataobj), np.asarray(alone.dataobj))

    other_split = str(tmp_path / "other_split")
    run = _bundle(
        ["train.json"], *common, "--output_dir", other_split, "--split_seed", "3", "--epochs", "1", cwd=str(tmp_path)
    )
    assert run.returncode == 0, run.stderr[-3000:]
    refused = _bundle(
        ensemble,
        *scoring,
        "--output_dir",
        str(tmp_path / "mixed"),
        "--fold_dirs",
        f"['{models[0]}','{other_split}']",
        cwd=str(tmp_path),
    )
    assert refused.returncode == 1
    last = refused.stderr.strip().splitlines()[-1]
    assert (
        f"{other_split} held out other cases than {models[0]}" in last and "cases some of its models trained on" in last
    )


@pytest.mark.slow
def test_an_ensemble_of_two_networks_scores_both_groups_on_the_cases_all_of_them_held_out(tmp_path):
    """``ensemble_second_network.json`` adds models of another network (``second_network_def``, default: the
    UNet twice as wide) to the ensemble: with the same network in both groups it scores exactly as
    ``evaluate_ensemble.json`` with all the folders, and inference after ``ensemble.json`` writes what it writes
    with all the folders; with a wider second network both run; a folder of the other width, an empty second list
    or a second folder holding out other cases is refused, naming it."""
    data = write_synthetic_dataset(str(tmp_path / "ds"), num_cases=6, shape=(24, 24, 16), seed=6)
    common = ["--dataset_dir", data, "--val_fraction", "0.34", *TINY]
    wide = ["--network_def#channels", "[8,16,32,64]"]
    trained = {"a": (1, []), "a2": (2, []), "wide": (3, wide)}
    for name, (seed, width) in trained.items():
        _train_on_split_zero(str(tmp_path / name), seed, 2, *common, *width, cwd=str(tmp_path))

    def evaluate(out, *args, files=("evaluate_ensemble.json", "ensemble_second_network.json")):
        return _bundle(
            ["train.json", "evaluate.json", *files],
            *common,
            "--amp",
            "False",
            "--output_dir",
            str(tmp_path / out),
            *args,
            cwd=str(tmp_path),
        )

    def scores(out):
        with open(tmp_path / out / "eval" / "val_mean_dice_raw.csv") as f:
            return {case_id(r["filename"]): float(r["mean"]) for r in csv.DictReader(f)}

    a, a2, other = (str(tmp_path / n) for n in ("a", "a2", "wide"))
    tiny_second = ["--second_network_def#channels", "[4,8,16,32]"]
    wide_second = ["--second_network_def#channels", "[8,16,32,64]"]
    same = ["--fold_dirs", f"['{a}']", "--second_fold_dirs", f"['{a2}']", *tiny_second]
    runs = {
        "plain": evaluate("plain", "--fold_dirs", f"['{a}','{a2}']", files=("evaluate_ensemble.json",)),
        "same": evaluate("same", *same),
        "mixed": evaluate(
            "mixed", "--fold_dirs", f"['{a}','{a2}']", "--second_fold_dirs", f"['{other}']", *wide_second
        ),
    }
    for name, run in runs.items():
        assert run.returncode == 0, (name, run.stderr[-3000:])
    assert scores("same") == pytest.approx(scores("plain"), abs=1e-6)
    with open(os.path.join(a, "split.json")) as f:
        held_out = json.load(f)["validation"]
    assert sorted(scores("mixed")) == sorted(scores("plain")) == held_out
    assert scores("mixed") != pytest.approx(scores("plain"), abs=1e-6)  # the wide model took part

    images = tmp_path / "held_out"
    images.mkdir()
    for case in scores("plain"):
        os.symlink(os.path.join(data, "imagesTr", f"{case}.nii.gz"), images / f"{case}.nii.gz")
    inference = {
        "plain": (["ensemble.json"], ["--fold_dirs", f"['{a}','{a2}']"]),
        "same": (["ensemble.json", "ensemble_second_network.json"], same),
        "mixed": (
            ["ensemble.json", "ensemble_second_network.json"],
            ["--fold_dirs", f"['{a}']", "--second_fold_dirs", f"['{other}']", *wide_second],
        ),
    }
    for name, (files, args) in inference.items():
        out = str(tmp_path / f"inf_{name}")
        run = _bundle(
            ["inference.json", *files], *TINY, "--input_dir", str(images), "--output_dir", out, *args, cwd=str(tmp_path)
        )
        assert run.returncode == 0, (name, run.stderr[-3000:])
    for case in scores("plain"):
        same, plain, mixed = (
            np.asarray(nib.load(str(tmp_path / f"inf_{n}" / "predictions" / f"{case}_seg.nii.gz")).dataobj)
            for n in ("same", "plain", "mixed")
        )
        assert np.array_equal(same, plain) and mixed.shape == plain.shape

    other_split = str(tmp_path / "other_split")
    run = _bundle(
        ["train.json"], *common, "--output_dir", other_split, "--split_seed", "3", "--epochs", "1", cwd=str(tmp_path)
    )
    assert run.returncode == 0, run.stderr[-3000:]
    refusals = {
        "models/model.pt was saved from a different network": ("--second_fold_dirs", f"['{a2}']"),
        "second_fold_dirs=[]; give the trained folds' output folders": ("--second_fold_dirs", "[]", *tiny_second),
        f"{other_split} held out other cases than {a}": ("--second_fold_dirs", f"['{other_split}']", *tiny_second),
    }
    for i, (message, args) in enumerate(refusals.items()):
        refused = evaluate(f"refused{i}", "--fold_dirs", f"['{a}']", *args)
        assert refused.returncode == 1, refused.stderr[-3000:]
        assert message in refused.stderr.strip().splitlines()[-1], refused.stderr[-3000:]


def test_ensemble_checkpoints_best_or_last_and_the_splits_they_must_share(tmp_path):
    """``fold_checkpoint`` picks each folder's ``model.pt`` (best validated epoch) or ``last.pt`` (last epoch, as
    nnU-Net ensembles); anything else, a folder without ``split.json`` or with another dataset is refused, naming
    it."""
    from monai_gdl.bundle.checkpoints import CheckpointError
    from monai_gdl.bundle.ensemble import fold_networks, fold_plan, held_out_by_all
    from monai_gdl.bundle.planning import PlanError
    from monai_gdl.bundle.split import SplitError

    network = torch.nn.Linear(2, 1)
    dirs = [str(tmp_path / f"seed{s}") for s in (1, 2)]
    for i, d in enumerate(dirs):
        os.makedirs(os.path.join(d, "models"))
        torch.save(
            {"weight": torch.full((1, 2), i + 1.0), "bias": torch.zeros(1)}, os.path.join(d, "models", "model.pt")
        )
        last = {"weight": torch.full((1, 2), -(i + 1.0)), "bias": torch.zeros(1)}
        torch.save({"network": last, "epoch": 3}, os.path.join(d, "models", "last.pt"))
    best = [n.weight[0, 0].item() for n in fold_networks(network, dirs)]
    last = [n.weight[0, 0].item() for n in fold_networks(network, dirs, "last.pt")]
    assert best == [1.0, 2.0] and last == [-1.0, -2.0]
    with pytest.raises(ArgumentError, match=r"fold_checkpoint='best.pt'; use 'model.pt'"):
        fold_networks(network, dirs, "best.pt")
    os.remove(os.path.join(dirs[1], "models", "last.pt"))
    with pytest.raises(CheckpointError, match="no trained model at .*seed2/models/last.pt"):
        fold_networks(network, dirs, "last.pt")
    os.remove(os.path.join(dirs[0], "models", "model.pt"))  # stopped before its first validation: last.pt only
    torch.save({"network": {}}, os.path.join(dirs[1], "models", "last.pt"))
    # refused for the missing record, not for the model.pt that --fold_checkpoint last.pt does not read
    with pytest.raises(SplitError, match=f"no split.json in {dirs[0]}, {dirs[1]}: without the cases"):
        held_out_by_all(dirs, "/data", 0.2, 0, checkpoint="last.pt")
    with pytest.raises(PlanError, match=f"no plan.json in {dirs[0]}, {dirs[1]}: the nnU-Net-like recipe"):
        fold_plan(dirs, "last.pt")
    for d, dataset in zip(dirs, ("/data/a", "/data/b")):
        split = {"dataset_dir": dataset, "seed": 0, "val_fraction": 0.2, "fold": 0, "num_folds": 0}
        with open(os.path.join(d, "split.json"), "w") as f:
            json.dump({**split, "training": ["c1"], "validation": ["c2"]}, f)
    with pytest.raises(SplitError, match=f"{dirs[1]} was trained on /data/b, {dirs[0]} on /data/a"):
        held_out_by_all(dirs, "/data/a", 0.2, 0, checkpoint="last.pt")
