"""``mae-trainer export``: write our weights in formats that plain transformers or timm load, and import a
transformers ``vit_mae`` folder. SRC may be our folder, a ``vit_mae`` folder or a Hub id of either (read with
the one loader, ``loading.py``). Outputs appear only when complete (written beside, then renamed)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from ..errors import UsageError

# The evaluation resize of mae_trainer.downstream.data.eval_transform (timm's, crop_pct 0.875): the short
# side to floor(image_size / 0.875) with bicubic resampling, then the centre image_size square.
EVAL_CROP_PCT = 0.875


def image_processor(config):
    """A transformers image processor that prepares images the way our evaluation does: shortest edge to
    ``floor(image_size / 0.875)`` (bicubic), centre crop ``image_size``, rescale to 0..1, the model's mean
    and std. ``BitImageProcessor`` is transformers' processor with exactly these steps (``ViTImageProcessor``
    has no crop: it squashes the whole image to a square)."""
    from PIL import Image
    from transformers import BitImageProcessor

    size = config.image_size
    return BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": math.floor(size / EVAL_CROP_PCT)},
        resample=Image.BICUBIC,
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        do_convert_rgb=True,
    )


def write_vit_mae(model, folder: Path) -> None:
    """``model`` (our ``MAEForPreTraining``) as a transformers ``vit_mae`` folder with its processor."""
    from .convert import to_vit_mae

    to_vit_mae(model).save_pretrained(folder)
    image_processor(model.config).save_pretrained(folder)


def _check_dst(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not overwrite:
        raise UsageError(f"DST {dst}: already exists (pass --overwrite to replace it)")


def _publish_dir(build, dst: Path) -> None:
    partial = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    build(partial)
    if dst.exists():
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    partial.rename(dst)


def export(to: str, src: Path, dst: Path, overwrite: bool = False) -> str:
    """Convert ``src`` into ``dst``; returns a one-line description of what was written."""
    if to not in ("vit_mae", "timm", "mae"):
        raise UsageError(f"--to {to!r}: choose vit_mae, timm or mae")
    _check_dst(dst, overwrite)
    if to == "timm" and dst.suffix != ".safetensors":
        raise UsageError(f"DST {dst}: the timm export is a file ending in .safetensors")
    from . import MAEForPreTraining
    from .loading import for_flag

    model = for_flag("SRC", MAEForPreTraining.from_pretrained, src)  # all checks of SRC
    if to == "vit_mae":
        _publish_dir(lambda folder: write_vit_mae(model, folder), dst)
        return f"wrote {dst}: loads as ViTMAEForPreTraining, ViTModel or ViTForImageClassification"
    if to == "timm":
        from safetensors.torch import save_file

        from .convert import timm_model_name, to_timm_state_dict

        name = timm_model_name(model.config)
        partial = dst.with_name(f".{dst.name}.partial")
        save_file(to_timm_state_dict(model), str(partial), metadata={"timm_model": name or "custom"})
        partial.replace(dst)
        hint = (
            f"timm.create_model({name!r}, num_classes=0)"
            if name
            else "a timm VisionTransformer of this shape"
        )
        return f"wrote {dst}: load into {hint} with strict=True"
    _publish_dir(model.save_pretrained, dst)
    return f"wrote {dst}: MAEForPreTraining.from_pretrained loads it"
