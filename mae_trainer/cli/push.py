"""``mae-trainer push DIR REPO``: upload a saved model folder with :func:`mae_trainer.hub.push_to_hub`;
the library's refusals become one line naming the flag, argument or variable the value came from."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import InputError, UsageError
from ..hub import DEFAULT_COMMIT_MESSAGE, DEFAULT_FORMAT, FORMATS, push_to_hub


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mae-trainer push DIR REPO``; also sets ``func=run_push``."""
    parser.add_argument(
        "model_dir",
        type=Path,
        metavar="DIR",
        help="saved model folder to upload: a pre-trained MAE (ours or vit_mae) or a fine-tune output",
    )
    parser.add_argument("repo_id", metavar="REPO", help="Hub repo id, namespace/name (created if missing)")
    parser.add_argument("--token", default=None, help="Hub write token (default: $HF_TOKEN, saved login)")
    parser.add_argument("--private", action="store_true", help="create the repo private (new repos only)")
    parser.add_argument("--revision", default=None, help="branch to commit to (created from main if missing)")
    parser.add_argument(
        "--license",
        default=None,
        help="model card license (default: the folder's provenance.json, which fine-tuning fills from the "
        "pre-trained model's card; else apache-2.0)",
    )
    parser.add_argument(
        "--dataset-name",
        "--dataset",
        dest="datasets",
        action="append",
        default=None,
        metavar="NAME",
        help="Hub dataset id the model was trained on, for the card (repeat for several; added to those in "
        "the folder's provenance.json)",
    )
    parser.add_argument(
        "--endpoint", default=None, help="Hub URL (default: $HF_ENDPOINT, else https://huggingface.co)"
    )
    parser.add_argument("--commit-message", default=DEFAULT_COMMIT_MESSAGE)
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=DEFAULT_FORMAT,
        help="transformers (default; vit_mae is its old name): plain transformers loads the repo (a "
        "pre-trained MAE as vit_mae, a fine-tuned classifier as BEiT or ViT image classifier); mae_trainer: "
        "our own format, which needs `import mae_trainer` to load",
    )
    parser.set_defaults(func=run_push)


def push_flag(err: InputError, args: argparse.Namespace) -> str:
    """Where the value ``err`` is about came from on the command line, as the prefix of its message."""
    if err.argument == "endpoint":
        return "--endpoint " if args.endpoint else "HF_ENDPOINT "
    if err.argument == "token":  # the message never starts with a secret
        return "HF_TOKEN: " if not args.token and os.environ.get("HF_TOKEN") else "--token: "
    return {"model_dir": "DIR ", "repo_id": "REPO ", "format": "--format "}.get(err.argument, "")


def run_push(args: argparse.Namespace) -> None:
    try:
        url = push_to_hub(
            args.model_dir,
            args.repo_id,
            token=args.token,
            private=args.private,
            revision=args.revision,
            endpoint=args.endpoint,
            commit_message=getattr(args, "commit_message", None) or DEFAULT_COMMIT_MESSAGE,
            license=args.license,
            datasets=args.datasets,
            format=getattr(args, "format", DEFAULT_FORMAT),
        )
    except InputError as err:
        raise UsageError(f"{push_flag(err, args)}{err}") from None
    print(f"pushed {args.model_dir} to {args.repo_id}" + (f" ({args.revision})" if args.revision else ""))
    print(f"commit: {url}")
