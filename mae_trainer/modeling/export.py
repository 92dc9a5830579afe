"""``mae-trainer export``: write our weights in formats that plain transformers or timm load, and import a
transformers ``vit_mae`` folder. Outputs appear only when complete (written beside, then renamed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import UsageError


def _check_paths(src: Path, dst: Path, overwrite: bool) -> None:
    if not (src / "config.json").is_file():
        raise UsageError(f"SRC {src}: no config.json (expected a save_pretrained folder)")
    if dst.exists() and not overwrite:
        raise UsageError(f"DST {dst}: already exists (pass --overwrite to replace it)")


def _publish_dir(build, dst: Path) -> None:
    partial = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    build(partial)
    if dst.exists():
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    partial.rename(dst)


def _load_ours(src: Path):
    from . import MAEForPreTraining

    model_type = json.loads((src / "config.json").read_text()).get("model_type")
    if model_type != "mae_trainer_mae":
        raise UsageError(f"SRC {src}: model_type {model_type!r} is not an mae_trainer model")
    return MAEForPreTraining.from_pretrained(src)


def export(to: str, src: Path, dst: Path, overwrite: bool = False) -> str:
    """Convert ``src`` into ``dst``; returns a one-line description of what was written."""
    _check_paths(src, dst, overwrite)
    if to == "vit_mae":
        from transformers import ViTImageProcessor

        from .convert import to_vit_mae

        model = _load_ours(src)
        size = model.config.image_size
        processor = ViTImageProcessor(
            image_mean=model.config.image_mean,
            image_std=model.config.image_std,
            size={"height": size, "width": size},
        )

        def build(folder: Path) -> None:
            to_vit_mae(model).save_pretrained(folder)
            processor.save_pretrained(folder)

        _publish_dir(build, dst)
        return f"wrote {dst}: loads as ViTMAEForPreTraining, ViTModel or ViTForImageClassification"
    if to == "timm":
        from safetensors.torch import save_file

        from .convert import timm_model_name, to_timm_state_dict

        if dst.suffix != ".safetensors":
            raise UsageError(f"DST {dst}: the timm export is a file ending in .safetensors")
        model = _load_ours(src)
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
    if to == "mae":
        from .convert import from_vit_mae

        model_type = json.loads((src / "config.json").read_text()).get("model_type")
        if model_type != "vit_mae":
            raise UsageError(f"SRC {src}: model_type {model_type!r}; --to mae imports a vit_mae folder")
        model = from_vit_mae(src)
        _publish_dir(model.save_pretrained, dst)
        return f"wrote {dst}: MAEForPreTraining.from_pretrained loads it"
    raise UsageError(f"--to {to!r}: choose vit_mae, timm or mae")
