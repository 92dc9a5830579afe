"""``mae-trainer`` command line: ``write-dataset``, ``pretrain``, ``reconstruct``, ``export``, ``push``.

``accelerate launch -m mae_trainer pretrain ...`` runs the same entry point under the launcher.
Bad input ends with one line ``mae-trainer: error: ...`` naming the flag or file, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError, TrainingError, UsageError, is_lost_peer


def _write_dataset(args: argparse.Namespace) -> None:
    from ..data.write import WriteSettings, check_output, resolve_source, write_beton

    settings = WriteSettings(
        max_resolution=args.max_resolution,
        write_mode=args.write_mode,
        jpeg_quality=args.jpeg_quality,
        smart_threshold=args.smart_threshold,
        num_workers=args.num_workers,
    )
    settings.validate()
    check_output(args.output, args.overwrite)  # before reading any image
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: must be at least 1")
    if args.fraction is not None and not 0 < args.fraction <= 1:
        raise UsageError(f"--fraction {args.fraction}: must be in (0, 1]")
    label_column = None if args.label_column.lower() == "none" else args.label_column
    source = resolve_source(args.source, args.source_type, args.split, args.image_column, label_column)
    source.select(limit=args.limit, fraction=args.fraction, seed=args.seed)
    summary = write_beton(source, args.output, settings, overwrite=args.overwrite)
    print(
        f"wrote {summary['count']} images ({summary['jpeg']} JPEG, {summary['raw']} raw) in "
        f"{len(summary['classes'])} classes to {args.output} ({summary['bytes'] / 2**20:.1f} MiB, "
        f"{summary['seconds']} s); summary: {args.output}.json"
    )
    for item in summary["skipped"]:
        print(f"skipped {item['file']}: {item['reason']}")
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} file(s) (listed in {args.output}.json)")


def _pretrain(args: argparse.Namespace) -> None:
    from ..training.pretrain import run

    run(args)


def _reconstruct(args: argparse.Namespace) -> None:
    from ..data.beton import check_beton
    from ..modeling import MAEForPreTraining
    from ..modeling.loading import for_flag
    from ..training.pretrain import fixed_images
    from ..training.visualize import reconstruction_grid, save_png

    model = for_flag("--model", MAEForPreTraining.from_pretrained, args.model)
    try:
        check_beton(args.data)
    except InputError as err:
        raise UsageError(f"--data {err}") from None
    resolution = args.resolution or model.config.image_size
    if resolution % model.config.patch_size:
        raise UsageError(
            f"--resolution {resolution}: not a multiple of the patch size {model.config.patch_size}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_png(reconstruction_grid(model, fixed_images(args.data, resolution, args.count)), args.output)
    print(f"reconstruction grid: {args.output}")


def _export(args: argparse.Namespace) -> None:
    from ..modeling.export import export

    print(export(args.to, args.src, args.dst, overwrite=args.overwrite))


def build_parser() -> argparse.ArgumentParser:
    from ..data.write import WriteSettings
    from ..training import pretrain

    parser = argparse.ArgumentParser(prog="mae-trainer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    write = commands.add_parser(
        "write-dataset", help="write an ImageFolder tree or the embedded set to .beton"
    )
    write.add_argument(
        "--source", required=True, help="ImageFolder directory, a datasets folder, or 'embedded' (demo set)"
    )
    write.add_argument(
        "--source-type",
        default="auto",
        choices=["auto", "folder", "embedded", "hf-disk", "hf-imagefolder"],
        help="hf-disk: datasets.load_from_disk; hf-imagefolder: datasets' local imagefolder",
    )
    write.add_argument("--split", default="train", help="datasets split")
    write.add_argument("--image-column", default="image", help="datasets image column")
    write.add_argument("--label-column", default="label", help="datasets label column ('none': no labels)")
    write.add_argument("--limit", type=int, default=None, help="write at most this many images")
    write.add_argument("--fraction", type=float, default=None, help="write a seeded random fraction")
    write.add_argument("--seed", type=int, default=0, help="seed of --fraction")
    write.add_argument("--output", type=Path, required=True, help="the .beton file to write")
    defaults = WriteSettings()
    write.add_argument(
        "--max-resolution",
        type=int,
        default=defaults.max_resolution,
        help="longest side stored (resized down); 500 as the DailyMAE authors and FFCV's ImageNet example",
    )
    write.add_argument(
        "--write-mode",
        default=defaults.write_mode,
        help="jpg (every image JPEG: crop decode applies to all) | smart (JPEG above --smart-threshold "
        "bytes, raw below) | raw",
    )
    write.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality)
    write.add_argument(
        "--smart-threshold",
        type=int,
        default=defaults.smart_threshold,
        help="smart mode: store as JPEG when the raw image exceeds this many bytes",
    )
    write.add_argument("--num-workers", type=int, default=2)
    write.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    write.set_defaults(func=_write_dataset)

    train = commands.add_parser(
        "pretrain", help="pre-train an MAE (run under accelerate launch to distribute)"
    )
    pretrain.add_arguments(train)
    train.set_defaults(func=_pretrain)
    parser.pretrain_parser = train  # recipe files set this sub-command's defaults

    from ..downstream import finetune, probe

    tune = commands.add_parser(
        "finetune",
        help="fine-tune a pre-trained encoder for classification (accelerate launch to distribute)",
    )
    finetune.add_arguments(tune)
    tune.set_defaults(func=finetune.run)
    prob = commands.add_parser("probe", help="linear probe and/or k-NN top-1 of frozen encoder features")
    probe.add_arguments(prob)
    prob.set_defaults(func=probe.run)

    from .. import hub

    push = commands.add_parser("push", help="upload a save_pretrained folder to the Hugging Face Hub")
    hub.add_push_arguments(push)

    recon = commands.add_parser("reconstruct", help="write a reconstruction grid PNG for a saved model")
    recon.add_argument("--model", required=True, help="saved model: folder or Hub repo id, ours or vit_mae")
    recon.add_argument("--data", type=Path, required=True, help=".beton to take the images from")
    recon.add_argument("--output", type=Path, required=True, help="PNG file to write")
    recon.add_argument("--resolution", type=int, default=None, help="default: the model's image_size")
    recon.add_argument("--count", type=int, default=8)
    recon.set_defaults(func=_reconstruct)

    exp = commands.add_parser("export", help="convert weights for tools that do not install mae_trainer")
    exp.add_argument(
        "--to",
        required=True,
        choices=["vit_mae", "timm", "mae"],
        help="vit_mae: transformers folder; timm: safetensors state dict; mae: our format",
    )
    exp.add_argument("src", help="saved model: folder or Hub repo id, ours or vit_mae")
    exp.add_argument("dst", type=Path, help="output folder (vit_mae, mae) or .safetensors file (timm)")
    exp.add_argument("--overwrite", action="store_true")
    exp.set_defaults(func=_export)
    return parser


def recipe_path(argv: list[str]) -> Path | None:
    """The file of ``--recipe FILE`` or ``--recipe=FILE`` in ``argv`` (None without one)."""
    for index, arg in enumerate(argv):
        if arg == "--recipe":
            if index + 1 >= len(argv):
                raise UsageError("--recipe: expects a YAML file")
            return Path(argv[index + 1])
        if arg.startswith("--recipe="):
            return Path(arg.split("=", 1)[1])
    return None


def recipe_value(action: argparse.Action, value):
    """A recipe file's value for ``action``, converted and checked the way the flag would be."""
    if value is None:
        return value
    if action.nargs == 0:  # on/off flags
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
    elif isinstance(value, (list, dict)):
        raise ValueError(f"expected one value, not a {'list' if isinstance(value, list) else 'mapping'}")
    elif action.type is not None:
        value = action.type(value)
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"choose one of {', '.join(map(str, action.choices))}")
    return value


def apply_recipe(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """``pretrain --recipe FILE.yaml`` (or ``--recipe=FILE.yaml``): the file's keys (flag names, ``-`` or
    ``_``) become defaults that flags on the command line override."""
    if "pretrain" not in argv:
        return
    path = recipe_path(argv)
    if path is None:
        return
    import yaml

    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"--recipe {path}: cannot read ({err})") from None
    if not isinstance(recipe, dict):
        raise UsageError(f"--recipe {path}: expected a mapping of flag names to values")
    pretrain = parser.pretrain_parser
    actions = {action.dest: action for action in pretrain._actions}
    settings = {str(k).replace("-", "_"): v for k, v in recipe.items()}
    unknown = sorted(set(settings) - set(actions))
    if unknown:
        raise UsageError(f"--recipe {path}: unknown key(s) {', '.join(unknown)}")
    for key, value in settings.items():
        try:
            settings[key] = recipe_value(actions[key], value)
        except (TypeError, ValueError) as err:
            raise UsageError(
                f"--recipe {path}: {key.replace('_', '-')}: {value!r} is not valid ({err})"
            ) from None
    pretrain.set_defaults(**settings)


def lost_peer_message(err: RuntimeError, args: argparse.Namespace) -> str:
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    message = (
        f"lost contact with the other ranks ({first}): another node died, hung or left the network "
        f"(a hang is noticed after --dist-timeout {getattr(args, 'dist_timeout', '?')} s). Check the other "
        "nodes' logs, then rerun with --resume auto"
    )
    output_dir = getattr(args, "output_dir", None)
    if output_dir is not None:
        from ..training.checkpoint import complete_checkpoints

        found = complete_checkpoints(Path(output_dir) / "checkpoints")
        message += f" (last complete checkpoint: {found[-1]})" if found else " (no checkpoint yet)"
    return message


def _reports() -> bool:
    """Under a launcher every rank meets the same refusal: only rank 0 prints it."""
    import os

    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = argparse.Namespace()
    try:
        apply_recipe(parser, argv)
        args = parser.parse_args(argv)
        args.func(args)
    except UsageError as err:
        if _reports():
            print(f"mae-trainer: error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:  # agreed by every rank: reported once
        if _reports():
            print(f"mae-trainer: run stopped: {err}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        if not is_lost_peer(err):
            raise
        print(f"mae-trainer: run stopped: {lost_peer_message(err, args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        print("mae-trainer: interrupted", file=sys.stderr)
        return getattr(err, "exit_status", 130)
    return 0
