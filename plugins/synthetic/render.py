"""Built-in procedural scenes: paired image, depth, segmentation, pose and class, no download.

Every task in the toolkit (reconstruction, depth-, segmentation-, pose- and class-conditional
synthesis) needs data that a test or a 2-core demo can make in milliseconds. A scene is a sky
gradient over a tiled ground plane seen in perspective, a few shapes standing on the ground and a
stick figure; the same seed always gives the same scene. All modalities come from one z-buffer,
so they agree exactly: a pixel's label, depth and colour belong to the nearest surface.

Two worlds share every layout (same seed, same horizon, shapes and figure): in "random", colours
are random (sky tint, ground colour and tiles, each object's colour); in "graded", appearance
follows the geometry as in photographs, so a depth map tells much of what an image shows: the
ground fades with distance into the haze of the horizon (its furrows narrowing and fading too),
the sky deepens with height above the horizon, and objects take their kind's colour (discs red,
boxes brown, triangles yellow, people in navy) with a little jitter, hazed by distance like the
ground.

Conventions: depth is normalised, larger = farther (ground 0.1 at the bottom row up to 0.98
near the horizon, sky 1.0). Keypoint coordinates are pixel indices (x = column, y = row, pixel
centres at integers), so a horizontal flip maps x to W - 1 - x.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LABEL_NAMES = ("sky", "ground", "disc", "box", "triangle", "person")
N_LABELS = len(LABEL_NAMES)
SKY, GROUND, DISC, BOX, TRIANGLE, PERSON = range(N_LABELS)

CLASS_NAMES = ("disc", "box", "triangle")
"""Scene class = shape of the object with the most visible pixels."""
N_CLASSES = len(CLASS_NAMES)

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip
"""COCO's 19 limbs as 0-based keypoint index pairs."""
COCO_FLIP_INDEX = tuple(
    COCO_KEYPOINTS.index(n.replace("left", "right") if "left" in n else n.replace("right", "left"))
    for n in COCO_KEYPOINTS
)
"""After a horizontal flip, keypoint i takes the values of keypoint COCO_FLIP_INDEX[i]."""

SKY_DEPTH = 4.0  # far beyond the farthest ground: the sky is at infinity, and at 1.0 its disparity (1/depth) was
# within 2 % of the horizon's ground, so a depth condition could not tell sky from far ground (false horizons)
NEAR_DEPTH = 0.1  # ground depth at the bottom row
FAR_GROUND_DEPTH = 0.98  # ground depth cap near the horizon, so the sky is always the farthest

WORLDS = ("random", "graded")
"""How scenes look: random colours, or appearance that follows depth and height (module docstring)."""
_HAZE = np.array([0.80, 0.84, 0.90], np.float32)  # what the farthest ground (and the low sky) fade to
_ZENITH = np.array([0.20, 0.40, 0.80], np.float32)
_GRASS = np.array([0.28, 0.50, 0.16], np.float32)
_CLOTHES = np.array([0.15, 0.20, 0.45], np.float32)
_SKIN = np.array([0.88, 0.68, 0.52], np.float32)
_KIND_COLOURS = {DISC: np.array([0.85, 0.18, 0.15], np.float32),  # red
                 BOX: np.array([0.60, 0.38, 0.18], np.float32),  # brown
                 TRIANGLE: np.array([0.95, 0.80, 0.15], np.float32)}  # yellow


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its label, its (constant) depth and its unoccluded extent.

    `box` is (top, left, bottom, right), bottom/right exclusive, of the full silhouette before
    occlusion, clipped to the image; for a box-shaped object every pixel inside is the object's.
    """

    label: int
    depth: float
    box: tuple[int, int, int, int]


@dataclass(frozen=True, eq=False)
class Scene:
    """A rendered scene; arrays are read-only so a cached scene cannot be altered by accident."""

    image: np.ndarray  # uint8 (H, W, 3)
    depth: np.ndarray  # float32 (H, W), larger = farther
    segmentation: np.ndarray  # int64 (H, W), values in [0, N_LABELS)
    instances: np.ndarray  # int32 (H, W), 0 = sky/ground, i = objects[i - 1]
    objects: tuple[SceneObject, ...]
    pose: np.ndarray  # float32 (17, 3): x, y, visibility (0 outside, 1 occluded, 2 visible)
    label: int  # in [0, N_CLASSES)


def flip_pose(pose: np.ndarray, width: int) -> np.ndarray:
    """Mirror COCO keypoints (17, 3) for a horizontally flipped image: x -> W-1-x, left <-> right."""
    out = pose[list(COCO_FLIP_INDEX)].copy()
    labelled = out[:, 2] > 0
    out[labelled, 0] = width - 1 - out[labelled, 0]
    return out


class _Canvas:
    """Colour, depth, label and instance buffers with a z-tested paint operation.

    The scene is `h` x `w` pixels; the buffers hold only its `view` (top, left, height, width), so
    a crop of a large scene costs what the crop's pixels cost. Geometry is in scene pixels; buffer
    positions (and object boxes) are in view pixels.
    """

    def __init__(self, h: int, w: int, view: tuple[int, int, int, int] | None = None) -> None:
        self.h, self.w = h, w
        self.top, self.left, vh, vw = view if view is not None else (0, 0, h, w)
        self.rgb = np.zeros((vh, vw, 3), np.float32)  # (vh, vw, 3) in [0, 1]
        self.depth = np.full((vh, vw), SKY_DEPTH, np.float32)
        self.seg = np.zeros((vh, vw), np.int64)
        self.inst = np.zeros((vh, vw), np.int32)
        self.objects: list[SceneObject] = []

    def window(self, top: float, left: float, bottom: float, right: float):
        """Pixel ranges covering a float box (scene pixels), clipped to the view.

        Returns (y0, x0, ys, xs) or None: y0, x0 the buffer position, ys, xs scene coordinates.
        """
        vh, vw = self.depth.shape
        y0 = max(self.top, int(np.floor(top)))
        y1 = min(self.top + vh, int(np.ceil(bottom)) + 1)
        x0 = max(self.left, int(np.floor(left)))
        x1 = min(self.left + vw, int(np.ceil(right)) + 1)
        if y0 >= y1 or x0 >= x1:
            return None
        ys = np.arange(y0, y1, dtype=np.float32)[:, None]  # (h, 1)
        xs = np.arange(x0, x1, dtype=np.float32)[None, :]  # (1, w)
        return y0 - self.top, x0 - self.left, ys, xs

    def paint(self, y0: int, x0: int, mask: np.ndarray, colour: np.ndarray, depth: float, label: int) -> None:
        """Z-buffer `mask` (h, w) at (y0, x0) with a colour (h, w, 3) or (3,) and a constant depth."""
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            return
        box = (y0 + int(rows.min()), x0 + int(cols.min()), y0 + int(rows.max()) + 1, x0 + int(cols.max()) + 1)
        self.objects.append(SceneObject(label, float(np.float32(depth)), box))
        sl = (slice(y0, y0 + mask.shape[0]), slice(x0, x0 + mask.shape[1]))
        win = mask & (np.float32(depth) < self.depth[sl])
        colour = np.broadcast_to(colour, mask.shape + (3,))
        self.rgb[sl][win] = colour[win]
        self.depth[sl][win] = depth
        self.seg[sl][win] = label
        self.inst[sl][win] = len(self.objects)


def _vivid(c: np.ndarray) -> np.ndarray:
    """A saturated colour from 3 uniform draws, so shapes stand out from sky and ground."""
    c = (c - c.min()) / (np.ptp(c) + 1e-6)
    return (0.15 + 0.85 * c).astype(np.float32)


def _jitter(u: np.ndarray, lo: object, hi: object) -> np.ndarray:
    """Uniform draws in [lo, hi) mapped to [-0.5, 0.5): the graded world's small variations."""
    return ((u - np.asarray(lo)) / (np.asarray(hi) - np.asarray(lo)) - 0.5).astype(np.float32)


def _haze(depth: float | np.ndarray) -> np.ndarray:
    """Aerial perspective: how much of the horizon's haze a surface at `depth` shows (0 near, 1 far)."""
    return np.clip((depth - NEAR_DEPTH) / (FAR_GROUND_DEPTH - NEAR_DEPTH), 0, 1).astype(np.float32) ** 0.75


def _background(cv: _Canvas, rng: np.random.Generator, horizon: float, world: str) -> None:
    """Sky gradient above the horizon; perspective ground plane with fading tiles below."""
    h, w = cv.h, cv.w
    vh, vw = cv.depth.shape
    ys = np.arange(cv.top, cv.top + vh, dtype=np.float32)[:, None]  # (H, 1) scene rows of the view
    xs = np.arange(cv.left, cv.left + vw, dtype=np.float32)[None, :]  # (1, W)
    ground = ys > horizon  # (H, 1)
    gdepth = _ground_depth(h, horizon, ys)  # (H, 1)
    # Both worlds draw the same numbers, so a seed's layout is the same in each.
    freq, phase = rng.uniform(12, 30), rng.uniform(0, 1, 2)
    contrast_u = rng.uniform(0.08, 0.2)
    ground_u = rng.uniform([0.2, 0.3, 0.1], [0.55, 0.6, 0.35]).astype(np.float32)
    top = rng.uniform([0.05, 0.2, 0.5], [0.4, 0.6, 1.0]).astype(np.float32)
    low_u = rng.uniform(0.55, 1.0, 3)
    if world == "graded":
        a = _haze(gdepth)[..., None]  # (H, 1, 1)
        furrows = np.floor(gdepth * 16) % 2  # a fixed spacing on the ground: narrower with distance
        shade = (1 - 0.12 * (1 - a[..., 0]) * furrows)[..., None]  # (H, 1, 1)
        near = _GRASS + 0.08 * _jitter(ground_u, [0.2, 0.3, 0.1], [0.55, 0.6, 0.35])
        ground_rgb = near * shade * (1 - a) + _HAZE * a  # (H, 1, 3)
        t = np.clip((horizon - ys) / (0.5 * h), 0, 1)[..., None]  # height above the horizon (H, 1, 1)
        zenith = _ZENITH + 0.08 * _jitter(top, [0.05, 0.2, 0.5], [0.4, 0.6, 1.0])
        low = _HAZE + 0.04 * _jitter(low_u, 0.55, 1.0)
        sky_rgb = low * (1 - t) + zenith * t  # (H, 1, 3)
    else:
        # Ground-plane coordinates (focal length = H pixels): tiles shrink with distance.
        gx = (xs - w / 2) * gdepth / h  # (H, W)
        tiles = (np.floor(gdepth * freq + phase[0]) + np.floor(gx * freq * 4 + phase[1])) % 2  # (H, W)
        contrast = contrast_u * (1 - gdepth)
        shade = (0.55 + 0.45 * (1 - gdepth) - contrast * tiles)[..., None]  # (H, W, 1)
        ground_rgb = ground_u * shade
        low = (0.4 * top + 0.6 * low_u).astype(np.float32)
        t = np.clip(ys / max(horizon, 1.0), 0, 1)[..., None]  # (H, 1, 1)
        sky_rgb = top * (1 - t) + low * t  # (H, 1, 3)
    cv.rgb[:] = np.where(ground[..., None], ground_rgb, sky_rgb)
    cv.depth[:] = np.where(ground, gdepth, SKY_DEPTH)
    cv.seg[:] = np.where(ground, GROUND, SKY)


def _ground_depth(h: int, horizon: float, y: float | np.ndarray) -> np.ndarray:
    """Depth of ground row(s) y: a flat plane seen by a level camera, depth ~ 1 / (y - horizon)."""
    depth = NEAR_DEPTH * (h - 1 - horizon) / np.maximum(y - horizon, 1e-3)
    return np.clip(depth, NEAR_DEPTH, FAR_GROUND_DEPTH)


def _shape(cv: _Canvas, rng: np.random.Generator, horizon: float, world: str) -> None:
    """A disc, box or triangle standing on the ground, sized by perspective."""
    h, w = cv.h, cv.w
    v = rng.uniform(0.25, 1.0)  # 0 = horizon, 1 = bottom row
    base = horizon + v * (h - 1 - horizon)
    depth = float(_ground_depth(h, horizon, base))
    s = v * rng.uniform(0.25, 0.5) * h  # height in pixels
    cx = rng.uniform(0.05, 0.95) * (w - 1)
    label = int(rng.integers(DISC, TRIANGLE + 1))
    u = rng.uniform(0, 1, 3)
    colour = _KIND_COLOURS[label] + 0.08 * _jitter(u, 0, 1) if world == "graded" else _vivid(u)
    if label == DISC:
        r = s / 2
        cy = base - r
        win = cv.window(cy - r, cx - r, cy + r, cx + r)
        if win is None:
            return
        y0, x0, ys, xs = win
        mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
        glint = ((xs - cx + 0.35 * r) ** 2 + (ys - cy + 0.35 * r) ** 2) / (r * r)
        shade = 1.1 - 0.45 * np.clip(glint, 0, 1.5)  # lit from the top left
    elif label == BOX:
        half = s * rng.uniform(0.3, 0.8)
        win = cv.window(base - s, cx - half, base, cx + half)
        if win is None:
            return
        y0, x0, ys, xs = win
        mask = (ys >= base - s) & (ys <= base) & (xs >= cx - half) & (xs <= cx + half)
        shade = 1.0 - 0.35 * (ys - (base - s)) / s  # darker towards the ground
    else:
        half = s * rng.uniform(0.4, 0.7)
        win = cv.window(base - s, cx - half, base, cx + half)
        if win is None:
            return
        y0, x0, ys, xs = win
        below_apex = ys - (base - s)
        mask = (below_apex >= 0) & (ys <= base) & (np.abs(xs - cx) <= half * below_apex / s)
        shade = np.where(xs > cx, 0.75, 1.0)  # two faces, the right one in shadow
    rgb = np.clip(colour * np.broadcast_to(shade, mask.shape)[..., None], 0, 1)  # (h, w, 3)
    if world == "graded":
        a = _haze(depth)
        rgb = rgb * (1 - a) + _HAZE * a
    cv.paint(y0, x0, mask, rgb, depth, label)


def _stick_figure(cv: _Canvas, rng: np.random.Generator, horizon: float, world: str) -> np.ndarray:
    """Draw a front-facing stick figure; return its 17 keypoints (x, y) in scene pixels.

    The person's left is on the image's right (they face the camera), as in COCO.
    """
    h, w = cv.h, cv.w
    kp = np.zeros((17, 2), np.float64)  # person-local units: height 1, y down, x right
    kp[0] = (0.0, -0.9)
    for s, (eye, ear, sh, el, wr, hip, kn, an) in (
        (+1, (1, 3, 5, 7, 9, 11, 13, 15)),
        (-1, (2, 4, 6, 8, 10, 12, 14, 16)),
    ):
        kp[eye] = (s * 0.03, -0.93)
        kp[ear] = (s * 0.07, -0.91)
        kp[sh] = (s * 0.11, -0.8)
        a = s * rng.uniform(0.1, 2.6)  # upper arm angle from hanging down, outwards
        kp[el] = kp[sh] + 0.17 * np.array([np.sin(a), np.cos(a)])
        a += s * rng.uniform(-0.8, 0.8)
        kp[wr] = kp[el] + 0.16 * np.array([np.sin(a), np.cos(a)])
        kp[hip] = (s * 0.06, -0.5)
        a = s * rng.uniform(0.0, 0.35)
        kp[kn] = kp[hip] + 0.26 * np.array([np.sin(a), np.cos(a)])
        a += rng.uniform(-0.25, 0.25)
        kp[an] = kp[kn] + 0.25 * np.array([np.sin(a), np.cos(a)])
    kp[:, 1] -= kp[15:17, 1].max()  # the lower foot stands on the ground

    v = rng.uniform(0.4, 1.0)
    base = horizon + v * (h - 1 - horizon)
    depth = float(_ground_depth(h, horizon, base))
    height = v * rng.uniform(0.45, 0.6) * h
    kp = kp * height + np.array([rng.uniform(0.1, 0.9) * (w - 1), base])  # (17, 2) pixels

    head_c, head_r = np.array([kp[0, 0], kp[0, 1] - 0.01 * height]), max(1.0, 0.075 * height)
    neck, pelvis = (kp[5] + kp[6]) / 2, (kp[11] + kp[12]) / 2
    # COCO's arm, leg and girdle limbs; its shoulder-hip sides become one spine, as in a stick figure.
    limbs = np.array(
        [(kp[a], kp[b]) for a, b in COCO_SKELETON if a >= 5 and b >= 5 and {a, b} not in ({5, 11}, {6, 12})]
        + [(neck, pelvis), (neck, head_c)]
    )  # (S, 2 ends, 2 coords)
    radius = max(0.8, 0.025 * height)
    clothes, skin = rng.uniform(0.05, 0.45, 3), rng.uniform([0.6, 0.4, 0.3], [0.95, 0.75, 0.6])
    if world == "graded":
        a = _haze(depth)
        clothes = (_CLOTHES + 0.1 * _jitter(clothes, 0.05, 0.45)) * (1 - a) + _HAZE * a
        skin = (_SKIN + 0.05 * _jitter(skin, [0.6, 0.4, 0.3], [0.95, 0.75, 0.6])) * (1 - a) + _HAZE * a
    lo, hi = np.minimum(kp.min(0), head_c - head_r) - radius, np.maximum(kp.max(0), head_c + head_r) + radius
    win = cv.window(lo[1], lo[0], hi[1], hi[0])
    if win is not None:
        y0, x0, ys, xs = win
        a, d = limbs[:, 0, :, None, None], (limbs[:, 1] - limbs[:, 0])[:, :, None, None]  # (S, 2, 1, 1)
        px, py = xs[None] - a[:, 0], ys[None] - a[:, 1]  # (S, h, w)
        t = np.clip((px * d[:, 0] + py * d[:, 1]) / np.maximum((d**2).sum(1), 1e-9), 0, 1)
        body = ((px - t * d[:, 0]) ** 2 + (py - t * d[:, 1]) ** 2 <= radius**2).any(0)  # (h, w)
        head = (xs - head_c[0]) ** 2 + (ys - head_c[1]) ** 2 <= head_r**2
        rgb = np.where(head[..., None], skin, clothes).astype(np.float32)
        cv.paint(y0, x0, body | head, rgb, depth, PERSON)
    return kp.astype(np.float32)


def _parse_size(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if h < 8 or w < 8:
        raise ValueError(f"scene size must be at least 8x8, got {w}x{h}")
    return int(h), int(w)


def render_scene(seed: int, size: int | tuple[int, int], window: tuple[int, int, int, int] | None = None,
                 world: str = "random") -> Scene:
    """Render scene number `seed` at `size` (an int, or (height, width)); same seed, same scene.

    `world` is "random" or "graded" (module docstring): the same layout, coloured differently.

    `window` = (top, left, height, width) renders only that crop of the scene, at the cost of its
    pixels: its image, depth and segmentation equal the whole scene's in that window, bit for bit.
    Its objects, instances, keypoints (crop pixels, 0 = outside) and class are the crop's own.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if world not in WORLDS:
        raise ValueError(f"world must be one of {', '.join(WORLDS)}, got {world!r}")
    h, w = _parse_size(size)
    if window is not None:
        top, left, vh, vw = (int(v) for v in window)
        if vh < 1 or vw < 1 or top < 0 or left < 0 or top + vh > h or left + vw > w:
            raise ValueError(f"window {window} (top, left, height, width) does not lie inside the {w}x{h} scene")
        window = (top, left, vh, vw)
    rng = np.random.default_rng(seed)
    cv = _Canvas(h, w, window)
    horizon = rng.uniform(0.3, 0.55) * (h - 1)
    _background(cv, rng, horizon, world)
    for _ in range(int(rng.integers(1, 5))):
        _shape(cv, rng, horizon, world)
    xy = _stick_figure(cv, rng, horizon, world) - np.array([cv.left, cv.top], np.float32)  # view pixels
    h, w = cv.depth.shape

    # Visibility: 2 where the keypoint's pixel shows the person, 1 if hidden, 0 outside (COCO: 0, 0, 0).
    person = next((i + 1 for i, o in enumerate(cv.objects) if o.label == PERSON), -1)
    cols, rows = np.floor(xy[:, 0] + 0.5).astype(int), np.floor(xy[:, 1] + 0.5).astype(int)
    inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    shown = np.zeros(17, bool)
    shown[inside] = cv.inst[rows[inside], cols[inside]] == person
    pose = np.zeros((17, 3), np.float32)
    pose[inside, :2] = xy[inside]
    pose[:, 2] = np.where(shown, 2, np.where(inside, 1, 0))

    # Class: the shape with the most visible pixels (the first shape if all are hidden).
    counts = np.bincount(cv.inst.ravel(), minlength=len(cv.objects) + 1)[1:]
    shapes = [i for i, o in enumerate(cv.objects) if o.label != PERSON]
    dominant = max(shapes, key=lambda i: counts[i], default=None)
    label = 0 if dominant is None else cv.objects[dominant].label - DISC

    arrays = (np.floor(cv.rgb * 255 + 0.5).clip(0, 255).astype(np.uint8), cv.depth, cv.seg, cv.inst, pose)
    for a in arrays:
        a.setflags(write=False)
    image, depth, seg, inst, pose = arrays
    return Scene(image, depth, seg, inst, tuple(cv.objects), pose, int(label))


def write_scene(scene: Scene, folder: str | Path, force: bool = False) -> list[Path]:
    """Write a scene as files the CLI reads: image.png, depth.png (16-bit, near = small),
    segmentation.png (8-bit labels), pose.json (COCO-17 keypoints), label.txt."""
    from vqtoolkit.fileio import all_or_nothing, atomic_write_text, check_new
    from vqtoolkit.images import save_png

    folder = Path(folder)
    depth16 = np.round(scene.depth / max(float(scene.depth.max()), 1e-6) * 65535).astype(np.uint16)
    paths = [folder / n for n in ("image.png", "depth.png", "segmentation.png", "pose.json", "label.txt")]
    for path in paths:
        check_new(path, force)
    keypoints = {"width": scene.image.shape[1], "height": scene.image.shape[0],
                 "keypoints": np.asarray(scene.pose, dtype=np.float64).round(2).tolist()}
    with all_or_nothing() as written:
        written.append(save_png(np.asarray(scene.image), paths[0], force=force))
        written.append(save_png(depth16, paths[1], force=force))
        written.append(save_png(np.asarray(scene.segmentation, dtype=np.uint8), paths[2], force=force))
        atomic_write_text(paths[3], json.dumps(keypoints), force=force)
        written.append(paths[3])
        atomic_write_text(paths[4], f"{scene.label} {CLASS_NAMES[scene.label]}\n", force=force)
        written.append(paths[4])
    return paths
