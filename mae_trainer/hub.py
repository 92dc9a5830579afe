"""Publish a saved MAE to the Hugging Face Hub (``mae-trainer push``, ``pretrain --push-to-hub``).

The folder is read with the one loader (``modeling/loading.py``: our folder or a ``vit_mae`` one, weights
checked and loaded), then one commit uploads:

- ``--format vit_mae`` (default): ``config.json`` (``model_type: vit_mae``) and ``model.safetensors``
  written by ``export --to vit_mae``, so plain transformers loads the repo as ``ViTMAEForPreTraining``,
  ``ViTModel`` or ``ViTForImageClassification`` without this package;
- ``--format mae_trainer``: our ``config.json`` and safetensors weights (one file, or an index and its
  shards) as they are in the folder; loading needs ``import mae_trainer``;

plus, in both, ``reconstruction.png`` when present, a ``preprocessor_config.json`` that makes
``AutoImageProcessor`` prepare images as our evaluation does (``convert.image_processor``) and a model card
``README.md`` built from the config and ``metrics.jsonl``. Nothing else in the folder (``checkpoints/``,
``tensorboard/``, ...) is sent.

The card declares ``library_name: transformers``: the Hub keys its library filter and "Use this model"
snippet on it and only knows registered libraries; the ``mae_trainer`` tag marks our models.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from .errors import InputError

DEFAULT_LICENSE = "apache-2.0"
DEFAULT_COMMIT_MESSAGE = "Upload MAE pre-trained with mae_trainer"
TAGS = ["mae", "masked-autoencoder", "vision", "self-supervised", "mae_trainer", "pretraining"]
PIPELINE_TAG = "image-feature-extraction"
LIBRARY_NAME = "transformers"
FORMATS = ("vit_mae", "mae_trainer")
DEFAULT_FORMAT = "vit_mae"
RECONSTRUCTION = "reconstruction.png"
METRICS = "metrics.jsonl"


# ---------------------------------------------------------------------------------------------- reading


def read_metrics(path: Path) -> list[dict]:
    """Records of a ``metrics.jsonl`` file; lines that are not JSON objects (a run cut off mid-write) are
    skipped."""
    records = []
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err})", "model_dir") from None
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


def _resolution_note(config) -> list[str]:
    return [
        "### Other resolutions",
        "",
        f"At the native {config.image_size} px both packages compute the same thing (loss and logits "
        "agree to ≤ 1e-5 for the same `noise`). The encoder accepts any side that is a multiple of the "
        f"patch size ({config.patch_size} px), and there they differ: `mae_trainer` computes the exact 2-D "
        "sin-cos position table of the actual patch grid, while transformers "
        "(`interpolate_pos_encoding=True`) resamples the native table bicubically, an approximation "
        "(measured for the tiny preset at 160 px: logits up to 1.59 apart). For exact results at another "
        "size, load with `mae_trainer`.",
        "",
    ]


def _loading_section(config, repo_id: str, rev: str, format: str) -> list[str]:
    from .modeling.convert import EVAL_CROP_PCT

    short = math.floor(config.image_size / EVAL_CROP_PCT)
    ours = [
        "```python",
        "from mae_trainer import MAEForImageClassification, MAEForPreTraining, MAEModel",
        "",
        f'encoder = MAEModel.from_pretrained("{repo_id}"{rev})  # the ViT encoder',
        f'mae = MAEForPreTraining.from_pretrained("{repo_id}"{rev})  # encoder + decoder',
        f'classifier = MAEForImageClassification.from_pretrained("{repo_id}"{rev}, num_labels=10)',
        "```",
        "",
        f"or `mae-trainer finetune --model {repo_id} ...`, `mae-trainer probe --model {repo_id} ...`.",
        "",
    ]
    processor = [
        f'processor = AutoImageProcessor.from_pretrained("{repo_id}"{rev})',
        'inputs = processor(images=Image.open("photo.jpg"), return_tensors="pt")',
    ]
    preprocessing = (
        f"The processor resizes the short side to {short} px (bicubic), crops the centre "
        f"{config.image_size} px and normalises with the model's mean and std: the evaluation preprocessing "
        "of `mae_trainer`."
    )
    if format == "mae_trainer":
        return [
            "## How to load",
            "",
            f"The weights are in `mae_trainer`'s own format (`model_type: {config.model_type}`): plain "
            f"transformers cannot read them. `mae-trainer export --to vit_mae {repo_id} DIR` writes a copy "
            "that transformers alone loads as `ViTMAEForPreTraining`, `ViTModel` or "
            "`ViTForImageClassification`. With `mae_trainer` installed, `import mae_trainer` registers the "
            "model type with transformers' Auto classes:",
            "",
            "```python",
            "import mae_trainer  # registers the model type with transformers",
            "from PIL import Image",
            "from transformers import AutoImageProcessor, AutoModel, AutoModelForPreTraining",
            "",
            *processor,
            f'encoder = AutoModel.from_pretrained("{repo_id}"{rev})  # the ViT encoder (MAEModel)',
            "features = encoder(**inputs).last_hidden_state  # (1, 1 + patches, width): class token first",
            "",
            f'mae = AutoModelForPreTraining.from_pretrained("{repo_id}"{rev})  # encoder + decoder',
            "loss = mae(**inputs).loss  # masked-patch reconstruction loss",
            "```",
            "",
            preprocessing,
            "",
            "The classes themselves:",
            "",
            *ours,
            *_resolution_note(config),
        ]
    return [
        "## How to load",
        "",
        "### With transformers alone",
        "",
        "The repo is a transformers `vit_mae` checkpoint; nothing else needs installing.",
        "",
        "```python",
        "from PIL import Image",
        "from transformers import (",
        "    AutoImageProcessor, ViTForImageClassification, ViTMAEForPreTraining, ViTModel",
        ")",
        "",
        *processor,
        "",
        f'encoder = ViTModel.from_pretrained("{repo_id}"{rev}, add_pooling_layer=False)  # the ViT encoder',
        "features = encoder(**inputs).last_hidden_state  # (1, 1 + patches, width): class token first",
        "",
        f'mae = ViTMAEForPreTraining.from_pretrained("{repo_id}"{rev})  # encoder + decoder',
        "loss = mae(**inputs).loss  # reconstruction loss on a random 75 % of the patches",
        "",
        "# to fine-tune: the encoder with a new classification head",
        f'classifier = ViTForImageClassification.from_pretrained("{repo_id}"{rev}, num_labels=10)',
        "```",
        "",
        preprocessing
        + " `AutoModel` loads the same encoder weights as `ViTMAEModel`, which hides a random share of the "
        "patches (the pre-training input); `ViTModel` encodes the whole image.",
        "",
        "### With mae_trainer",
        "",
        "The same repo loads into `mae_trainer`'s classes (converted on load):",
        "",
        *ours,
        *_resolution_note(config),
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
    format: str = DEFAULT_FORMAT,
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
    ]
    lines += _loading_section(config, repo_id, rev, format)
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
    """``preprocessor_config.json`` of ``convert.image_processor``: our evaluation preprocessing."""
    from .modeling.convert import image_processor

    with tempfile.TemporaryDirectory() as tmp:
        image_processor(config).save_pretrained(tmp)
        return (Path(tmp) / "preprocessor_config.json").read_bytes()


def collect_files(
    model_dir: Path,
    repo_id: str,
    staging: Path,
    *,
    format: str = DEFAULT_FORMAT,
    license: str = DEFAULT_LICENSE,
    datasets: list[str] | None = None,
    revision: str | None = None,
) -> dict[str, Path | bytes]:
    """Every file one push sends, path in the repo → local file (``Path``) or generated content (``bytes``).

    ``model_dir`` is read with the one loader (our folder or a ``vit_mae`` one; the weights are loaded, so
    missing or truncated ones are refused here); converted weights are written under ``staging``.
    Raises ``InputError`` (``argument`` ``"model_dir"``) naming the folder when it cannot be used."""
    from .modeling import MAEForPreTraining
    from .modeling.convert import write_vit_mae
    from .modeling.loading import resolve_saved_model

    if format not in FORMATS:
        raise InputError(f"{format!r}: choose {' or '.join(FORMATS)}", "format")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: not a directory (expected a save_pretrained folder)", "model_dir")
    try:
        saved = resolve_saved_model(model_dir)
        model = MAEForPreTraining.from_pretrained(saved.folder)
    except InputError as err:  # ModelLoadError, naming the folder
        err.argument = "model_dir"
        raise
    config = model.config
    if format == "mae_trainer" and saved.is_ours:
        source, weight_files = model_dir, saved.weight_files  # byte for byte what pre-training saved
    elif format == "mae_trainer":
        model.save_pretrained(staging)
        source, weight_files = staging, ["model.safetensors"]
    else:
        write_vit_mae(model, staging)
        source, weight_files = staging, ["model.safetensors"]
    metrics = model_dir / METRICS
    records = read_metrics(metrics) if metrics.is_file() else []
    has_picture = (model_dir / RECONSTRUCTION).is_file()

    files: dict[str, Path | bytes] = {"config.json": source / "config.json"}
    files.update({name: source / name for name in weight_files})
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
        parameters=sum(p.numel() for p in model.parameters()),
        reconstruction=has_picture,
        format=format,
    ).encode()
    return files


# --------------------------------------------------------------------------------------------- pushing


def resolve_token(token: str | None) -> str:
    """``token``, else ``HF_TOKEN``, else the token saved by ``hf auth login``; ``InputError`` (``argument``
    ``"token"``) if none."""
    token = token or os.environ.get("HF_TOKEN") or None
    if token is None:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise InputError(
            "no Hugging Face token: none given, no HF_TOKEN environment variable and no saved login "
            "(hf auth login); a write token comes from https://huggingface.co/settings/tokens",
            "token",
        )
    return token


def check_endpoint(endpoint: str | None) -> str | None:
    """The Hub URL to talk to: ``endpoint``, else ``HF_ENDPOINT``, else None (the public Hub), without a
    trailing ``/``. ``InputError`` (``argument`` ``"endpoint"``) starting with the value when it is not an
    ``http(s)://`` URL with a valid host (and port), before any request."""
    from urllib.parse import urlsplit

    value = endpoint or os.environ.get("HF_ENDPOINT") or ""
    url = value.rstrip("/")
    if not url:
        return None
    problem = None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is not a number in 0..65535 raises here
    except ValueError as err:
        problem = f"not a URL ({err})"
    else:
        if parts.scheme not in ("http", "https"):
            problem = "not an http:// or https:// URL"
        elif not parts.hostname:
            problem = "no host name"
        elif any(c.isspace() for c in url):
            problem = "white space in the URL"
        elif parts.query or parts.fragment:
            problem = "has a ?query or #fragment"
        else:
            try:
                parts.hostname.rstrip(".").encode("idna")
            except UnicodeError:
                problem = f"host name {parts.hostname!r} is not valid"
    if problem is not None:
        raise InputError(
            f"{value!r}: {problem} (expected a Hub URL such as https://huggingface.co)", "endpoint"
        )
    return url


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
    format: str = DEFAULT_FORMAT,
) -> str:
    """Upload a saved MAE (our folder or a ``vit_mae`` one) to ``repo_id`` in one commit, as ``format``
    (``vit_mae``: plain transformers loads it; ``mae_trainer``: our own); return the commit URL.

    Creates the repo if needed (``private`` only applies to a new repo) and, for a ``revision`` other than
    ``main``, the branch (from ``main``'s head). ``endpoint`` defaults to ``HF_ENDPOINT``, else the
    public Hub.

    Bad input raises ``InputError`` before any request, its ``argument`` naming the parameter at fault
    (``model_dir``, ``repo_id``, ``token``, ``endpoint``, ``format``); so do an endpoint that cannot be
    reached and a token the Hub refuses.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise InputError(f"{repo_id!r}: not a repo id ({err})", "repo_id") from None
    endpoint = check_endpoint(endpoint)
    token = resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="mae_trainer_push_") as staging:
        files = collect_files(
            Path(model_dir),
            repo_id,
            Path(staging),
            format=format,
            license=license,
            datasets=datasets,
            revision=revision,
        )  # input errors before any request
        info = _commit(files, repo_id, token, private, revision, endpoint, commit_message)
    return info.commit_url


def _commit(files, repo_id, token, private, revision, endpoint, commit_message):
    """Create the repo (and branch) if needed and send ``files`` in one ``create_commit``."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token)
    try:
        try:
            repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        except Exception as err:
            # httpx (huggingface_hub >= 1.0) or requests (older): no connection at all is bad input
            names = {c.__name__ for c in type(err).__mro__}
            if names & {"ConnectError", "ConnectionError"}:
                raise InputError(f"{api.endpoint}: cannot connect ({err})", "endpoint") from None
            if names & {"UnsupportedProtocol", "InvalidURL", "InvalidSchema", "MissingSchema"}:
                raise InputError(f"{api.endpoint}: not a usable URL ({err})", "endpoint") from None
            raise
        repo_id = repo_url.repo_id or repo_id  # "name" alone lands in the token owner's namespace
        if revision and revision != "main" and not revision.startswith("refs/pr/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=src) for p, src in files.items()]
        return api.create_commit(
            repo_id,
            operations=operations,
            commit_message=commit_message,
            revision=revision,
            repo_type="model",
        )
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise InputError(
                f"the Hub at {api.endpoint} refused the token for {repo_id} (HTTP {status}): it needs write "
                "access",
                "token",
            ) from None
        raise
