"""Procedural scenes: deterministic, in range, and every modality agrees with the image."""

import numpy as np
import pytest

from vqtoolkit_plugins.synthetic.render import (
    BOX,
    CLASS_NAMES,
    COCO_FLIP_INDEX,
    COCO_KEYPOINTS,
    COCO_SKELETON,
    DISC,
    GROUND,
    LABEL_NAMES,
    N_CLASSES,
    N_LABELS,
    PERSON,
    SKY,
    flip_pose,
    render_scene,
)

SEEDS = range(40)


@pytest.fixture(scope="module")
def scenes():
    return [render_scene(s, 48) for s in SEEDS]


def test_constants():
    assert len(LABEL_NAMES) == N_LABELS and len(CLASS_NAMES) == N_CLASSES
    assert len(COCO_KEYPOINTS) == 17 and len(COCO_SKELETON) == 19
    assert all(0 <= a < 17 and 0 <= b < 17 for a, b in COCO_SKELETON)
    assert COCO_FLIP_INDEX[COCO_KEYPOINTS.index("left_wrist")] == COCO_KEYPOINTS.index("right_wrist")
    assert COCO_FLIP_INDEX[0] == 0
    assert [COCO_FLIP_INDEX[i] for i in COCO_FLIP_INDEX] == list(range(17))  # an involution


def test_deterministic_and_seeds_differ():
    a, b = render_scene(7, (32, 40)), render_scene(7, (32, 40))
    for field in ("image", "depth", "segmentation", "instances", "pose"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.objects == b.objects and a.label == b.label
    assert not np.array_equal(a.image, render_scene(8, (32, 40)).image)


def test_shapes_dtypes_ranges(scenes):
    s = render_scene(3, (24, 40))  # (height, width)
    assert s.image.shape == (24, 40, 3) and s.image.dtype == np.uint8
    assert s.depth.shape == (24, 40) and s.depth.dtype == np.float32
    assert s.segmentation.dtype == np.int64 and s.pose.shape == (17, 3) and s.pose.dtype == np.float32
    assert not s.image.flags.writeable
    for s in scenes:
        assert 0 <= s.segmentation.min() and s.segmentation.max() < N_LABELS
        assert 0.1 - 1e-6 <= s.depth.min() and s.depth.max() <= 1.0
        assert 0 <= s.label < N_CLASSES
        assert set(np.unique(s.pose[:, 2])) <= {0.0, 1.0, 2.0}
    with pytest.raises(ValueError, match="at least 8x8"):
        render_scene(0, 4)
    with pytest.raises(ValueError, match="seed"):
        render_scene(-1, 16)


def test_varied(scenes):
    assert set(s.label for s in scenes) == set(range(N_CLASSES))
    assert len(set(len(s.objects) for s in scenes)) >= 3
    assert all(PERSON in s.segmentation for s in scenes)


def test_sky_and_ground(scenes):
    for s in scenes:
        sky, ground = s.segmentation == SKY, s.segmentation == GROUND
        assert (s.depth[sky] == 1.0).all() and (s.depth[ground] < 1.0).all()
        # sky is on top: every sky row is above every ground row
        assert np.nonzero(sky)[0].max() < np.nonzero(ground)[0].min()
        # the ground recedes: farther up the image, farther away
        rows = np.unique(np.nonzero(ground)[0])
        per_row = [s.depth[r][ground[r]].max() for r in rows]
        assert (np.diff(per_row) <= 0).all()


def test_objects_match_their_pixels(scenes):
    for s in scenes:
        for i, obj in enumerate(s.objects, start=1):
            mine = s.instances == i
            assert (s.segmentation[mine] == obj.label).all()
            assert (s.depth[mine] == np.float32(obj.depth)).all()
            rows, cols = np.nonzero(mine)
            if rows.size:
                t, l, b, r = obj.box
                assert t <= rows.min() and rows.max() < b and l <= cols.min() and cols.max() < r
        background = s.instances == 0
        assert np.isin(s.segmentation[background], [SKY, GROUND]).all()
        assert not np.isin(s.segmentation[~background], [SKY, GROUND]).any()


def test_nearer_objects_occlude_farther(scenes):
    occluded = 0
    for s in scenes:
        for i, obj in enumerate(s.objects, start=1):
            if obj.label != BOX:  # a box fills its extent, so every pixel in it shows it or a nearer thing
                continue
            t, l, b, r = obj.box
            region, ids = s.depth[t:b, l:r], s.instances[t:b, l:r]
            assert (region <= np.float32(obj.depth)).all()
            assert (region[ids != i] < np.float32(obj.depth)).all()
            occluded += int((ids != i).sum())
    assert occluded > 0  # the check above was not vacuous


def test_pose_visibility_matches_segmentation(scenes):
    seen = set()
    for s in scenes:
        h, w = s.segmentation.shape
        for x, y, v in s.pose:
            seen.add(v)
            if v == 0:
                assert x == 0 and y == 0
                continue
            col, row = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
            assert 0 <= col < w and 0 <= row < h
            assert (s.segmentation[row, col] == PERSON) == (v == 2)
    assert seen == {0.0, 1.0, 2.0}


def test_label_is_dominant_shape(scenes):
    for s in scenes:
        counts = {i: int((s.instances == i).sum()) for i, o in enumerate(s.objects, 1) if o.label != PERSON}
        best = max(counts, key=counts.get)
        assert s.label == s.objects[best - 1].label - DISC


def test_flip_pose():
    pose = np.zeros((17, 3), np.float32)
    pose[COCO_KEYPOINTS.index("left_wrist")] = (3, 5, 2)
    pose[COCO_KEYPOINTS.index("right_wrist")] = (8, 6, 1)
    out = flip_pose(pose, 10)
    np.testing.assert_array_equal(out[COCO_KEYPOINTS.index("right_wrist")], (6, 5, 2))
    np.testing.assert_array_equal(out[COCO_KEYPOINTS.index("left_wrist")], (1, 6, 1))
    assert (out[0] == 0).all()  # unlabelled keypoints stay (0, 0, 0)
    np.testing.assert_array_equal(flip_pose(out, 10), pose)
