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
    FAR_GROUND_DEPTH,
    GROUND,
    LABEL_NAMES,
    N_CLASSES,
    N_LABELS,
    NEAR_DEPTH,
    PERSON,
    SKY,
    SKY_DEPTH,
    TRIANGLE,
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
        assert 0.1 - 1e-6 <= s.depth.min() and s.depth.max() <= SKY_DEPTH
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
        assert (s.depth[sky] == SKY_DEPTH).all() and (s.depth[ground] <= FAR_GROUND_DEPTH).all()
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


def _check_consistent(s):
    """A scene's (or a crop's) objects, instances, labels and keypoints agree with each other."""
    for i, obj in enumerate(s.objects, start=1):
        mine = s.instances == i
        assert mine.any() and (s.segmentation[mine] == obj.label).all()
        assert (s.depth[mine] == np.float32(obj.depth)).all()
        rows, cols = np.nonzero(mine)
        t, l, b, r = obj.box
        assert t <= rows.min() and rows.max() < b and l <= cols.min() and cols.max() < r
    assert np.isin(s.segmentation[s.instances == 0], [SKY, GROUND]).all()
    h, w = s.segmentation.shape
    for x, y, v in s.pose:
        if v == 0:
            assert x == 0 and y == 0
            continue
        col, row = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        assert 0 <= col < w and 0 <= row < h
        assert (s.segmentation[row, col] == PERSON) == (v == 2)


@pytest.mark.parametrize("size,windows", [
    ((72, 128), [(0, 0, 32, 32), (40, 96, 32, 32), (10, 5, 50, 70), (0, 0, 72, 128)]),
    ((576, 1024), [(300, 500, 64, 64), (448, 896, 128, 128), (0, 0, 128, 128)]),
])
def test_window_renders_that_crop_of_the_scene(size, windows):
    for seed in (0, 7, 11):
        whole = render_scene(seed, size)
        for top, left, h, w in windows:
            crop = render_scene(seed, size, (top, left, h, w))
            for field in ("image", "depth", "segmentation"):
                np.testing.assert_array_equal(getattr(crop, field), getattr(whole, field)[top:top + h, left:left + w])
            _check_consistent(crop)
            assert crop.image.shape == (h, w, 3) and not crop.image.flags.writeable
    full = render_scene(3, (72, 128), (0, 0, 72, 128))
    whole = render_scene(3, (72, 128))
    np.testing.assert_array_equal(full.instances, whole.instances)
    np.testing.assert_array_equal(full.pose, whole.pose)
    assert full.objects == whole.objects and full.label == whole.label


def test_window_outside_the_scene_is_an_error():
    for window in [(0, 0, 0, 8), (-1, 0, 8, 8), (60, 0, 16, 16), (0, 120, 8, 16)]:
        with pytest.raises(ValueError, match="does not lie inside the 128x72 scene"):
            render_scene(0, (72, 128), window)


def test_every_scene_spans_near_to_sky_depth():
    """Crops are normalised by the whole scene's depth range without rendering it: [NEAR, SKY]."""
    for size, seeds in (((576, 1024), range(4)), ((72, 128), range(60)), (64, range(60))):
        for seed in seeds:
            depth = render_scene(seed, size).depth
            assert depth.min() == pytest.approx(NEAR_DEPTH, abs=1e-6) and depth.max() == SKY_DEPTH


def test_worlds_share_the_layout():
    for seed in range(12):
        r, g = render_scene(seed, (48, 80)), render_scene(seed, (48, 80), world="graded")
        for field in ("depth", "segmentation", "instances", "pose"):
            np.testing.assert_array_equal(getattr(r, field), getattr(g, field))
        assert r.objects == g.objects and r.label == g.label
        assert not np.array_equal(r.image, g.image)
        _check_consistent(g)
    crop = render_scene(5, (576, 1024), (200, 300, 64, 64), world="graded")
    np.testing.assert_array_equal(crop.image, render_scene(5, (576, 1024), world="graded").image[200:264, 300:364])
    with pytest.raises(ValueError, match="world must be one of random, graded"):
        render_scene(0, 16, world="photo")


def test_graded_world_follows_depth_and_height():
    kinds = {DISC: [], BOX: [], TRIANGLE: []}
    for seed in range(30):
        s = render_scene(seed, (72, 128), world="graded")
        img = s.image.astype(np.float32) / 255
        ground, sky = s.segmentation == GROUND, s.segmentation == SKY
        for row in np.unique(np.nonzero(ground)[0]):  # the ground's colour is its distance's
            assert np.ptp(img[row][ground[row]], axis=0).max() == 0
        far, near = s.depth[ground].max(), s.depth[ground].min()
        assert img[ground & (s.depth == far)].mean() > img[ground & (s.depth == near)].mean()  # hazed far away
        rows = np.unique(np.nonzero(sky)[0])
        blue_minus_red = [float((img[r, :, 2] - img[r, :, 0])[sky[r]].mean()) for r in rows]
        assert (np.diff(blue_minus_red) <= 1e-6).all()  # bluer higher up
        for i, obj in enumerate(s.objects, start=1):
            if obj.label in kinds and (s.instances == i).sum() >= 20:
                kinds[obj.label].append(np.median(img[s.instances == i], axis=0))
    disc, box, triangle = (np.array(kinds[k]) for k in (DISC, BOX, TRIANGLE))
    assert len(disc) and len(box) and len(triangle)
    assert (disc[:, 0] > disc[:, 1] + 0.2).all()  # red
    assert (triangle[:, 1] > triangle[:, 2] + 0.2).all() and (triangle[:, 0] > 0.6).all()  # yellow
    assert (box[:, 0] > box[:, 2]).all() and (box[:, 0] < 0.75).all()  # brown


def test_scene_command_writes_either_world(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from vqtoolkit.cli import cli

    for world in ("random", "graded"):
        result = CliRunner().invoke(cli, ["scene", "--size", "64x40", "--seed", "7", "--world", world,
                                          "-o", str(tmp_path / world)])
        assert result.exit_code == 0, result.output
        written = np.asarray(Image.open(tmp_path / world / "image.png").convert("RGB"))
        np.testing.assert_array_equal(written, render_scene(7, (40, 64), world=world).image)
