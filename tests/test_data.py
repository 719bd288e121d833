"""Dataset discovery, splitting and error messages; label checks; the synthetic generator; real data if present."""

from __future__ import annotations

import glob
import gzip
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_gdl.bundle.datasets import DatasetError, class_names, image_files, msd_datalist, write_synthetic_dataset
from monai_gdl.bundle.transforms import CheckLabelsd

HIPPOCAMPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "Task04_Hippocampus")


@pytest.fixture
def synth(tmp_path):
    return write_synthetic_dataset(str(tmp_path / "ds"), num_cases=6, shape=(20, 20, 12), seed=1)


def test_synthetic_dataset_is_msd_layout_imbalanced_and_seeded(synth, tmp_path):
    meta = json.load(open(os.path.join(synth, "dataset.json")))
    assert meta["labels"] == {"0": "background", "1": "large", "2": "small"} and len(meta["training"]) == 6
    label = nib.load(os.path.join(synth, "labelsTr", "synth_000.nii.gz"))
    counts = np.bincount(np.asarray(label.dataobj).ravel(), minlength=3)
    assert counts[1] > 4 * counts[2] > 0  # a large and a small structure
    assert np.allclose(np.abs(np.diag(label.affine)[:3]), [1.0, 1.0, 1.5]) and label.affine[0, 0] < 0
    again = write_synthetic_dataset(str(tmp_path / "again"), num_cases=6, shape=(20, 20, 12), seed=1)
    a = np.asarray(nib.load(os.path.join(again, "imagesTr", "synth_003.nii.gz")).dataobj)
    b = np.asarray(nib.load(os.path.join(synth, "imagesTr", "synth_003.nii.gz")).dataobj)
    assert np.array_equal(a, b)


def test_split_is_disjoint_complete_and_seeded(synth):
    train, val = msd_datalist(synth, "training", 0.34, seed=3), msd_datalist(synth, "validation", 0.34, seed=3)
    assert len(val) == 2 and len(train) == 4
    assert not {c["image"] for c in train} & {c["image"] for c in val}
    assert val == msd_datalist(synth, "validation", 0.34, seed=3)
    assert all(os.path.basename(c["image"]) == os.path.basename(c["label"]) for c in train + val)


def test_dataset_json_validation_list_fixes_the_split(synth):
    path = os.path.join(synth, "dataset.json")
    meta = json.load(open(path))
    meta["validation"] = meta["training"][:1]
    json.dump(meta, open(path, "w"))
    val = msd_datalist(synth, "validation")
    assert [os.path.basename(c["image"]) for c in val] == ["synth_000.nii.gz"]
    assert len(msd_datalist(synth, "training")) == 5


def test_folder_pairing_without_dataset_json(synth):
    os.remove(os.path.join(synth, "dataset.json"))
    assert len(msd_datalist(synth, "training")) + len(msd_datalist(synth, "validation")) == 6
    assert class_names(synth, 3) == ["class_0", "class_1", "class_2"]


def test_missing_and_empty_dataset_dir(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset_dir='.*nope' does not exist.*imagesTr"):
        msd_datalist(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"has no imagesTr/ folder"):
        msd_datalist(str(tmp_path / "empty"))
    (tmp_path / "empty" / "imagesTr").mkdir()
    with pytest.raises(DatasetError, match=r"holds no .nii/.nii.gz images"):
        msd_datalist(str(tmp_path / "empty"))


def test_images_without_labels(synth):
    os.remove(os.path.join(synth, "dataset.json"))
    os.remove(os.path.join(synth, "labelsTr", "synth_002.nii.gz"))
    with pytest.raises(DatasetError, match=r"1 image\(s\) .* have no label .*synth_002.nii.gz"):
        msd_datalist(synth)


def test_corrupt_nifti_is_named(synth):
    bad = os.path.join(synth, "imagesTr", "synth_004.nii.gz")
    with gzip.open(bad, "wb") as f:
        f.write(b"this is not a NIfTI header")
    with pytest.raises(DatasetError, match=r"synth_004.nii.gz is not a readable NIfTI file"):
        msd_datalist(synth, "training", check_files=True) + msd_datalist(synth, "validation", check_files=True)


def test_labels_above_num_classes_name_the_file(synth):
    from monai.data import MetaTensor

    label = MetaTensor(torch.tensor([[[0.0, 1.0], [2.0, 5.0]]]), meta={"filename_or_obj": "/x/case_7.nii.gz"})
    with pytest.raises(ValueError, match=r"case_7.nii.gz holds labels 0..5 but num_classes=3.*--num_classes 6"):
        CheckLabelsd("label", num_classes=3)({"label": label})
    frac = MetaTensor(torch.tensor([[[0.0, 0.5]]]), meta={"filename_or_obj": "/x/case_8.nii.gz"})
    with pytest.raises(ValueError, match=r"case_8.nii.gz holds non-integer values"):
        CheckLabelsd("label", num_classes=3)({"label": frac})
    ok = {"label": torch.tensor([[[0.0, 2.0]]])}  # float-stored integer labels pass
    assert CheckLabelsd("label", num_classes=3)(ok)["label"] is ok["label"]


def test_image_files_for_inference(synth, tmp_path):
    assert len(image_files(os.path.join(synth, "imagesTr"))) == 6
    with pytest.raises(DatasetError, match="holds no .nii/.nii.gz images"):
        image_files(str(tmp_path))
    one = sorted(glob.glob(os.path.join(synth, "imagesTr", "*.nii*")))[0]
    assert image_files(one) == [{"image": one}]  # one NIfTI file is an input too
    png = tmp_path / "slice.png"
    png.write_bytes(b"\x89PNG")
    with pytest.raises(DatasetError, match=r"slice.png' is not a NIfTI image .*convert it to NIfTI"):
        image_files(str(png))
    with pytest.raises(DatasetError, match=r"no input given: pass --input_dir"):
        image_files("")


@pytest.mark.skipif(not os.path.isdir(HIPPOCAMPUS), reason="shared real data not present")
def test_real_hippocampus_dataset_lists_and_loads_with_its_quirks():
    from monai_gdl.bundle.files import load_config

    train = msd_datalist(HIPPOCAMPUS, "training", 0.2, seed=0, check_files=False)
    val = msd_datalist(HIPPOCAMPUS, "validation", 0.2, seed=0, check_files=False)
    assert len(train) == 160 and len(val) == 40
    assert class_names(HIPPOCAMPUS, 3) == ["background", "Anterior", "Posterior"]
    load = load_config("train", num_classes=3).get_parsed_content("validate#preprocessing")  # the bundle's own
    for case in ("hippocampus_003", "hippocampus_001"):  # float32-stored label, uint8 image
        item = {
            k: os.path.join(HIPPOCAMPUS, d, f"{case}.nii.gz") for k, d in (("image", "imagesTr"), ("label", "labelsTr"))
        }
        out = load(item)
        assert out["image"].dtype == torch.float32 and out["image"].shape[0] == 1
        assert set(torch.unique(out["label"]).tolist()) == {0.0, 1.0, 2.0}
        assert abs(float(out["image"][out["image"] != 0].mean())) < 0.2  # z-scored over nonzero voxels


def test_data_command_line(tmp_path, capsys):
    from monai_gdl.data import main

    out = str(tmp_path / "cli")
    assert main(["synth", "--out", out, "--cases", "4", "--shape", "16", "16", "8"]) == 0
    assert main(["check", out, "--val_fraction", "0.25"]) == 0
    assert "training: 3 cases" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_resume_flag_from_the_command_line_string():
    """``--resume false`` reaches the config as the string "false": train.json parses it with the one boolean
    parser (``checks.flag``), never as a truthy string, and a misspelt value is an error naming the knob."""
    from monai.bundle import ConfigParser

    import monai_gdl  # noqa: F401  (the config's expressions name it)
    from monai_gdl.bundle.checks import ArgumentError
    from monai_gdl.bundle.files import load_config

    handlers = load_config("train").get("train#handlers")
    (expression,) = [h["resume"] for h in handlers if "TrainingCheckpoints" in h["_target_"]]
    for text, expected in (("false", False), ("True", True), (True, True)):
        parser = ConfigParser({"resume": text, "value": expression, "imports": ["$import monai_gdl"]})
        assert parser.get_parsed_content("value") is expected
    with pytest.raises(Exception) as info:
        ConfigParser({"resume": "ture", "value": expression, "imports": ["$import monai_gdl"]}).get_parsed_content(
            "value"
        )
    err = info.value
    while err is not None and not isinstance(err, ArgumentError):
        err = err.__cause__ or err.__context__
    assert err is not None and "resume='ture'" in str(err)


def test_truncated_nifti_is_named_when_loaded(synth):
    from monai_gdl.bundle.files import load_config

    path = os.path.join(synth, "imagesTr", "synth_001.nii.gz")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # the header still reads: only loading the voxels fails
    item = {"image": path, "label": os.path.join(synth, "labelsTr", "synth_001.nii.gz")}
    with pytest.raises(Exception) as info:
        load_config("train", num_classes=3).get_parsed_content("validate#preprocessing")(item)
    chain, err = [], info.value
    while err is not None:
        chain.append(str(err))
        err = err.__cause__
    assert any("cannot read" in m and "synth_001.nii.gz" in m and "labelsTr" not in m for m in chain), chain
