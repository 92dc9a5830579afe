"""``mae-trainer`` command line: ``write-dataset``, ``pretrain``, ``finetune``, ``probe``, ``push``,
``reconstruct``, ``export``.

``accelerate launch -m mae_trainer pretrain ...`` runs the same entry point under the launcher.
Bad input ends with one line ``mae-trainer: error: ...`` naming the flag or file, and exit status 2.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

from ..config import ConfigError, world_size
from ..errors import InputError, Preempted, TrainingError, UsageError, is_lost_peer
from .flags import build_config, flagged, usage_message


def _write_dataset(args: argparse.Namespace) -> None:
    import os

    from ..data.streamed import resolve_source
    from ..data.write import WriteSettings, check_output, write_beton

    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: must be at least 1")
    if args.fraction is not None and not 0 < args.fraction <= 1:
        raise UsageError(f"--fraction {args.fraction}: must be in (0, 1]")
    try:
        settings = WriteSettings(
            max_resolution=args.max_resolution,
            write_mode=args.write_mode,
            jpeg_quality=args.jpeg_quality,
            smart_threshold=args.smart_threshold,
            num_workers=args.num_workers,
        )
        settings.validate()
        check_output(args.output, overwrite=True)  # before reading any image; existing: below
        if os.path.lexists(args.output) and not args.overwrite:
            raise UsageError(f"--output {args.output}: already exists (pass --overwrite to replace it)")
        label_column = None if args.label_column.lower() == "none" else args.label_column
        source = resolve_source(
            args.source,
            args.source_type,
            args.split,
            args.image_column,
            label_column,
            revision=args.revision,
            config_name=args.config_name,
        )
        if label_column is None:  # whatever the source: an image field only
            source.labelled = False
        source.select(limit=args.limit, fraction=args.fraction, seed=args.seed)
        summary = write_beton(source, args.output, settings, overwrite=args.overwrite)
    except InputError as err:  # the library names the argument; its flag has the same name
        flag = f"--{err.argument.replace('_', '-')} " if err.argument else ""
        raise UsageError(f"{flag}{err}") from None
    print(
        f"wrote {summary['count']} images ({summary['jpeg']} JPEG, {summary['raw']} raw) "
        f"{present_classes(summary)} to {args.output} ({summary['bytes'] / 2**20:.1f} MiB, "
        f"{summary['seconds']} s); summary: {args.output}.json"
    )
    for item in summary["skipped"]:
        print(f"skipped {item['file']}: {item['reason']}")
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} file(s) (listed in {args.output}.json)")


def present_classes(summary: dict) -> str:
    """``"in 16 classes"``, ``"in 2 of 16 classes"`` when some have no image written, or ``"without
    labels"``."""
    if summary.get("labelled") is False:
        return "without labels"
    counts = summary.get("class_counts") or {}
    present = sum(1 for n in counts.values() if n)
    total = len(summary["classes"])
    return f"in {total} classes" if present == total or not counts else f"in {present} of {total} classes"


def _pretrain(config) -> None:
    from ..training.pretrain_plan import check

    plan = check(config, world_size())  # every refusal before torch, FFCV and timm are imported
    from ..training.pretrain import train

    train(config, plan)


def _saved_model(flag: str, spec) -> None:
    """Refuse a ``--model`` that is not a usable saved model before torch is imported (the command's own
    load checks it again): the reader of saved folders needs only json and the safetensors header."""
    from ..modeling.loading import resolve_saved_model

    with flagged(flag):
        resolve_saved_model(spec)


def _finetune(config) -> None:
    _saved_model("--model", config.model)
    from ..downstream.finetune_plan import check

    plan = check(config, world_size())  # the model is loaded here: refused before any process group
    from ..downstream.finetune import train

    train(config, plan)


def _probe(config) -> None:
    if config.model is not None:
        _saved_model("--model", config.model)
    from ..downstream.probe import run

    run(config)


def _reconstruct(args: argparse.Namespace) -> None:
    from ..data.beton import check_beton
    from ..data.resolution import check_side
    from ..publish import check_output_dir

    with flagged("--output"):
        check_output_dir(args.output.parent)
    with flagged("--data"):
        check_beton(args.data)
    _saved_model("--model", args.model)
    from ..data.eval_loader import fixed_images
    from ..modeling import MAEForPreTraining
    from ..training.visualize import reconstruction_grid, save_png

    with flagged("--model"):
        model = MAEForPreTraining.from_pretrained(args.model)
    resolution = args.resolution or model.config.image_size
    with flagged("--resolution"):
        check_side(resolution, model.config.patch_size)
    save_png(reconstruction_grid(model, fixed_images(args.data, resolution, args.count)), args.output)
    print(f"reconstruction grid: {args.output}")


def _export(args: argparse.Namespace) -> None:
    from .export import check_destination, run

    with flagged("DST"):
        check_destination(args.to, args.dst, args.overwrite)
    _saved_model("SRC", args.src)

    run(args)


def build_parser() -> argparse.ArgumentParser:
    from ..config import FinetuneConfig, PretrainConfig, ProbeConfig
    from ..data.streamed import SOURCE_TYPES
    from ..data.write import WriteSettings
    from .flags import add_config_flags

    parser = argparse.ArgumentParser(prog="mae-trainer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    write = commands.add_parser(
        "write-dataset", help="write an ImageFolder tree or the embedded set to .beton"
    )
    write.add_argument(
        "--source",
        required=True,
        help="ImageFolder directory, a datasets folder, 'embedded' (demo set), Parquet/Arrow files or "
        "WebDataset .tar shards (a file, glob or {0000..0099} range), or a Hub dataset USER/NAME",
    )
    write.add_argument(
        "--source-type",
        default="auto",
        choices=list(SOURCE_TYPES),
        help="hf-disk: datasets.load_from_disk; hf-imagefolder: datasets' local imagefolder; hub: a Hub "
        "dataset even where a local folder has that name (streamed)",
    )
    write.add_argument("--split", default="train", help="datasets split")
    write.add_argument("--revision", default=None, help="Hub dataset revision (branch, tag or commit)")
    write.add_argument("--config-name", default=None, help="Hub dataset configuration (subset)")
    write.add_argument("--image-column", default="image", help="datasets image column")
    write.add_argument(
        "--label-column",
        default="label",
        help="datasets label column; 'none': write no labels (an image field only), for every source",
    )
    write.add_argument(
        "--limit",
        type=int,
        default=None,
        help="write at most this many images (a seeded subset, stratified by class)",
    )
    write.add_argument(
        "--fraction", type=float, default=None, help="write a seeded fraction, stratified by class"
    )
    write.add_argument("--seed", type=int, default=0, help="seed of --limit and --fraction")
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
    add_config_flags(train, PretrainConfig)
    train.set_defaults(func=_pretrain, config=PretrainConfig)
    tune = commands.add_parser(
        "finetune",
        help="fine-tune a pre-trained encoder for classification (accelerate launch to distribute)",
    )
    add_config_flags(tune, FinetuneConfig)
    tune.set_defaults(func=_finetune, config=FinetuneConfig)
    prob = commands.add_parser("probe", help="linear probe and/or k-NN top-1 of frozen encoder features")
    add_config_flags(prob, ProbeConfig)
    prob.set_defaults(func=_probe, config=ProbeConfig)

    from .push import add_push_arguments

    push = commands.add_parser("push", help="upload a save_pretrained folder to the Hugging Face Hub")
    add_push_arguments(push)

    recon = commands.add_parser("reconstruct", help="write a reconstruction grid PNG for a saved model")
    recon.add_argument("--model", required=True, help="saved model: folder or Hub repo id, ours or vit_mae")
    recon.add_argument("--data", type=Path, required=True, help=".beton to take the images from")
    recon.add_argument("--output", type=Path, required=True, help="PNG file to write")
    recon.add_argument("--resolution", type=int, default=None, help="default: the model's image_size")
    recon.add_argument("--count", type=int, default=8)
    recon.set_defaults(func=_reconstruct)

    exp = commands.add_parser("export", help="convert weights for tools that do not install mae_trainer")
    from . import export

    export.add_arguments(exp)
    exp.set_defaults(func=_export)
    return parser


def parse(argv: list[str]):
    """``(command function, its argument)`` for ``argv``: the frozen run config of pretrain, finetune and
    probe (defaults ← ``--recipe`` file ← flags), the parsed namespace of the other commands."""
    args = build_parser().parse_args(argv)
    if getattr(args, "config", None) is None:
        return args.func, args
    return args.func, build_config(args.config, args)


def parse_config(argv: list[str]):
    """The run config ``argv`` describes (``["pretrain", "--recipe", "r.yaml", ...]``)."""
    return parse(argv)[1]


def lost_peer_message(err: RuntimeError, args) -> str:
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


def _let_rank_zero_report(seconds: float = 10.0) -> None:
    """A silent rank that met the refusal (or an agreed stop) waits before exiting: the launcher ends every
    rank as soon as one exits with an error, and a rank 0 still importing would die before printing the line
    (seen in CI). The launcher ends this wait when rank 0 exits."""
    import time

    time.sleep(seconds)


def entry() -> int:
    """The ``mae-trainer`` program (the console script, and ``python -m mae_trainer``, which ``accelerate
    launch`` runs on each rank): :func:`main`, then :func:`gc.freeze`. A process that imported torch,
    DeepSpeed, timm and FFCV holds about 0.5 M objects the collector tracks, and interpreter shutdown walks
    them in full collections: 2-3 s per process after the command is done (README, "Tests"). Frozen, they
    are left to the operating system. By then the command has closed its files and trackers and destroyed
    its process group; atexit handlers, module teardown and reference-counted finalizers still run, only
    cyclic garbage made before this point is not collected."""
    status = main()
    gc.freeze()
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = None
    try:
        command, args = parse(argv)
        command(args)
    except (UsageError, InputError) as err:  # a ConfigError names its flag; other input errors their file
        if _reports():
            message = usage_message(err) if isinstance(err, ConfigError) else str(err)
            print(f"mae-trainer: error: {message}", file=sys.stderr)
        else:
            _let_rank_zero_report()
        return 2
    except Preempted as err:  # SIGTERM/SIGUSR1: every rank wrote the checkpoint; exit 128 + the signal
        if _reports():
            print(f"mae-trainer: {err}", file=sys.stderr)
        else:
            _let_rank_zero_report()
        return err.exit_code
    except TrainingError as err:  # agreed by every rank: reported once
        if _reports():
            print(f"mae-trainer: run stopped: {err}", file=sys.stderr)
        else:
            _let_rank_zero_report()
        return 1
    except RuntimeError as err:
        if not is_lost_peer(err):
            raise
        print(f"mae-trainer: run stopped: {lost_peer_message(err, args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        print("mae-trainer: interrupted", file=sys.stderr)
        return getattr(err, "exit_status", 130)
    finally:  # the output folder's lock and the stop-signal handlers (training/lifecycle.py) end with it
        from ..training.lifecycle import release_output_locks, restore_signal_handlers

        release_output_locks()
        restore_signal_handlers()
    return 0
