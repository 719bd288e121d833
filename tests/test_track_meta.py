"""Training patches drawn without MONAI's metadata tracking (``monai_gdl.bundle.track_meta``): the same values as
with tracking, plain tensors, the cached part and everything after the draw with metadata."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, MetaTensor, get_track_meta, set_track_meta
from monai.data.utils import set_rnd
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandomizableTrait,
    RandScaleIntensityd,
    SpatialPadd,
    Transform,
)

from monai_gdl.bundle import console
from monai_gdl.bundle.track_meta import MetaTrackingOff, untracked

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _AffineSeen:
    """A deterministic transform recording whether the image it gets still carries its affine."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def __call__(self, data):
        self.seen.append(isinstance(data["image"], MetaTensor) and data["image"].affine is not None)
        return data


def _cases(n=3):
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(n):
        label = np.zeros((20, 24, 18), dtype=np.float32)
        label[5:12, 6:15, 4:10] = 1
        image = MetaTensor(torch.from_numpy(rng.normal(size=(20, 24, 18)).astype(np.float32)))
        image.affine = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))  # LPS-ish: Orientationd has work to do
        cases.append({"image": image, "label": MetaTensor(torch.from_numpy(label), affine=image.affine.clone())})
    return cases


def _random_part():
    keys = ["image", "label"]
    return [
        SpatialPadd(keys, (16, 16, 16)),
        RandCropByPosNegLabeld(keys, "label", (16, 16, 16), pos=2, neg=1, num_samples=2),
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
    ]


def _draws(track_meta: bool, cache_rate: float, seen: _AffineSeen):
    keys = ["image", "label"]
    cached = [EnsureChannelFirstd(keys, channel_dim="no_channel"), Orientationd(keys, "RAS"), seen]
    dataset = CacheDataset(
        _cases(), Compose(cached + untracked(_random_part(), track_meta)), cache_rate=cache_rate, progress=False
    )
    set_rnd(dataset, 7)
    return [dataset[i] for i in range(len(dataset))]


@pytest.mark.parametrize("cache_rate", [1.0, 0.0])
def test_untracked_draws_equal_tracked_ones_as_plain_tensors(cache_rate):
    tracked_seen, untracked_seen = _AffineSeen(), _AffineSeen()
    tracked = _draws(True, cache_rate, tracked_seen)
    assert get_track_meta()
    drawn = _draws(False, cache_rate, untracked_seen)
    assert get_track_meta()  # restored after every draw
    for a_samples, b_samples in zip(tracked, drawn):
        for a, b in zip(a_samples, b_samples):
            assert isinstance(a["image"], MetaTensor) and type(b["image"]) is torch.Tensor
            assert torch.equal(a["image"].as_tensor(), b["image"]) and torch.equal(a["label"].as_tensor(), b["label"])
    # the cached part, loaded at caching (cache_rate 1) or during the draw (cache_rate 0), keeps its metadata
    assert untracked_seen.seen and all(untracked_seen.seen)


def test_tracking_kept_on_request_and_the_markers_split_the_cache():
    transforms = _random_part()
    assert untracked(transforms, "True") == transforms  # --track_meta_in_training True
    bracketed = untracked(transforms)
    assert isinstance(bracketed[0], MetaTrackingOff) and bracketed[1:-1] == transforms
    pipeline = Compose([EnsureChannelFirstd(["image", "label"], channel_dim="no_channel"), *bracketed])
    first = pipeline.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))
    assert first == 1  # CacheDataset caches up to the off marker and no further


def test_a_bundle_run_starts_with_tracking_on():
    set_track_meta(False)  # as a draw that raised between the markers would leave it
    try:
        console.start()
        assert get_track_meta()
    finally:
        set_track_meta(True)


def test_the_training_config_draws_untracked_patches_equal_to_tracked_ones(tmp_path):
    from monai.bundle import ConfigParser

    from monai_gdl.bundle.datasets import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(str(data), num_cases=4, shape=(24, 24, 16))

    def first_batch(track: bool):
        parser = ConfigParser()
        parser.read_config(os.path.join(REPO, "configs", "train.json"))
        overrides = {"dataset_dir": str(data), "output_dir": str(tmp_path / "out"), "bundle_root": REPO}
        parser.update({**overrides, "track_meta_in_training": track, "patch_size": [16, 16, 16]})
        loader = parser.get_parsed_content("train#dataloader")
        set_rnd(loader.dataset, 3)
        torch.manual_seed(3)
        return next(iter(loader))

    tracked, drawn = first_batch(True), first_batch(False)
    assert isinstance(tracked["image"], MetaTensor) and type(drawn["image"]) is torch.Tensor
    assert torch.equal(tracked["image"].as_tensor(), drawn["image"])
    assert torch.equal(tracked["label"].as_tensor(), drawn["label"])
