"""The pose plugin: COCO-17 keypoints drawn as coloured limbs, every JSON form and every error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqtoolkit.errors import DataError, ImageError, VqtError
from vqtoolkit_plugins.synthetic.render import COCO_SKELETON

from .conftest import cond


def test_pose_limb_map_draws_labelled_limbs_only():
    from vqtoolkit_plugins.pose import LIMB_COLOURS, render_limbs

    kp = np.zeros((17, 3), np.float32)
    kp[5] = (10, 20, 2)  # left shoulder
    kp[7] = (30, 20, 1)  # left elbow (occluded still counts)
    kp[9] = (30, 40, 0)  # left wrist unlabelled: the forearm is not drawn
    raw = render_limbs([kp], 64, 64)
    assert raw.shape == (3, 64, 64) and float(raw.min()) == -1
    limb = COCO_SKELETON.index((5, 7))
    assert torch.allclose(raw[:, 20, 20], torch.from_numpy(LIMB_COLOURS[limb]) * 2 - 1)
    assert torch.equal(raw[:, 35, 30], -torch.ones(3))  # no forearm
    assert torch.equal(raw[:, 5, 5], -torch.ones(3))


def test_pose_from_item_and_json_forms(tmp_path, item):
    c, o = cond("pose")
    raw = c.from_item(item, o)
    assert raw.shape == (3, 32, 32) and c.stage_channels(o) == 3
    assert (raw > -1).any() and float(raw.max()) <= 1
    kp = item["paired"]["pose"]
    forms = {
        "flat": kp.ravel().tolist(),
        "triples": kp.tolist(),
        "dict": {"keypoints": kp.ravel().tolist()},
        "annotations": {"annotations": [{"keypoints": kp.tolist()}]},
        "scaled": {"keypoints": (kp * [0.5, 0.5, 1]).ravel().tolist(), "width": 16, "height": 16},
    }
    for name, data in forms.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        assert torch.allclose(c.read(str(tmp_path / f"{name}.json"), (32, 32), o), raw), name
    assert np.array_equal(c.render(raw, o), ((raw.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())
    Image.fromarray(c.render(raw, o)).save(tmp_path / "limbs.png")
    assert torch.allclose(c.read(str(tmp_path / "limbs.png"), (32, 32), o), raw, atol=1 / 127)


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2, 3]", r"expected 17 COCO keypoints as \[x, y, v\] \(51 numbers\), got 3 numbers"),
    (json.dumps([[1, 2]] * 17), r"keypoint triples must be \[x, y, v\]; got \[1, 2\]"),
    (json.dumps(["a"] * 51), "keypoints must be finite numbers"),
    (json.dumps({"people": []}), r"needs \"keypoints\" or \"annotations\""),
    (json.dumps({"keypoints": [0] * 51, "width": 0, "height": 4}), r"\"width\" and \"height\" must both be positive"),
    (json.dumps("text"), "keypoints must be a list, got str"),
])
def test_pose_json_errors(tmp_path, text, message):
    c, o = cond("pose")
    path = tmp_path / "pose.json"
    path.write_text(text)
    with pytest.raises(ImageError, match=rf"pose file .*pose.json: .*{message}|pose file .*pose.json {message}"):
        c.read(str(path), (8, 8), o)


@pytest.mark.parametrize("call, error, message", [
    pytest.param(lambda c, o, files: c.from_item({"name": "x", "image": torch.zeros(3, 8, 8)}, o),
                 DataError, r"item 'x' has no pose", id="item-without-pose"),
    pytest.param(lambda c, o, files: c.render(torch.zeros(1, 8, 8), o),
                 VqtError, "expects raw maps of 3 channel", id="render-one-channel"),
    pytest.param(lambda c, o, files: c.read(str(files / "none.json"), (8, 8), o),
                 ImageError, r"pose file .*none.json does not exist", id="file-missing"),
    pytest.param(lambda c, o, files: c.read(str(files / "limbs.png"), (8, 8), o),
                 ImageError, r"pose map .*limbs.png is 8x6 but --size is 8x8", id="limb-map-size"),
])
def test_pose_file_errors(tmp_path, call, error, message):
    c, o = cond("pose")
    Image.new("RGB", (8, 6)).save(tmp_path / "limbs.png")
    with pytest.raises(error, match=message):
        call(c, o, tmp_path)
