"""The synthetic shapes world: circles, squares and triangles on cluttered, textured ground.

Deterministic under its seed, so the zoo's detector and segmenter and their held-out sets
need no download. One scene gives an RGB image, per-object boxes and a class mask from
the same drawing, so detection labels and segmentation masks always agree: a box is the
extent of what is still visible of its object after the objects drawn over it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from auditor.files import write_folder_once

CLASSES = ("circle", "square", "triangle")
IGNORE = 255
PALETTE = (
    (220, 40, 40),
    (40, 170, 60),
    (40, 80, 220),
    (240, 200, 30),
    (170, 60, 200),
    (30, 190, 200),
    (250, 130, 20),
    (240, 240, 240),
)
MIN_VISIBLE = 0.35  # objects hidden more than this by later ones are dropped from the labels
SPLIT_SEEDS = {"train": 1000, "val": 2000, "test": 3000}  # disjoint scene streams per split


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # H x W x 3 uint8
    mask: np.ndarray  # H x W uint8: 0 background, 1 + class index per pixel
    boxes: np.ndarray  # K x 4 float, x0 y0 x1 y1 in pixels (inclusive-exclusive)
    classes: np.ndarray  # K int, index into CLASSES


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Low-frequency colour field plus noise, then clutter: lines, arcs and specks."""
    coarse = rng.integers(60, 200, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 14, size=(size, size, 3))
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 10))):
        colour = tuple(int(c) for c in rng.integers(30, 230, 3))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(-10, size + 10, 4))
        if rng.random() < 0.5:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 3)))
        else:
            box = (min(x0, x1), min(y0, y1), max(x0, x1) + 4, max(y0, y1) + 4)
            draw.arc(box, start=float(rng.uniform(0, 360)), end=float(rng.uniform(0, 360)), fill=colour, width=2)
    for _ in range(int(rng.integers(10, 30))):
        x, y, r = int(rng.integers(0, size)), int(rng.integers(0, size)), int(rng.integers(1, 3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return img.filter(ImageFilter.GaussianBlur(0.6))


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        corners = [math.pi / 4 + k * math.pi / 2 for k in range(4)]
    else:  # triangle
        corners = [-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
    return [(cx + r * math.cos(a + angle), cy + r * math.sin(a + angle)) for a in corners]


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, angle: float, fill) -> None:
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        # Squares use r as circumradius; triangles a little more, so areas are alike.
        draw.polygon(_polygon(kind, cx, cy, r * (1.0 if kind == "square" else 1.15), angle), fill=fill)


def render(seed: int, size: int = 160, max_objects: int = 6) -> Scene:
    rng = np.random.default_rng(seed)
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    ids = np.zeros((size, size), dtype=np.int32)  # object id per pixel; later objects on top
    kinds, areas = [], []
    for obj in range(int(rng.integers(2, max_objects + 1))):
        cls = int(rng.integers(0, len(CLASSES)))
        r = float(rng.uniform(0.08, 0.2) * size)
        # Centres may sit up to 0.4 r outside the frame, so some objects touch or cross the border.
        cx, cy = (float(v) for v in rng.uniform(-0.4 * r, size + 0.4 * r, 2))
        colour = PALETTE[int(rng.integers(0, len(PALETTE)))]
        shade = tuple(int(min(255, max(0, c + int(rng.integers(-25, 26))))) for c in colour)
        angle = float(rng.uniform(0, 2 * math.pi))
        _draw_shape(draw, CLASSES[cls], cx, cy, r, angle, shade)
        alone = Image.new("L", (size, size), 0)
        _draw_shape(ImageDraw.Draw(alone), CLASSES[cls], cx, cy, r, angle, 1)
        own = np.asarray(alone, dtype=bool)
        ids[own] = obj + 1
        kinds.append(cls)
        areas.append(int(own.sum()))
    mask = np.zeros((size, size), dtype=np.uint8)
    boxes, classes = [], []
    for obj, (cls, area) in enumerate(zip(kinds, areas)):
        visible = ids == obj + 1
        if not visible.any():
            continue
        if visible.sum() < MIN_VISIBLE * area:
            mask[visible] = IGNORE  # too hidden to demand from a model either way
            continue
        mask[visible] = cls + 1
        ys, xs = np.nonzero(visible)
        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        classes.append(cls)
    return Scene(
        image=np.asarray(image, dtype=np.uint8),
        mask=mask,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        classes=np.asarray(classes, dtype=np.int64),
    )


def scene_seed(split: str, index: int) -> int:
    return SPLIT_SEEDS[split] * 100_000 + index


def cache_dir() -> Path:
    """Where generated data sets live: $AUDITOR_CACHE, else ~/.cache/auditor."""
    return Path(os.environ.get("AUDITOR_CACHE", Path.home() / ".cache" / "auditor"))


def write_segmentation_set(root: Path, split: str, n: int, size: int = 160) -> Path:
    """images/ + masks/ (PNG, pixel = class id, 255 = ignore), the layout users bring."""
    return write_folder_once(root, lambda tmp: _write_seg(tmp, split, n, size))


def write_detection_set(root: Path, splits: dict[str, int], size: int = 160) -> Path:
    """An ultralytics data set: images/SPLIT, labels/SPLIT (YOLO txt), data.yaml."""
    return write_folder_once(root, lambda tmp: _write_det(tmp, root, splits, size))


def _write_seg(tmp: Path, split: str, n: int, size: int) -> None:
    (tmp / "images").mkdir()
    (tmp / "masks").mkdir()
    for i in range(n):
        scene = render(scene_seed(split, i), size)
        Image.fromarray(scene.image).save(tmp / "images" / f"{split}_{i:04d}.png")
        Image.fromarray(scene.mask).save(tmp / "masks" / f"{split}_{i:04d}.png")
    (tmp / "classes.txt").write_text("\n".join(("background",) + CLASSES) + "\n")


def _write_det(tmp: Path, final: Path, splits: dict[str, int], size: int) -> None:
    for split, n in splits.items():
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "labels" / split).mkdir(parents=True)
        for i in range(n):
            scene = render(scene_seed(split, i), size)
            Image.fromarray(scene.image).save(tmp / "images" / split / f"{split}_{i:04d}.png")
            lines = []
            for (x0, y0, x1, y1), cls in zip(scene.boxes, scene.classes):
                lines.append(
                    f"{cls} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} "
                    f"{(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}"
                )
            (tmp / "labels" / split / f"{split}_{i:04d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(CLASSES))
    yaml_splits = "\n".join(f"{split}: images/{split}" for split in splits)
    (tmp / "data.yaml").write_text(f"path: {final.resolve()}\n{yaml_splits}\nnames:\n{names}\n")


def object_crops(split: str, per_class: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """The shapes world as a classification task: one square crop per labelled object.

    Each crop is centred on an object's visible box with a 30% margin, moved inside the scene
    where the object touches the border, and resized to `size`; its label is that object's
    class. Neighbours and clutter stay in the crop, as they do in a real detector's crops.
    Scenes of `split` are taken in order until every class has `per_class` crops, so the set is
    balanced and fixed by the split alone. Returns (N x size x size x 3 uint8, N int64).
    """
    images: list[np.ndarray] = []
    labels: list[int] = []
    counts = [0] * len(CLASSES)
    index = 0
    while min(counts) < per_class:
        scene = render(scene_seed(split, index), 160)
        index += 1
        full = Image.fromarray(scene.image)
        for (x0, y0, x1, y1), cls in zip(scene.boxes, scene.classes):
            side = max(x1 - x0, y1 - y0)
            if counts[cls] >= per_class or side < 20:  # too small to tell a circle from a square
                continue
            side = min(160.0, 1.3 * side)
            left = float(np.clip((x0 + x1 - side) / 2, 0, 160 - side))
            top = float(np.clip((y0 + y1 - side) / 2, 0, 160 - side))
            crop = full.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
            images.append(np.asarray(crop, dtype=np.uint8))
            labels.append(int(cls))
            counts[cls] += 1
    return np.stack(images), np.asarray(labels, dtype=np.int64)
