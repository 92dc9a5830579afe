"""The embedded demo set: real photos that ship inside scikit-image's wheel, cut into random crops.

Nothing is downloaded, and the set is the same on every machine (fixed seed), so ``make demo`` and the
tests run offline. Each source photo is one class, which gives later probes a label to predict.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

# Real photographs in skimage/data (colour first; the grayscale ones are converted to RGB).
PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "retina.jpg",
    "camera.png",
    "coins.png",
    "moon.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "text.png",
    "page.png",
)


def photo_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def load_photo(name: str) -> Image.Image:
    """One of :data:`PHOTOS` as an RGB PIL image."""
    path = photo_dir() / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: scikit-image's bundled photo is missing (reinstall scikit-image)")
    with Image.open(path) as image:
        return image.convert("RGB")


def demo_samples(
    per_photo: int = 32, min_side: int = 112, max_side: int = 192, seed: int = 0
) -> Iterator[tuple[Image.Image, int]]:
    """Yield ``(image, label)``: ``per_photo`` random crops (10–60 % of the area, aspect 3/4–4/3) of each
    photo, resized so the short side is in ``[min_side, max_side]``. Label = index of the photo."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(PHOTOS):
        photo = load_photo(name)
        width, height = photo.size
        for _ in range(per_photo):
            area = width * height * rng.uniform(0.1, 0.6)
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw = int(min(width, round(np.sqrt(area * aspect))))
            ch = int(min(height, round(np.sqrt(area / aspect))))
            left, top = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
            crop = photo.crop((left, top, left + cw, top + ch))
            short = int(rng.integers(min_side, max_side + 1))
            scale = short / min(cw, ch)
            yield crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.BICUBIC), label


def class_names() -> list[str]:
    return [name.rsplit(".", 1)[0] for name in PHOTOS]
