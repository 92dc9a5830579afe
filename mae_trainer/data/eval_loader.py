"""The evaluation loader: every sample once, in file order, centre-cropped (reconstruction grids, probes).

The training loader is :class:`mae_trainer.data.train_loader.ProgressiveLoader`."""

from __future__ import annotations

from pathlib import Path


def eval_loader(
    path: Path,
    batch_size: int,
    resolution: int,
    *,
    num_workers: int = 1,
    crop_ratio: float = 1.0,
    indices: list[int] | None = None,
):
    """Sequential order, centre crop (``crop_ratio`` of the short side) resized to ``resolution``."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Squeeze, ToTensor, ToTorchImage

    pipelines = {
        "image": [
            CenterCropRGBImageDecoder((resolution, resolution), ratio=crop_ratio),
            ToTensor(),
            ToTorchImage(channels_last=False),
        ],
        "label": [IntDecoder(), ToTensor(), Squeeze(1)],
    }
    return Loader(
        str(path),
        batch_size=batch_size,
        num_workers=num_workers,
        order=OrderOption.SEQUENTIAL,
        drop_last=False,
        pipelines=pipelines,
        indices=indices,
    )
