"""Publish a ``save_pretrained`` folder of our MAE to the Hugging Face Hub (``mae-trainer push``).

One commit uploads a whitelist of files: ``config.json``, the safetensors weights (one file, or an index and
its shards), ``reconstruction.png`` when present, plus two files written here: ``preprocessor_config.json``
(a ``ViTImageProcessor`` matching the model's size and normalisation) and a model card ``README.md`` built
from the config and ``metrics.jsonl``. Nothing else in the folder (``checkpoints/``, ``tensorboard/``, ...)
is sent.

The card declares ``library_name: transformers``: the files are transformers' own layout, read by
``AutoModel.from_pretrained`` (after ``import mae_trainer`` registers the model type). The Hub keys its
library filter and "Use this model" snippet on ``library_name`` and only knows registered libraries, so
``mae_trainer`` there would leave the model without either; the ``mae_trainer`` tag marks our models.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
from pathlib import Path

from .errors import UsageError

DEFAULT_LICENSE = "apache-2.0"
DEFAULT_COMMIT_MESSAGE = "Upload MAE pre-trained with mae_trainer"
TAGS = ["mae", "masked-autoencoder", "vision", "self-supervised", "mae_trainer", "pretraining"]
PIPELINE_TAG = "image-feature-extraction"
LIBRARY_NAME = "transformers"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
RECONSTRUCTION = "reconstruction.png"
METRICS = "metrics.jsonl"


# ---------------------------------------------------------------------------------------------- reading


def _safetensors_tensors(path: Path) -> dict[str, dict]:
    """The tensor table from a safetensors header (no weights are read)."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("shorter than a header")
            (length,) = struct.unpack("<Q", head)
            if length > min(path.stat().st_size - 8, 100 * 2**20):
                raise ValueError(f"header length {length} does not fit the file")
            header = json.loads(f.read(length))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not a readable safetensors file ({err})") from None
    if not isinstance(header, dict):
        raise UsageError(f"{path}: not a readable safetensors file (header is not a table)")
    return {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def _weight_files(model_dir: Path) -> list[str]:
    """Names of the weight files to upload: ``model.safetensors``, or the index and every shard it names."""
    if (model_dir / WEIGHTS).is_file():
        return [WEIGHTS]
    index = model_dir / WEIGHTS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise UsageError(f"{index}: not a safetensors index ({err})") from None
        for shard in shards:
            if Path(shard).name != shard or not (model_dir / shard).is_file():
                raise UsageError(f"{index}: names shard {shard!r}, which is not a file in {model_dir}")
        return [WEIGHTS_INDEX, *shards]
    raise UsageError(
        f"{model_dir}: no {WEIGHTS} (expected a save_pretrained directory with config.json and {WEIGHTS})"
    )


def _load_config(model_dir: Path):
    from .modeling import MAEConfig

    path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise UsageError(f"{model_dir}: not a directory (expected a save_pretrained directory)")
    if not path.is_file():
        raise UsageError(
            f"{model_dir}: no config.json "
            f"(expected a save_pretrained directory with config.json and {WEIGHTS})"
        )
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: cannot read ({err})") from None
    if not isinstance(raw, dict) or raw.get("model_type") != MAEConfig.model_type:
        found = raw.get("model_type") if isinstance(raw, dict) else None
        raise UsageError(
            f"{path}: model_type {found!r} is not {MAEConfig.model_type!r} (not an mae_trainer model; "
            "for a vit_mae folder run `mae-trainer export --to mae` first)"
        )
    try:
        return MAEConfig.from_pretrained(model_dir)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{path}: invalid MAE config ({err})") from None


def read_metrics(path: Path) -> list[dict]:
    """Records of a ``metrics.jsonl`` file; lines that are not JSON objects (a run cut off mid-write) are
    skipped."""
    records = []
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err})") from None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


# ------------------------------------------------------------------------------------------ model card


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _unique(values) -> list:
    seen = []
    for value in values:
        if value is not None and value not in seen:
            seen.append(value)
    return seen


def _number(record: dict, key: str):
    value = record.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _recipe_section(records: list[dict]) -> list[str]:
    if not records:
        return [
            "## Training recipe",
            "",
            f"No `{METRICS}` was found next to the weights, so the run's log is not summarised here.",
            "",
        ]
    steps = [s for r in records if (s := _number(r, "step")) is not None]
    epochs = [e for r in records if (e := _number(r, "epoch")) is not None]
    losses = [x for r in records if (x := _number(r, "loss")) is not None and math.isfinite(x)]
    lrs = [x for r in records if (x := _number(r, "lr")) is not None]
    speeds = [x for r in records if (x := _number(r, "images_per_s")) is not None]
    resolutions = _unique(_number(r, "resolution") for r in records)
    ratios = _unique(_number(r, "mask_ratio") for r in records)
    batches = _unique(_number(r, "batch_size") for r in records)
    rows = [
        ("optimizer steps", _fmt(max(steps)) if steps else "unknown"),
        # epochs are counted from 0 in the log
        ("epochs", _fmt(int(max(epochs)) + 1) if epochs else "unknown"),
        ("final loss", _fmt(losses[-1]) if losses else "unknown"),
        ("lowest logged loss", _fmt(min(losses)) if losses else "unknown"),
        ("peak learning rate", _fmt(max(lrs)) if lrs else "unknown"),
        ("resolutions seen (px)", ", ".join(_fmt(v) for v in resolutions) or "unknown"),
        ("mask ratios seen", ", ".join(_fmt(v) for v in ratios) or "unknown"),
        ("per-device batch sizes seen", ", ".join(_fmt(v) for v in batches) or "unknown"),
        ("mean throughput (images/s)", _fmt(sum(speeds) / len(speeds)) if speeds else "unknown"),
    ]
    lines = [
        "## Training recipe",
        "",
        f"Summarised from the run's `{METRICS}` ({len(records)} logged points; masked-patch "
        "reconstruction loss, mean over the logging window).",
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
    ]
    # Progressive schedules change resolution and mask ratio over the run: one row per stage.
    stages: list[dict] = []
    for record in records:
        key = (_number(record, "resolution"), _number(record, "mask_ratio"))
        if not stages or stages[-1]["key"] != key:
            stages.append({"key": key, "first": record, "last": record})
        else:
            stages[-1]["last"] = record
    if len(stages) > 1:
        lines += [
            "| stage | resolution | mask ratio | steps | epochs | loss at end |",
            "|---|---|---|---|---|---|",
        ]
        for i, stage in enumerate(stages, 1):
            (res, ratio), first, last = stage["key"], stage["first"], stage["last"]
            lines.append(
                f"| {i} | {_fmt(res)} | {_fmt(ratio)} | {_fmt(first.get('step'))}–{_fmt(last.get('step'))} "
                f"| {_fmt(first.get('epoch'))}–{_fmt(last.get('epoch'))} | {_fmt(last.get('loss'))} |"
            )
        lines.append("")
    return lines


def _config_section(config, parameters: int | None) -> list[str]:
    c = config
    rows = [
        ("image size (native, px)", c.image_size),
        ("patch size (px)", c.patch_size),
        ("channels", c.num_channels),
        (
            "encoder width / depth / heads",
            f"{c.hidden_size} / {c.num_hidden_layers} / {c.num_attention_heads}",
        ),
        ("encoder MLP ratio", c.mlp_ratio),
        (
            "decoder width / depth / heads",
            f"{c.decoder_hidden_size} / {c.decoder_num_hidden_layers} / {c.decoder_num_attention_heads}",
        ),
        ("decoder MLP ratio", c.decoder_mlp_ratio),
        ("default mask ratio", c.mask_ratio),
        ("normalised-pixel loss", c.norm_pix_loss),
        ("input mean / std", f"{list(c.image_mean)} / {list(c.image_std)}"),
    ]
    if parameters is not None:
        rows.append(("parameters (encoder + decoder)", f"{parameters / 1e6:.2f} M"))
    return [
        "## Model configuration",
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {_fmt(value)} |" for name, value in rows),
        "",
    ]


def build_model_card(
    config,
    repo_id: str,
    *,
    records: list[dict] | None = None,
    license: str = DEFAULT_LICENSE,
    datasets: list[str] | None = None,
    revision: str | None = None,
    parameters: int | None = None,
    reconstruction: bool = False,
) -> str:
    """The ``README.md`` text: YAML metadata, what the model is, how to load it, the recipe, the shape."""
    import yaml

    metadata: dict = {"library_name": LIBRARY_NAME, "license": license, "tags": list(TAGS)}
    if datasets:
        metadata["datasets"] = list(datasets)
    metadata["pipeline_tag"] = PIPELINE_TAG
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).strip()
    name = repo_id.split("/")[-1]
    rev = f', revision="{revision}"' if revision and revision != "main" else ""
    trained_on = f" on {', '.join(f'`{d}`' for d in datasets)}" if datasets else ""
    lines = [
        "---",
        front,
        "---",
        "",
        f"# {name}",
        "",
        "A Masked Autoencoder (MAE; He et al., 2022, [arXiv:2111.06377](https://arxiv.org/abs/2111.06377)): "
        "a Vision Transformer encoder pre-trained without labels by reconstructing the pixels of randomly "
        f"masked image patches{trained_on}, with `mae_trainer`. The "
        "encoder gives image features for linear probing or fine-tuning; the decoder is kept so pre-training "
        "can continue.",
        "",
        "## How to load",
        "",
        "The weights are a transformers `save_pretrained` folder. Install `mae_trainer` and import it first: "
        f"it registers the `{config.model_type}` model type with transformers' Auto classes.",
        "",
        "```python",
        "import mae_trainer  # registers the model type with transformers",
        "from PIL import Image",
        "from transformers import AutoModel, AutoModelForPreTraining, ViTImageProcessor",
        "",
        f'processor = ViTImageProcessor.from_pretrained("{repo_id}"{rev})',
        f'encoder = AutoModel.from_pretrained("{repo_id}"{rev})  # the ViT encoder (MAEModel)',
        "",
        'inputs = processor(images=Image.open("photo.jpg").convert("RGB"), return_tensors="pt")',
        "features = encoder(**inputs).last_hidden_state  # (1, 1 + patches, width): class token first",
        "",
        f'mae = AutoModelForPreTraining.from_pretrained("{repo_id}"{rev})  # encoder + decoder',
        "loss = mae(**inputs).loss  # masked-patch reconstruction loss",
        "```",
        "",
        "The encoder accepts any image side that is a multiple of the patch size (position embeddings are "
        "fixed 2-D sin-cos tables), not only the native size the processor resizes to.",
        "",
    ]
    lines += _recipe_section(records or [])
    lines += _config_section(config, parameters)
    if reconstruction:
        lines += [
            "## Reconstructions",
            "",
            "Masked inputs, reconstructions and originals from the end of pre-training:",
            "",
            f"![MAE reconstructions]({RECONSTRUCTION})",
            "",
        ]
    return "\n".join(lines)


def image_processor_json(config) -> bytes:
    """``preprocessor_config.json`` for a ``ViTImageProcessor`` with the model's size and normalisation."""
    import tempfile

    from transformers import ViTImageProcessor

    processor = ViTImageProcessor(
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        size={"height": config.image_size, "width": config.image_size},
        do_resize=True,
        do_normalize=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        processor.save_pretrained(tmp)
        return (Path(tmp) / "preprocessor_config.json").read_bytes()


def collect_files(
    model_dir: Path,
    repo_id: str,
    *,
    license: str = DEFAULT_LICENSE,
    datasets: list[str] | None = None,
    revision: str | None = None,
) -> dict[str, Path | bytes]:
    """Every file one push sends, path in the repo → local file (``Path``) or generated content (``bytes``).

    Raises ``UsageError`` naming the path when the folder is not a save_pretrained folder of our model."""
    model_dir = Path(model_dir)
    config = _load_config(model_dir)
    weight_files = _weight_files(model_dir)
    parameters = 0
    for name in weight_files:
        if name.endswith(".safetensors"):
            for info in _safetensors_tensors(model_dir / name).values():
                parameters += math.prod(int(d) for d in info.get("shape", []))
    metrics = model_dir / METRICS
    records = read_metrics(metrics) if metrics.is_file() else []
    has_picture = (model_dir / RECONSTRUCTION).is_file()

    files: dict[str, Path | bytes] = {"config.json": model_dir / "config.json"}
    files.update({name: model_dir / name for name in weight_files})
    files["preprocessor_config.json"] = image_processor_json(config)
    if has_picture:
        files[RECONSTRUCTION] = model_dir / RECONSTRUCTION
    files["README.md"] = build_model_card(
        config,
        repo_id,
        records=records,
        license=license,
        datasets=datasets,
        revision=revision,
        parameters=parameters or None,
        reconstruction=has_picture,
    ).encode()
    return files


# --------------------------------------------------------------------------------------------- pushing


def resolve_token(token: str | None) -> str:
    """``token``, else ``HF_TOKEN``, else the token saved by ``hf auth login``; ``UsageError`` if none."""
    token = token or os.environ.get("HF_TOKEN") or None
    if token is None:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise UsageError(
            "no Hugging Face token: pass --token TOKEN (token= in Python) or set the HF_TOKEN environment "
            "variable (a write token from https://huggingface.co/settings/tokens)"
        )
    return token


def push_to_hub(
    model_dir: Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    endpoint: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    license: str = DEFAULT_LICENSE,
    datasets: list[str] | None = None,
) -> str:
    """Upload a ``save_pretrained`` folder of our MAE to ``repo_id`` in one commit; return the commit URL.

    Creates the repo if needed (``private`` only applies to a new repo) and, for a ``revision`` other than
    ``main``, the branch (from ``main``'s head). ``endpoint`` defaults to ``HF_ENDPOINT``, else the
    public Hub.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UsageError(f"repo id {repo_id!r}: {err}") from None
    files = collect_files(
        Path(model_dir), repo_id, license=license, datasets=datasets, revision=revision
    )  # input errors before any request
    token = resolve_token(token)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None
    api = HfApi(endpoint=endpoint, token=token)
    try:
        try:
            repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        except Exception as err:
            # httpx (huggingface_hub >= 1.0) or requests (older): no connection at all is bad input
            if any(c.__name__ in ("ConnectError", "ConnectionError") for c in type(err).__mro__):
                raise UsageError(f"endpoint {api.endpoint}: cannot connect ({err})") from None
            raise
        repo_id = repo_url.repo_id or repo_id  # "name" alone lands in the token owner's namespace
        if revision and revision != "main" and not revision.startswith("refs/pr/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=src) for p, src in files.items()]
        info = api.create_commit(
            repo_id,
            operations=operations,
            commit_message=commit_message,
            revision=revision,
            repo_type="model",
        )
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise UsageError(
                f"{api.endpoint}: the Hub refused the token for {repo_id} (HTTP {status}); it needs write "
                "access (--token or HF_TOKEN)"
            ) from None
        raise
    return info.commit_url


# ------------------------------------------------------------------------------------------------- CLI


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``mae-trainer push DIR REPO``; also sets ``func=run_push``."""
    parser.add_argument("model_dir", type=Path, metavar="DIR", help="save_pretrained folder to upload")
    parser.add_argument("repo_id", metavar="REPO", help="Hub repo id, namespace/name (created if missing)")
    parser.add_argument("--token", default=None, help="Hub write token (default: $HF_TOKEN, saved login)")
    parser.add_argument("--private", action="store_true", help="create the repo private (new repos only)")
    parser.add_argument("--revision", default=None, help="branch to commit to (created from main if missing)")
    parser.add_argument("--license", default=DEFAULT_LICENSE, help="model card license (default apache-2.0)")
    parser.add_argument(
        "--dataset",
        dest="datasets",
        action="append",
        default=None,
        metavar="NAME",
        help="Hub dataset id the model was trained on, for the card (repeat for several)",
    )
    parser.add_argument(
        "--endpoint", default=None, help="Hub URL (default: $HF_ENDPOINT, else https://huggingface.co)"
    )
    parser.add_argument("--commit-message", default=DEFAULT_COMMIT_MESSAGE)
    parser.set_defaults(func=run_push)


def run_push(args: argparse.Namespace) -> None:
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
    )
    print(f"pushed {args.model_dir} to {args.repo_id}" + (f" ({args.revision})" if args.revision else ""))
    print(f"commit: {url}")
