"""Labelled images for fine-tuning: an ImageFolder tree, a Hugging Face dataset or a ``.beton``, read as
PIL images and fed through torchvision/timm transforms in ``DataLoader`` workers.

Fine-tuning is compute-bound (every patch goes through the encoder, with RandAugment), so the per-image
PIL path that timm's augmentations expect is the right one here; a ``.beton`` is read sample by sample
(random access through FFCV's reader) instead of through FFCV's batch pipeline.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from ..data.write import ImageSource, hf_source, image_folder_source, to_rgb
from ..errors import InputError, UsageError

RANDAUGMENT = "rand-m9-mstd0.5-inc1"  # the reference MAE fine-tune's RandAugment policy


class BetonSource(ImageSource):
    """Random access to the images and labels of an FFCV ``.beton`` (as written by ``write-dataset``)."""

    def __init__(self, path: Path, flag: str):
        from ffcv.reader import Reader

        from ..data.beton import check_beton
        from ..data.write import read_summary

        try:
            check_beton(path)
        except InputError as err:
            raise UsageError(f"{flag} {err}") from None
        reader = Reader(str(path))
        if "label" not in reader.handlers:
            raise UsageError(f"{flag} {path}: has no 'label' field (write it from a labelled source)")
        names = list(reader.handlers)
        meta = reader.metadata
        self.image_meta = meta[f"f{names.index('image')}"]
        labels = meta[f"f{names.index('label')}"].astype(int).tolist()
        table = reader.alloc_table
        self.sizes = dict(zip(table["ptr"].tolist(), table["size"].tolist()))
        self.data = np.memmap(path, dtype=np.uint8, mode="r")
        summary = read_summary(path) or {}
        count = max(labels) + 1
        classes = summary.get("classes") or [str(i) for i in range(count)]
        super().__init__(str(path), list(classes)[: max(count, len(classes))], labels)

    def open(self, item: int) -> Image.Image:
        mode, width, height, ptr = (self.image_meta[item][k] for k in ("mode", "width", "height", "data_ptr"))
        ptr = int(ptr)
        if int(mode) == 0:  # JPEG bytes
            return Image.open(io.BytesIO(self.data[ptr : ptr + self.sizes[ptr]].tobytes()))
        pixels = np.asarray(self.data[ptr : ptr + int(height) * int(width) * 3]).reshape(height, width, 3)
        return Image.fromarray(pixels)

    def drop_unreadable(self, num_workers: int) -> None:
        return  # written by write-dataset, which probed every image


def open_labelled(
    spec: Path, flag: str, split: str = "train", image_column: str = "image", label_column: str = "label"
) -> ImageSource:
    """A ``.beton`` file, a ``save_to_disk`` folder (it holds ``dataset_info.json`` or
    ``dataset_dict.json``) or an ImageFolder tree."""
    if not spec.exists():
        raise UsageError(f"{flag} {spec}: no such file or directory")
    if spec.is_file():
        return BetonSource(spec, flag)
    if (spec / "dataset_info.json").exists() or (spec / "dataset_dict.json").exists():
        try:
            return hf_source(spec, "hf-disk", split, image_column, label_column)
        except UsageError as err:
            raise UsageError(f"{flag}: {err}") from None
    try:
        return image_folder_source(spec)
    except UsageError as err:
        raise UsageError(f"{flag}: {str(err).replace('--source ', '')}") from None


class LabelledImages(torch.utils.data.Dataset):
    """``(transformed image, label)`` for ``indices`` of ``source``."""

    def __init__(self, source: ImageSource, indices: list[int], transform):
        self.source, self.indices, self.transform = source, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        item = self.source.order[self.indices[index]]
        with self.source.open(item) as image:
            rgb = Image.fromarray(to_rgb(image))
        return self.transform(rgb), self.source.labels[item]


class ThreeAugment:
    """DeiT III's "3-Augment" (Touvron et al., 2022): one of grayscale, solarization or Gaussian blur, chosen
    uniformly per image. timm has no implementation; this follows the paper's description."""

    def __call__(self, image: Image.Image) -> Image.Image:
        choice = int(torch.randint(3, ()).item())
        if choice == 0:
            return ImageOps.grayscale(image).convert("RGB")
        if choice == 1:
            return ImageOps.solarize(image, threshold=128)
        radius = float(torch.empty(()).uniform_(0.1, 2.0))
        return image.filter(ImageFilter.GaussianBlur(radius=radius))


def train_transform(resolution: int, augment: str, mean, std, reprob: float):
    """RandomResizedCrop + flip, then ``augment``: ``randaug`` (timm's RandAugment, the MAE fine-tune),
    ``three`` (ThreeAugment + colour jitter 0.3, DeiT III) or ``none``; random erasing ``reprob``."""
    from timm.data import create_transform
    from torchvision import transforms

    if augment == "three":
        from timm.data.random_erasing import RandomErasing

        steps = [
            transforms.RandomResizedCrop(resolution, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(),
            ThreeAugment(),
            transforms.ColorJitter(0.3, 0.3, 0.3),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
        if reprob > 0:
            steps.append(RandomErasing(reprob, mode="pixel", device="cpu"))
        return transforms.Compose(steps)
    return create_transform(
        input_size=resolution,
        is_training=True,
        auto_augment=RANDAUGMENT if augment == "randaug" else None,
        color_jitter=None,
        interpolation="bicubic",
        re_prob=reprob,
        re_mode="pixel",
        re_count=1,
        mean=tuple(mean),
        std=tuple(std),
    )


def eval_transform(resolution: int, mean, std):
    """Resize the short side to ``resolution / 0.875`` (bicubic), centre crop ``resolution``."""
    from timm.data import create_transform

    return create_transform(
        input_size=resolution,
        is_training=False,
        interpolation="bicubic",
        crop_pct=0.875,
        mean=tuple(mean),
        std=tuple(std),
    )
