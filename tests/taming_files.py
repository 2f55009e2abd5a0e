"""Files as taming-transformers writes them, made here (never copied from the reference).

- Depth (`scripts/extract_depth.py`): the float32 map's bytes viewed as uint8 (H, W, 4) and saved
  with `PIL.Image.fromarray(...).save("x.png")`, an RGBA PNG.
- Label maps (S-FLCKR's DeepLab output, COCO-Stuff's stuffthingmaps, ADE20K's annotations): uint8
  (H, W) saved with `Image.fromarray(...)`, a mode "L" PNG.
- Images: JPEG photos (`x.JPEG` in ImageNet / D-RIN, `x.jpg` elsewhere).
- Parallel trees with the same relative names, and list files of paths under the image tree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vqtoolkit_plugins.synthetic.render import render_scene


def save_taming_depth(path: Path, depth: np.ndarray) -> Path:
    """float32 (H, W) -> the reference's RGBA PNG of its bytes (depth_to_rgba, then Image.save)."""
    packed = np.ascontiguousarray(depth, dtype=np.float32).view(np.uint8)  # (H, 4W): the same bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(packed.reshape(*depth.shape, 4))).save(path)
    return path


def decode_by_hand(path: Path) -> np.ndarray:
    """The reference's rgba_to_depth of a file: uint8 (H, W, 4) bytes read as little-endian float32."""
    rgba = np.array(Image.open(path))
    assert rgba.dtype == np.uint8 and rgba.shape[2] == 4
    return np.frombuffer(rgba.tobytes(), dtype="<f4").reshape(rgba.shape[:2])


def save_label_map(path: Path, labels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.astype(np.uint8)).save(path)  # mode "L"
    return path


def save_photo(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="JPEG", quality=95)
    return path


def midas_like(seed: int, hw: tuple[int, int]) -> np.ndarray:
    """Inverse depth of a synthetic scene, scaled like MiDaS output (float32, roughly 30..1000)."""
    return (1000.0 / render_scene(seed, hw).depth).astype(np.float32)


def drin_tree(data: Path, hw: tuple[int, int] = (24, 32)) -> list[str]:
    """data/drin_images/<class>/x.JPEG beside data/drin_depth/<class>/x.png, and data/drin_examples.txt."""
    names = ["n01443537/ILSVRC2012_val_00000001", "n01443537/ILSVRC2012_val_00000002",
             "n01530575/ILSVRC2012_val_00000003"]
    for k, name in enumerate(names):
        save_photo(data / "drin_images" / f"{name}.JPEG", render_scene(k, hw).image)
        save_taming_depth(data / "drin_depth" / f"{name}.png", midas_like(k, hw))
    (data / "drin_examples.txt").write_text("".join(f"{n}.JPEG\n" for n in names[:2]))
    return names


def sflckr_tree(data: Path, hw: tuple[int, int] = (24, 32)) -> list[str]:
    """data/sflckr_images/<place>/x.jpg beside DeepLab's data/sflckr_segmentations/<place>/x.png: 0..181."""
    names = ["canada/256743165_9f130ba95b_b", "swiss_landscape/4079319632_0133685b2c_b"]
    for k, name in enumerate(names):
        scene = render_scene(k + 5, hw)
        labels = scene.segmentation.astype(np.int64) * 36 + 1  # 1..181
        save_photo(data / "sflckr_images" / f"{name}.jpg", scene.image)
        save_label_map(data / "sflckr_segmentations" / f"{name}.png", labels)
    return names


def coco_tree(data: Path, hw: tuple[int, int] = (24, 32)) -> list[str]:
    """data/coco/train2017/x.jpg beside data/cocostuffthings/train2017/x.png: labels 0..181, 255 unlabeled."""
    names = ["000000000009", "000000000025", "000000000030"]
    for k, name in enumerate(names):
        scene = render_scene(k, hw)
        labels = scene.segmentation.astype(np.int64) * 30 + 1  # stuff and thing ids in 0..181
        labels[:3, :5] = 255  # an unlabeled corner, as COCO-Stuff marks it
        labels[-1, -1] = 181  # the largest stored label
        save_photo(data / "coco" / "train2017" / f"{name}.jpg", scene.image)
        save_label_map(data / "cocostuffthings" / "train2017" / f"{name}.png", labels)
    return names


def ade20k_tree(data: Path, hw: tuple[int, int] = (24, 32)) -> list[str]:
    """ADEChallengeData2016 under data/ade20k_root: images/ and annotations/ with training/ folders;
    labels 0 ("other") .. 150."""
    names = ["training/ADE_train_00000001", "training/ADE_train_00000002"]
    for k, name in enumerate(names):
        scene = render_scene(k + 3, hw)
        labels = scene.segmentation.astype(np.int64) * 25  # 0 (other) .. 125
        labels[10:14, 14:18] = 150  # the largest label, in the middle of the picture
        save_photo(data / "ade20k_root" / "images" / f"{name}.jpg", scene.image)
        save_label_map(data / "ade20k_root" / "annotations" / f"{name}.png", labels)
    (data / "ade20k_root" / "sceneCategories.txt").write_text("".join(f"{n.split('/')[1]} x\n" for n in names))
    return names
