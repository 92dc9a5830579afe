"""Labelled splits for ``finetune`` and ``probe``: one way to open a ``.beton`` with a ``label`` field, an
ImageFolder tree (``DIR/<class>/<image>``) or a Hugging Face dataset saved with ``save_to_disk``, with the
labels and class names read and checked up front (no image decoded), so bad input fails before any model
is loaded.

Two decode paths read an opened split, on purpose:

- fine-tuning is compute-bound (every patch goes through the encoder, with RandAugment), so images are read
  one by one as PIL images (a ``.beton`` by random access through FFCV's reader) and go through
  torchvision/timm transforms in ``DataLoader`` workers (:class:`LabelledImages`);
- the probe only needs centre crops (:func:`centre_crop_batches`): FFCV's centre-crop loader in many threads
  for a ``.beton``, the torchvision equivalent in ``DataLoader`` workers for the others.

Bad input raises :class:`~mae_trainer.errors.InputError`, the message starting with the file.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from ..errors import InputError
from .sources import HFDatasetSource, ImageSource, image_folder_source, to_rgb

RANDAUGMENT = "rand-m9-mstd0.5-inc1"  # the reference MAE fine-tune's RandAugment policy


class BetonSource(ImageSource):
    """Random access to the images and labels of an FFCV ``.beton`` (as written by ``write-dataset``)."""

    def __init__(self, path: Path):
        from ffcv.reader import Reader

        from ..data.beton import check_beton
        from .write import read_summary

        check_beton(path, labels=True)
        reader = Reader(str(path))
        names = list(reader.field_names)
        meta = reader.metadata
        self.path = path
        self.image_meta = meta[f"f{names.index('image')}"]
        labels = meta[f"f{names.index('label')}"].astype(np.int64).tolist()
        table = reader.alloc_table
        self.sizes = dict(zip(table["ptr"].tolist(), table["size"].tolist()))
        self.data = np.memmap(path, dtype=np.uint8, mode="r")
        summary = read_summary(path) or {}
        classes = list(summary.get("classes") or [str(i) for i in range(max(labels) + 1)])
        super().__init__(str(path), classes, labels)

    def open(self, item: int) -> Image.Image:
        mode, width, height, ptr = (self.image_meta[item][k] for k in ("mode", "width", "height", "data_ptr"))
        ptr = int(ptr)
        if int(mode) == 0:  # JPEG bytes
            return Image.open(io.BytesIO(self.data[ptr : ptr + self.sizes[ptr]].tobytes()))
        pixels = np.asarray(self.data[ptr : ptr + int(height) * int(width) * 3]).reshape(height, width, 3)
        return Image.fromarray(pixels)


def open_labelled(
    path: Path,
    *,
    split: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    train: ImageSource | None = None,
) -> ImageSource:
    """Open the labelled split at ``path``: a ``.beton`` file, a ``save_to_disk`` folder (it holds
    ``dataset_info.json`` or ``dataset_dict.json``; ``split`` picks one of a ``DatasetDict``'s splits, and
    may be left out when there is one) or an ImageFolder tree. ``labels``, ``classes`` and ``open(item)``
    are ready; every sample has a label. A held-out split opened with its ``train`` split must number the
    classes as ``train`` does: the same classes, or their first ones (a small split may lack the last)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_file():
        source = BetonSource(path)
    elif (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        source = _saved_dataset(path, split, image_column, label_column)
    else:
        source = _image_folder(path)
    if not len(source):
        raise InputError(f"{path}: holds no samples")
    unlabelled = sum(label < 0 for label in source.labels)
    if unlabelled:  # datasets marks a missing label -1
        raise InputError(f"{path}: {unlabelled} of {len(source.labels)} samples have no label (label -1)")
    if train is not None and list(train.classes[: len(source.classes)]) != list(source.classes):
        raise InputError(f"{path}: classes {source.classes} differ from {train.name}'s {train.classes}")
    return source


def _image_folder(root: Path) -> ImageSource:
    if not any(p.is_dir() for p in root.iterdir()):
        raise InputError(f"{root}: no class sub-directories (expected {root}/<class>/<image>)")
    return image_folder_source(root)


def _saved_dataset(path: Path, split: str | None, image_column: str, label_column: str) -> ImageSource:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises many types for a wrong folder
        raise InputError(f"{path}: not a saved dataset ({type(err).__name__}: {err})") from None
    name = str(path)
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split is None:
            raise InputError(f"{path}: holds the splits {', '.join(splits)}; open one ({path / splits[0]})")
        if split not in loaded:
            raise InputError(f"{path}: has no split {split!r} (splits: {', '.join(splits)})")
        loaded, name = loaded[split], f"{path}:{split}"
    for column in (image_column, label_column):
        if column not in loaded.column_names:
            raise InputError(f"{name}: has no column {column!r} (columns: {', '.join(loaded.column_names)})")
    return HFDatasetSource(name, loaded, image_column, label_column)


class LabelledImages(torch.utils.data.Dataset):
    """``(transform(RGB PIL image), label)`` for ``indices`` of ``source`` (positions in its order)."""

    def __init__(self, source: ImageSource, indices: Iterable[int], transform):
        self.source, self.indices, self.transform = source, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        item = self.source.order[self.indices[index]]
        with self.source.open(item) as image:
            rgb = Image.fromarray(to_rgb(image))
        return self.transform(rgb), self.source.labels[item]


def centre_crop_batches(
    source: ImageSource, resolution: int, batch_size: int, num_workers: int, crop_ratio: float = 1.0
) -> Iterable:
    """``(uint8 images (B, 3, R, R), labels)`` in the source's order: the centre ``crop_ratio`` of the short
    side, resized to ``resolution``. A ``.beton`` goes through FFCV's centre-crop decoder in
    ``num_workers`` threads (at least one); the others through the torchvision equivalent in
    ``num_workers`` ``DataLoader`` processes."""
    if isinstance(source, BetonSource):
        from ..data.eval_loader import eval_loader

        return eval_loader(
            source.path,
            batch_size,
            resolution,
            num_workers=max(1, num_workers),
            crop_ratio=crop_ratio,
            indices=source.order,
        )
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(max(resolution, round(resolution / crop_ratio)), antialias=True),
            v2.CenterCrop(resolution),
        ]
    )
    images = LabelledImages(source, range(len(source)), transform)
    return torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=num_workers)


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
    transform = create_transform(
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
    _posterize_to_zero_bits(transform)
    return transform


def _posterize_with_zero_bits(image: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """Posterize that keeps 0 bits as Pillow < 10 did (a black image) where Pillow now raises: timm's
    "increasing" policy asks for 0 bits at the top magnitude (10, reached with the magnitude noise)."""
    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits_to_keep)


def _posterize_to_zero_bits(transform) -> None:
    """Give the posterize ops of ``transform``'s RandAugment :func:`_posterize_with_zero_bits`."""
    from timm.data import auto_augment

    for step in getattr(transform, "transforms", []):
        for op in getattr(step, "ops", []):
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = _posterize_with_zero_bits


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
