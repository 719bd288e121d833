"""The tubed skeleton against the authors' procedure on synthetic tubes, the signed distance maps against MONAI's,
the dictionary transforms in a MONAI pipeline, and the errors."""

from __future__ import annotations

import monai.losses
import numpy as np
import pytest
import torch
from conftest import needs_monai_boundary_loss
from monai.data import CacheDataset, MetaTensor
from skimage.morphology import dilation, skeletonize

from monai_gdl import SignedDistanceMapd, TubedSkeletonMapd, signed_distance_map, tubed_skeleton
from monai_gdl.structure_maps import StructureMapError


def _authors_tubed_skeleton(label: np.ndarray) -> np.ndarray:
    """Kirchhoff et al. 2024, section 3.1 and the authors' data-loading transform, step by step: binarise the
    label, skeletonize, dilate twice (scikit-image's default footprint), give each voxel its label."""
    skeleton = skeletonize(label > 0).astype(np.int16)
    return dilation(dilation(skeleton)) * label.astype(np.int16)


def _tube(shape, points, radius, value, out=None):
    """A tube of ``radius`` voxels around the polyline ``points`` (a branching tree is several polylines)."""
    out = np.zeros(shape, dtype=np.int64) if out is None else out
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(float)
    for a, b in zip(points[:-1], points[1:]):
        a, b = np.asarray(a, float), np.asarray(b, float)
        t = np.clip(((grid - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
        near = np.linalg.norm(grid - (a + t[..., None] * (b - a)), axis=-1) <= radius
        out[near] = value
    return out


@pytest.mark.parametrize("radius", [1.0, 1.5, 2.0])
def test_one_class_tubes_equal_the_authors_skeleton(radius):
    shape = (24, 24, 24)
    label = _tube(shape, [(3, 3, 3), (12, 12, 12), (20, 5, 18)], radius, 1)  # a bent tube
    label = _tube(shape, [(12, 12, 12), (20, 20, 8)], radius, 1, out=label)  # and a branch
    ours = tubed_skeleton(label, num_classes=2)
    np.testing.assert_array_equal(ours, _authors_tubed_skeleton(label))
    assert ours.any() and not ours[label == 0].any()


def test_separate_classes_equal_the_authors_skeleton_and_touching_ones_stay_in_their_class():
    shape = (20, 20, 20)
    label = _tube(shape, [(3, 3, 3), (3, 16, 16)], 1.5, 1)
    label = _tube(shape, [(16, 3, 3), (16, 16, 16)], 2.0, 2, out=label)
    np.testing.assert_array_equal(tubed_skeleton(label, num_classes=3), _authors_tubed_skeleton(label))
    touching = label.copy()
    touching[:, :, 10:] = np.where(touching[:, :, 10:] == 1, 2, touching[:, :, 10:])  # one tube, two classes
    ours = tubed_skeleton(touching, num_classes=3)
    for c in (1, 2):  # each class keeps a skeleton of its own inside its own voxels
        assert (ours == c).any() and np.all(touching[ours == c] == c)


@needs_monai_boundary_loss
def test_signed_distance_maps_equal_monai_boundary_loss_maps():
    g = np.random.default_rng(0)
    label = np.zeros((10, 9, 8), dtype=np.int64)
    label[2:6, 1:7, 3:8] = 1
    label[6:9, 4:8, 0:4] = 2
    label[g.random(label.shape) < 0.02] = 3
    onehot = torch.nn.functional.one_hot(torch.from_numpy(label), 5).permute(3, 0, 1, 2)[None].float()
    want = monai.losses.BoundaryLoss().compute_distance_map(onehot)[0].numpy()  # class 4 absent: zero map, as ours
    np.testing.assert_allclose(signed_distance_map(label, num_classes=5), want, atol=1e-6)


def test_distance_in_mm_scales_with_the_spacing():
    label = np.zeros((3, 12), dtype=np.int64)
    label[1, 4:8] = 1
    voxel = signed_distance_map(label, 2)
    np.testing.assert_allclose(signed_distance_map(label, 2, spacing=(2.5, 2.5)), voxel * 2.5)
    # anisotropic: outside distances in mm; inside 0 next to the boundary along the finest axis
    mm = signed_distance_map(label, 2, spacing=(4.0, 1.0))
    np.testing.assert_allclose(mm[1, 1], [4, 3, 2, 1, 0, -1, -1, 0, 1, 2, 3, 4])
    np.testing.assert_allclose(mm[1, 0, 4:8], [4, 4, 4, 4])


def test_dictionary_transforms_in_a_cached_monai_pipeline():
    label = MetaTensor(
        torch.from_numpy(_tube((16, 16, 16), [(2, 8, 8), (13, 8, 8)], 2.0, 1)).float()[None],
        affine=torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0])),
    )
    data = [{"label": label}]
    transforms = [TubedSkeletonMapd("label", num_classes=2), SignedDistanceMapd("label", num_classes=2, units="mm")]
    item = CacheDataset(data, transforms, progress=False)[0]
    assert item["label_skeleton"].shape == (1, 16, 16, 16) and item["label_skeleton"].dtype == torch.uint8
    assert item["label_distance"].shape == (2, 16, 16, 16) and item["label_distance"].dtype == torch.float32
    np.testing.assert_array_equal(item["label_skeleton"][0].numpy(), tubed_skeleton(label, 2))
    np.testing.assert_allclose(item["label_distance"].numpy(), signed_distance_map(label, 2, spacing=(2, 1, 1)))
    packed = TubedSkeletonMapd("label", num_classes=2, append=True)({"label": label})["label"]
    assert packed.shape == (2, 16, 16, 16) and torch.equal(packed[0], label[0])


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: tubed_skeleton(np.full((4, 4, 4), 0.5), 2), r"non-integer or non-finite values"),
        (lambda: tubed_skeleton(np.full((4, 4, 4), 3), 2), r"values in \[3, 3\] but num_classes=2"),
        (lambda: tubed_skeleton(np.zeros((2, 4, 4, 4)), 2), r"label has shape \(2, 4, 4, 4\)"),
        (lambda: tubed_skeleton(np.zeros((4, 4, 4)), 2, dilations=-1), r"dilations=-1"),
        (lambda: signed_distance_map(np.zeros((4, 4)), 2, spacing=(1.0,)), r"spacing=\(1.0,\)"),
        (lambda: SignedDistanceMapd("label", 2, units="cm"), r"units='cm'"),
        (lambda: SignedDistanceMapd("label", 2, units="mm")({"label": torch.zeros(1, 4, 4)}), r"needs the label's"),
        (lambda: TubedSkeletonMapd("label", 1), r"num_classes=1"),
    ],
)
def test_bad_labels_and_options_are_refused_by_name(call, match):
    with pytest.raises(StructureMapError, match=match):
        call()
