"""An offline labelled set for probing encoders: shapes pasted onto crops of real photographs.

Why it exists: the embedded demo set labels each image by its source photo, which colour and texture
statistics alone nearly solve, so a probe on it cannot tell a pre-trained encoder from a random one. Here
the label is the *shape* (circle, square, triangle, star, cross, ring, arrow, crescent) and everything raw
pixels see easily is random: the background is a random crop of a real photo, and the shape's size,
position, rotation, aspect and colour are drawn at random. What is left to predict the label from is the
outline; a linear classifier on raw pixels, and k-NN or linear probes on a random-init ViT, score near
chance (1/8).

:class:`ShapeSettings` makes it harder: textures cut from another photo instead of flat colours,
distracting strokes and blobs, several small instances per image, less zoomed-in (busier) backgrounds.
The defaults are the setting the quality benchmark (``benchmarks/quality.py``) measures; the harder ones
are beyond what a few CPU minutes of pre-training learn. It belongs to the benchmark, not to the library:
``benchmarks/quality.py`` imports it as ``shapes`` (its own folder is on ``sys.path``), the tests as
``benchmarks.shapes`` (the repository root is on pytest's ``pythonpath``).

Honest validation: ``split="val"`` takes its backgrounds and textures from photos that ``split="train"``
never uses (:data:`VAL_PHOTOS`), so a probe (or a pre-training run on the train split) is scored on
scenes it has never seen. Everything is drawn from ``numpy.random.default_rng([seed, split, index])``:
the same arguments give bit-identical images on every machine, and classes are balanced by construction
(sample ``i`` has label ``i % len(SHAPES)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mae_trainer.data.demo import PHOTOS, load_photo

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "arrow", "crescent")

# Held-out photos: backgrounds and textures of the validation split only (colour and grey, smooth and busy).
VAL_PHOTOS = ("coffee.png", "motorcycle_left.png", "coins.png", "gravel.png")
TRAIN_PHOTOS = tuple(name for name in PHOTOS if name not in VAL_PHOTOS)
SPLITS = {"train": (0, TRAIN_PHOTOS), "val": (1, VAL_PHOTOS)}

SUPERSAMPLE = 4  # outlines are drawn at 4× and box-filtered down, so edges are anti-aliased


@dataclass(frozen=True)
class ShapeSettings:
    """How hard the set is. Sizes are fractions of the image side (the shape's outer diameter).

    ``max_rotation``: degrees either way (180: any rotation). ``max_aspect``: stretch along the shape's
    own axis. ``texture_probability``: chance that a shape is filled with a crop of another photo instead
    of a flat colour (the outline alone then carries the label). ``distractors``: up to this many random
    strokes and blobs drawn behind the shapes. ``min/max_background_area``: the background crop's share
    of its photo (small = zoomed in, smooth; large = busy). ``min/max_count``: instances per image.
    """

    size: int = 64
    min_scale: float = 0.55
    max_scale: float = 0.95
    max_aspect: float = 1.2
    max_rotation: float = 180.0
    texture_probability: float = 0.0
    distractors: int = 0
    min_background_area: float = 0.005
    max_background_area: float = 0.03
    min_count: int = 1
    max_count: int = 1


def _regular(count: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(count) / count
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular(points, 1.0, -np.pi / 2)
    between = _regular(points, inner, -np.pi / 2 + np.pi / points)
    return np.stack([outer, between], axis=1).reshape(-1, 2)


def _cross(half_width: float = 0.3) -> np.ndarray:
    w = half_width
    return np.array(
        [
            (w, 1),
            (w, w),
            (1, w),
            (1, -w),
            (w, -w),
            (w, -1),
            (-w, -1),
            (-w, -w),
            (-1, -w),
            (-1, w),
            (-w, w),
            (-w, 1),
        ],
        dtype=np.float64,
    )


_ARROW = np.array([(-1, -0.3), (0.15, -0.3), (0.15, -0.75), (1, 0), (0.15, 0.75), (0.15, 0.3), (-1, 0.3)])


# Each shape: polygons in unit coordinates (outer radius 1), as (points, fill) drawn in order (fill 0 erases).
def _outline(kind: str) -> list[tuple[np.ndarray, int]]:
    disk = _regular(96)
    if kind == "circle":
        return [(disk, 1)]
    if kind == "square":
        return [(_regular(4, 1.0, np.pi / 4), 1)]
    if kind == "triangle":
        return [(_regular(3, 1.0, -np.pi / 2), 1)]
    if kind == "star":
        return [(_star(), 1)]
    if kind == "cross":
        return [(_cross(), 1)]
    if kind == "ring":
        return [(disk, 1), (disk * 0.55, 0)]
    if kind == "arrow":
        return [(_ARROW, 1)]
    if kind == "crescent":
        return [(disk, 1), (disk * 0.85 + np.array([0.45, 0.0]), 0)]
    raise ValueError(f"unknown shape {kind!r}; choose one of {', '.join(SHAPES)}")


def shape_alpha(
    kind: str, size: int, center: tuple[float, float], radius: float, angle: float, aspect: float = 1.0
) -> np.ndarray:
    """Anti-aliased coverage ``(size, size)`` in [0, 1] of ``kind`` with outer radius ``radius`` pixels,
    rotated by ``angle`` radians and stretched by ``aspect`` along its own x axis."""
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    stretch = np.array([np.sqrt(aspect), 1 / np.sqrt(aspect)])
    for points, fill in _outline(kind):
        xy = (points * stretch) @ rotation.T * radius + np.asarray(center)
        draw.polygon([tuple(p) for p in xy * SUPERSAMPLE], fill=255 * fill)
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


@cache
def _photo_array(name: str) -> np.ndarray:
    return np.asarray(load_photo(name))


def _photo_crop(
    rng: np.random.Generator, photos: Sequence[str], size: int, min_area: float = 0.05, max_area: float = 0.5
) -> tuple[np.ndarray, str]:
    """A random square-ish crop of one of ``photos`` resized to ``size``×``size`` (uint8 HWC)."""
    name = photos[int(rng.integers(len(photos)))]
    photo = _photo_array(name)
    height, width = photo.shape[:2]
    side = int(np.sqrt(rng.uniform(min_area, max_area) * width * height))
    side = max(8, min(side, width, height))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    crop = Image.fromarray(photo[top : top + side, left : left + side])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(crop.resize((size, size), Image.BICUBIC)), name


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _clutter(image: Image.Image, rng: np.random.Generator, count: int) -> None:
    """Up to ``count`` random strokes and blobs, so that edges and colour blobs alone do not mean 'shape'."""
    draw = ImageDraw.Draw(image)
    size = image.width
    for _ in range(int(rng.integers(0, count + 1))):
        if rng.random() < 0.5:
            ends = rng.uniform(-0.1, 1.1, size=4) * size
            draw.line(
                list(ends), fill=_random_colour(rng), width=int(rng.integers(1, max(2, size // 24) + 1))
            )
        else:
            r = rng.uniform(0.04, 0.12) * size
            cx, cy = rng.uniform(0, size, size=2)
            draw.ellipse([cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r], fill=_random_colour(rng))


def render_sample(
    label: int, rng: np.random.Generator, photos: Sequence[str], settings: ShapeSettings
) -> Image.Image:
    """One image with ``min_count``–``max_count`` instances of ``SHAPES[label]``, drawn from ``rng``."""
    size = settings.size
    background, source = _photo_crop(
        rng, photos, size, settings.min_background_area, settings.max_background_area
    )
    canvas = Image.fromarray(background)
    _clutter(canvas, rng, settings.distractors)
    out = np.asarray(canvas, dtype=np.float32)
    for _ in range(int(rng.integers(settings.min_count, settings.max_count + 1))):
        radius = rng.uniform(settings.min_scale, settings.max_scale) * size / 2
        aspect = float(np.exp(rng.uniform(-np.log(settings.max_aspect), np.log(settings.max_aspect))))
        margin = radius * 0.8  # the shape may touch the border, but most of it stays inside
        center = tuple(rng.uniform(margin, size - margin, size=2))
        alpha = shape_alpha(
            SHAPES[label],
            size,
            center,
            radius,
            np.radians(rng.uniform(-settings.max_rotation, settings.max_rotation)),
            aspect,
        )[..., None]
        if rng.random() < settings.texture_probability:
            others = [name for name in photos if name != source] or list(photos)
            fill = _photo_crop(rng, others, size)[0].astype(np.float32)
        else:
            fill = np.asarray(_random_colour(rng), dtype=np.float32)
        out = out * (1 - alpha) + fill * alpha
    return Image.fromarray(np.clip(out.round(), 0, 255).astype(np.uint8))


def shape_samples(
    count: int, split: str = "train", seed: int = 0, settings: ShapeSettings | None = None
) -> tuple[list[Image.Image], list[int]]:
    """``count`` RGB images and their labels (``i % len(SHAPES)``: balanced). ``split`` picks the photos
    the backgrounds and textures come from (:data:`TRAIN_PHOTOS` or the held-out :data:`VAL_PHOTOS`)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    settings = settings or ShapeSettings()
    split_id, photos = SPLITS[split]
    images, labels = [], []
    for index in range(count):
        label = index % len(SHAPES)
        rng = np.random.default_rng([seed, split_id, index])
        images.append(render_sample(label, rng, photos, settings))
        labels.append(label)
    return images, labels


def photo_crops(
    count: int,
    split: str = "val",
    seed: int = 0,
    size: int = 64,
    min_area: float = 0.05,
    max_area: float = 0.5,
) -> list[Image.Image]:
    """Plain random crops (``min_area``–``max_area`` of the photo; no shape, no clutter) of ``split``'s
    photos: real images for measuring reconstruction on photos that a model pre-trained on the other split
    has never seen. Pass the set's background areas to match the scale the model was trained at."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    split_id, photos = SPLITS[split]
    crops = []
    for index in range(count):
        rng = np.random.default_rng([seed, split_id, index, 1])  # a stream apart from shape_samples'
        crops.append(Image.fromarray(_photo_crop(rng, photos, size, min_area, max_area)[0]))
    return crops


def shapes_source(images: Sequence[Image.Image], labels: Sequence[int], name: str = "shapes"):
    """The images as an in-memory source for :func:`mae_trainer.data.write.write_beton`."""
    from mae_trainer.data.sources import ArraySource

    return ArraySource(name, list(SHAPES), [np.asarray(image) for image in images], list(labels))


def write_shapes_folder(root: Path, images: Sequence[Image.Image], labels: Sequence[int]) -> Path:
    """Write an ImageFolder tree ``root/<shape>/<index>.png`` (lossless) and return ``root``."""
    for index, (image, label) in enumerate(zip(images, labels)):
        directory = root / SHAPES[label]
        directory.mkdir(parents=True, exist_ok=True)
        image.save(directory / f"{index:05d}.png")
    return root


def write_shapes_beton(
    path: Path,
    count: int,
    split: str = "train",
    seed: int = 0,
    settings: ShapeSettings | None = None,
    overwrite: bool = False,
) -> dict:
    """Generate ``count`` samples of ``split`` and write them, with labels, to ``path`` (raw pixels, so no
    JPEG artefacts blur the outlines). Returns :func:`write_beton`'s summary, with the settings added."""
    from mae_trainer.data.write import WriteSettings, write_beton

    settings = settings or ShapeSettings()
    images, labels = shape_samples(count, split, seed, settings)
    write = WriteSettings(max_resolution=max(16, settings.size), write_mode="raw", num_workers=1)
    summary = write_beton(shapes_source(images, labels, f"shapes-{split}"), path, write, overwrite=overwrite)
    return {**summary, "shapes": {"split": split, "seed": seed, **asdict(settings)}}
