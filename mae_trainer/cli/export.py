"""``mae-trainer export --to {vit_mae,timm,mae} SRC DST``: write a saved model in a format that plain
transformers or timm load, or import a transformers ``vit_mae`` folder into ours. SRC is read with the one
loader (``modeling/loading.py``): our folder, a ``vit_mae`` folder, or a Hub repo id of either.

DST is a ``save_pretrained`` folder (``vit_mae``, ``mae``) or one ``.safetensors`` file (``timm``). Missing
parent folders are created, as ``write-dataset --output`` and ``reconstruct --output`` create theirs: the
path names where the user wants the output. An existing DST needs ``--overwrite``, which replaces only the
files the export writes: a folder must be empty or hold a saved MAE (a previous export, a pre-training
output), every other file in it stays. Outputs appear only once complete (``mae_trainer.publish``); a
refusal writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..errors import InputError, UsageError
from .flags import flagged

TARGETS = ("vit_mae", "timm", "mae")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--to",
        required=True,
        choices=TARGETS,
        help="vit_mae: transformers folder; timm: safetensors state dict; mae: our format",
    )
    parser.add_argument("src", help="saved model: folder or Hub repo id, ours or vit_mae")
    parser.add_argument(
        "dst",
        type=Path,
        help="output folder (vit_mae, mae) or .safetensors file (timm); missing parent folders are created",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files an earlier export wrote in DST (other files there are kept)",
    )


def holds_saved_model(folder: Path) -> bool:
    """``folder`` has the ``config.json`` of a saved MAE (ours or ``vit_mae``): an earlier export."""
    from ..modeling.loading import OURS, VIT_MAE

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") in (OURS, VIT_MAE)


def check_destination(to: str, dst: Path, overwrite: bool) -> None:
    """Refuse, before SRC is read, a DST the export may not or cannot write (``UsageError`` naming DST)."""
    if to not in TARGETS:
        raise UsageError(f"--to {to!r}: choose {', '.join(TARGETS)}")
    if to == "timm":
        if dst.suffix != ".safetensors":
            raise UsageError(f"DST {dst}: the timm export is a file ending in .safetensors")
        if os.path.isdir(dst):
            raise UsageError(f"DST {dst}: is a folder (the timm export is one .safetensors file)")
        folder = dst.parent
    else:
        if os.path.lexists(dst) and not os.path.isdir(dst):
            raise UsageError(f"DST {dst}: exists and is not a folder (the {to} export is a folder)")
        if os.path.isdir(dst) and overwrite and any(dst.iterdir()) and not holds_saved_model(dst):
            raise UsageError(
                f"DST {dst}: holds files but no saved model; --overwrite replaces an earlier export only "
                "(choose a new or empty folder)"
            )
        folder = dst
    if os.path.lexists(dst) and not overwrite:
        raise UsageError(f"DST {dst}: already exists (pass --overwrite to replace it)")
    try:
        from ..publish import check_output_dir

        check_output_dir(folder)
    except InputError as err:
        raise UsageError(f"DST {err}") from None


def export(to: str, src: str, dst: Path, overwrite: bool = False) -> str:
    """Convert ``src`` into ``dst``; returns a one-line description of what was written."""
    from ..modeling import MAEForPreTraining
    from ..publish import publish_folder, publishing

    dst = Path(dst)
    check_destination(to, dst, overwrite)
    with flagged("SRC"):
        model = MAEForPreTraining.from_pretrained(src)  # all checks of SRC
    try:
        if to == "vit_mae":
            from ..modeling.convert import write_vit_mae

            publish_folder(dst, lambda folder: write_vit_mae(model, folder))
            return f"wrote {dst}: loads as ViTMAEForPreTraining, ViTModel or ViTForImageClassification"
        if to == "timm":
            from safetensors.torch import save_file

            from ..modeling.convert import timm_model_name, to_timm_state_dict

            name = timm_model_name(model.config)
            with publishing(dst) as partial:
                save_file(to_timm_state_dict(model), str(partial), metadata={"timm_model": name or "custom"})
            hint = (
                f"timm.create_model({name!r}, num_classes=0)"
                if name
                else "a timm VisionTransformer of this shape"
            )
            return f"wrote {dst}: load into {hint} with strict=True"
        publish_folder(dst, model.save_pretrained)
        return f"wrote {dst}: MAEForPreTraining.from_pretrained loads it"
    except OSError as err:  # a disk that filled up, a folder that went away
        raise UsageError(f"DST {dst}: cannot write ({err.strerror or err}: {err.filename})") from None


def run(args: argparse.Namespace) -> None:
    print(export(args.to, args.src, args.dst, overwrite=args.overwrite))
