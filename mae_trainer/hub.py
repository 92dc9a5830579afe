"""Publish a saved model folder to the Hugging Face Hub (``mae-trainer push``, ``pretrain --push-to-hub``).

Two kinds of folder, told apart by their ``config.json``:

- a pre-trained MAE (our ``save_pretrained`` folder or a ``vit_mae`` one), read with the one loader
  (``modeling/loading.py``: weights checked and loaded);
- a fine-tuned classifier (our ``MAEForImageClassification`` save, ``architectures:
  ["MAEForImageClassification"]``, with ``results.json`` from ``mae-trainer finetune``).

One commit uploads, for ``--format transformers`` (the default; ``vit_mae`` is the same choice under its
old name): files plain transformers loads without this package: a pre-trained MAE as ``vit_mae``
(``ViTMAEForPreTraining``, ``ViTModel``, ``ViTForImageClassification``), a classifier as
``BeitForImageClassification`` (mean-pool head) or ``ViTForImageClassification`` (class-token head,
``convert.to_transformers_classifier``); for ``--format mae_trainer``: our ``config.json`` and safetensors
weights as they are (loading needs ``import mae_trainer``). Both add ``reconstruction.png`` when present, a
``preprocessor_config.json`` that makes ``AutoImageProcessor`` prepare images as our evaluation does
(``convert.image_processor``) and a model card ``README.md`` (from the config, ``metrics.jsonl``,
``results.json``, ``resolved_config.yaml`` and ``provenance.json``: ``base_model``, ``datasets``,
``license``). Nothing else in the folder (``checkpoints/``, ``tensorboard/``, ...) is sent. After the
commit the folder's ``provenance.json`` records ``pushed_to`` (:mod:`mae_trainer.provenance`).

The card declares ``library_name: transformers``: the Hub keys its library filter and "Use this model"
snippet on it and only knows registered libraries; the ``mae_trainer`` tag marks our models. Its
``pipeline_tag`` is a promise that ``transformers.pipeline(TAG, model=REPO)`` works: a classifier in
transformers format gets ``image-classification``. A pre-trained MAE gets none: transformers builds
``ViTMAEModel`` for ``image-feature-extraction``, which shuffles the patch tokens and hides
``mask_ratio`` of them at random on every call (even at ``mask_ratio`` 0 the order is shuffled), so
that pipeline would return random features; the card shows ``ViTModel`` for deterministic features.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from .errors import InputError

DEFAULT_LICENSE = "apache-2.0"
DEFAULT_COMMIT_MESSAGE = "Upload model trained with mae_trainer"
TAGS = ["mae", "masked-autoencoder", "vision", "self-supervised", "mae_trainer", "pretraining"]
CLASSIFIER_TAGS = ["mae", "vision", "image-classification", "mae_trainer", "fine-tuned"]
CLASSIFIER_PIPELINE_TAG = "image-classification"
LIBRARY_NAME = "transformers"
# "transformers" (default): plain transformers loads the repo; "vit_mae" is its former name, kept
FORMATS = ("transformers", "vit_mae", "mae_trainer")
DEFAULT_FORMAT = "transformers"
RECONSTRUCTION = "reconstruction.png"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
RESOLVED_CONFIG = "resolved_config.yaml"
CLASSIFIER_ARCHITECTURE = "MAEForImageClassification"


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
    base_model: str | None = None,
) -> str:
    """The ``README.md`` text of a pre-trained MAE: YAML metadata (no ``pipeline_tag``: see the module
    docstring), what the model is, how to load it, the recipe, the shape."""
    import yaml

    metadata: dict = {"library_name": LIBRARY_NAME, "license": license, "tags": list(TAGS)}
    if base_model:
        metadata["base_model"] = base_model
    if datasets:
        metadata["datasets"] = list(datasets)
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
    if base_model:
        lines += [f"Pre-training started from the weights of `{base_model}`.", ""]
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


def folder_kind(model_dir: Path) -> str:
    """``"classifier"`` for a fine-tuned ``MAEForImageClassification`` save, else ``"pretrained"`` (an MAE,
    ours or ``vit_mae``; the loader refuses anything else)."""
    try:
        raw = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return "pretrained"  # the loader names what is wrong
    architectures = raw.get("architectures") if isinstance(raw, dict) else None
    return "classifier" if CLASSIFIER_ARCHITECTURE in (architectures or []) else "pretrained"


def card_metadata(
    model_dir: Path, license: str | None, datasets: list[str] | None, default_license: str = DEFAULT_LICENSE
) -> tuple[str, list[str], str | None]:
    """License, datasets and base model for the card: ``license`` if given, else the folder's provenance,
    else ``default_license``; the provenance's datasets followed by ``datasets``; the provenance's
    ``base_model``."""
    from .provenance import read_provenance

    record = read_provenance(model_dir)
    recorded = record.get("datasets") if isinstance(record.get("datasets"), list) else []
    base = record.get("base_model")
    chosen = license or record.get("license") or default_license
    return (
        str(chosen),
        _unique([*map(str, recorded), *(datasets or [])]),
        base if isinstance(base, str) else None,
    )


def _load(cls, saved, *, complete: bool):
    try:
        model, info = cls.from_pretrained(saved.folder, output_loading_info=True)
    except InputError as err:  # ModelLoadError, naming the folder
        err.argument = "model_dir"
        raise
    if complete and info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise InputError(
            f"{saved.spec}: the weights lack {', '.join(missing[:3])}: not a fine-tuned {cls.__name__}",
            "model_dir",
        )
    return model


def collect_files(
    model_dir: Path,
    repo_id: str,
    staging: Path,
    *,
    format: str = DEFAULT_FORMAT,
    license: str | None = None,
    datasets: list[str] | None = None,
    revision: str | None = None,
) -> dict[str, Path | bytes]:
    """Every file one push sends, path in the repo → local file (``Path``) or generated content (``bytes``).

    ``model_dir`` is a pre-trained MAE (read with the one loader: our folder or a ``vit_mae`` one) or a
    fine-tuned classifier (:func:`folder_kind`); the weights are loaded, so missing or truncated ones are
    refused here; converted weights are written under ``staging``. ``license`` None: the folder's
    provenance, else the default. Raises ``InputError`` (``argument`` ``"model_dir"``) naming the folder
    when it cannot be used."""
    from .modeling.loading import resolve_saved_model

    if format not in FORMATS:
        raise InputError(f"{format!r}: choose {' or '.join(FORMATS)}", "format")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: not a directory (expected a save_pretrained folder)", "model_dir")
    try:
        saved = resolve_saved_model(model_dir)
    except InputError as err:
        err.argument = "model_dir"
        raise
    license, datasets, base_model = card_metadata(model_dir, license, datasets)
    if folder_kind(model_dir) == "classifier" and saved.is_ours:
        return _classifier_files(
            model_dir, saved, repo_id, staging, format, license, datasets, base_model, revision
        )
    from .modeling import MAEForPreTraining
    from .modeling.convert import write_vit_mae

    model = _load(MAEForPreTraining, saved, complete=False)
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
        format="mae_trainer" if format == "mae_trainer" else "vit_mae",
        base_model=base_model,
    ).encode()
    return files


# ------------------------------------------------------------------------------ fine-tuned classifier


def read_results(model_dir: Path) -> dict:
    """The held-out metrics of the saved weights from ``results.json`` (``{}`` if absent or unreadable).
    When ``weights`` says ``"ema"`` and an ``ema`` mapping holds the metrics, those are the saved weights'
    ones; ``weights`` is kept in the result."""
    try:
        results = json.loads((Path(model_dir) / RESULTS).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(results, dict):
        return {}
    ema = results.get("ema")
    if results.get("weights") == "ema" and isinstance(ema, dict) and "val_acc1" in ema:
        return {**results, **ema}
    return results


def read_recipe(model_dir: Path) -> dict:
    """``resolved_config.yaml`` of the run as a mapping (``{}`` if absent or unreadable)."""
    import yaml

    try:
        recipe = yaml.safe_load((Path(model_dir) / RESOLVED_CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return recipe if isinstance(recipe, dict) else {}


RECIPE_KEYS = (
    ("epochs", "epochs"),
    ("max-steps", "max optimizer steps"),
    ("batch-size", "images per process per step"),
    ("global-batch-size", "images per optimizer step"),
    ("blr", "base learning rate (per 256 images)"),
    ("lr", "peak learning rate"),
    ("warmup-epochs", "warmup epochs"),
    ("weight-decay", "weight decay"),
    ("layer-decay", "layer-wise lr decay"),
    ("drop-path", "stochastic depth"),
    ("augment", "augmentation"),
    ("mixup", "mixup alpha"),
    ("cutmix", "cutmix alpha"),
    ("smoothing", "label smoothing"),
    ("reprob", "random-erasing probability"),
    ("resolution", "resolution (px)"),
    ("ema", "EMA of the weights"),
)


def _classifier_recipe(recipe: dict, records: list[dict]) -> list[str]:
    recipe = {str(k).replace("_", "-"): v for k, v in recipe.items()}
    rows = [(name, _fmt(recipe[key])) for key, name in RECIPE_KEYS if recipe.get(key) is not None]
    source = f"`{RESOLVED_CONFIG}`"
    if not rows and records:
        steps = [s for r in records if (s := _number(r, "step")) is not None]
        epochs = [e for r in records if (e := _number(r, "epoch")) is not None]
        lrs = [x for r in records if (x := _number(r, "lr")) is not None]
        rows = [
            ("optimizer steps", _fmt(max(steps)) if steps else "unknown"),
            ("epochs", _fmt(int(max(epochs)) + 1) if epochs else "unknown"),
            ("peak learning rate", _fmt(max(lrs)) if lrs else "unknown"),
        ]
        source = f"`{METRICS}`"
    if not rows:
        return []
    return [
        "## Training recipe",
        "",
        f"`mae-trainer finetune` (the reference MAE fine-tune recipe), from the run's {source}:",
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
    ]


def _eval_results(results: dict, datasets: list[str], recipe: dict) -> list:
    from huggingface_hub import EvalResult

    dataset = datasets[0] if datasets else None
    recipe = {str(k).replace("_", "-"): v for k, v in recipe.items()}
    split = None
    if recipe.get("val"):
        split = str(recipe.get("val-split") or "validation")
    elif recipe.get("val-fraction") is not None:
        split = f"held-out {_fmt(recipe['val-fraction'])} of train"
    common = dict(
        task_type="image-classification",
        task_name="Image Classification",
        dataset_type=dataset or "custom",
        dataset_name=dataset or "held-out split of the fine-tuning data",
        dataset_split=split,
    )
    found = []
    for key, name in (("val_acc1", "top-1 accuracy"), ("val_acc5", "top-5 accuracy")):
        value = _number(results, key)
        if value is not None:
            kind = "accuracy" if key == "val_acc1" else "top_5_accuracy"
            found.append(EvalResult(**common, metric_type=kind, metric_name=name, metric_value=value))
    return found


def build_classifier_card(
    config,
    repo_id: str,
    *,
    results: dict | None = None,
    recipe: dict | None = None,
    records: list[dict] | None = None,
    license: str = DEFAULT_LICENSE,
    datasets: list[str] | None = None,
    base_model: str | None = None,
    revision: str | None = None,
    architecture: str = "BeitForImageClassification",
    format: str = DEFAULT_FORMAT,
) -> str:
    """The ``README.md`` of a fine-tuned classifier: metadata built with ``huggingface_hub``'s
    ``ModelCardData`` (``model-index`` from ``results.json``), results, how to load, the recipe."""
    from huggingface_hub import ModelCardData

    results, recipe, datasets = results or {}, recipe or {}, list(datasets or [])
    name = repo_id.split("/")[-1]
    ours = format == "mae_trainer"
    evals = _eval_results(results, datasets, recipe)
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        license=license,
        tags=list(CLASSIFIER_TAGS),
        datasets=datasets or None,
        base_model=base_model,
        # a promise that pipeline("image-classification", model=REPO) works in plain transformers
        pipeline_tag=None if ours else CLASSIFIER_PIPELINE_TAG,
        model_name=name if evals else None,
        eval_results=evals or None,
    )
    rev = f', revision="{revision}"' if revision and revision != "main" else ""
    labels = [str(config.id2label[i]) for i in sorted(config.id2label, key=int)]
    shown = ", ".join(f"`{label}`" for label in labels[:20]) + (", ..." if len(labels) > 20 else "")
    origin = f" of `{base_model}`" if base_model else ""
    trained_on = f" on {', '.join(f'`{d}`' for d in datasets)}" if datasets else ""
    pool = (
        "the mean of the patch tokens, then a LayerNorm and a linear layer (the MAE fine-tune head)"
        if config.global_pool == "avg"
        else "the class token after the encoder's final LayerNorm, then a linear layer"
    )
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {name}",
        "",
        f"An image classifier fine-tuned{trained_on} with `mae_trainer` from the Masked Autoencoder (MAE; He "
        f"et al., 2022, [arXiv:2111.06377](https://arxiv.org/abs/2111.06377)) encoder{origin}: a Vision "
        f"Transformer ({config.hidden_size} wide, {config.num_hidden_layers} blocks, {config.patch_size} px "
        f"patches, {config.image_size} px input) whose head reads {pool}. {len(labels)} classes: {shown}.",
        "",
    ]
    acc1, acc5 = _number(results, "val_acc1"), _number(results, "val_acc5")
    if acc1 is not None:
        images = _number(results, "val_images")
        weights = results.get("weights")
        lines += [
            "## Results",
            "",
            "On the held-out split"
            + (f" ({_fmt(images)} images)" if images is not None else "")
            + (f", {weights} weights" if weights in ("ema", "raw") else "")
            + ":",
            "",
            "| top-1 | top-5 | epoch | step |",
            "|---|---|---|---|",
            f"| {100 * acc1:.2f} % | {'' if acc5 is None else f'{100 * acc5:.2f} %'} "
            f"| {_fmt(results.get('epoch', ''))} | {_fmt(results.get('step', ''))} |",
            "",
        ]
    from .modeling.convert import EVAL_CROP_PCT

    short = math.floor(config.image_size / EVAL_CROP_PCT)
    preprocessing = (
        f"The image processor resizes the short side to {short} px (bicubic), crops the centre "
        f"{config.image_size} px and normalises with the model's mean and std: the evaluation preprocessing "
        "of `mae_trainer`."
    )
    if ours:
        lines += [
            "## How to load",
            "",
            f"The weights are in `mae_trainer`'s own format (`model_type: {config.model_type}`): plain "
            "transformers cannot read them; `import mae_trainer` registers the model type with transformers' "
            "Auto classes.",
            "",
            "```python",
            "import mae_trainer  # registers the model type with transformers",
            "import torch",
            "from PIL import Image",
            "from transformers import AutoImageProcessor, AutoModelForImageClassification",
            "",
            f'processor = AutoImageProcessor.from_pretrained("{repo_id}"{rev})',
            f'model = AutoModelForImageClassification.from_pretrained("{repo_id}"{rev})',
            'inputs = processor(images=Image.open("photo.jpg"), return_tensors="pt")',
            "with torch.no_grad():",
            "    logits = model(**inputs).logits",
            "print(model.config.id2label[logits.argmax(-1).item()])",
            "```",
            "",
            preprocessing,
            "",
        ]
    else:
        why = (
            "It is stored as `BeitForImageClassification` configured as a plain ViT (absolute position "
            "embeddings, no relative position bias, no layer scale, mean pooling), the transformers class "
            "that computes exactly this head: the mean of the patch tokens, its LayerNorm, the linear "
            "classifier. The key projection has no bias there: a key bias adds the same amount to every "
            "score of a query, which the softmax ignores, so the predictions are those of the fine-tuned "
            "model."
            if architecture.startswith("Beit")
            else "It is stored as `ViTForImageClassification`: the class token after the final LayerNorm, "
            "then the linear classifier, as fine-tuned."
        )
        lines += [
            "## How to load",
            "",
            "With transformers alone (nothing else to install):",
            "",
            "```python",
            "from transformers import pipeline",
            "",
            f'classifier = pipeline("image-classification", model="{repo_id}"{rev})',
            'print(classifier("photo.jpg"))  # the most likely classes (up to 5) with their scores',
            "```",
            "",
            "or the model itself:",
            "",
            "```python",
            "import torch",
            "from PIL import Image",
            "from transformers import AutoImageProcessor, AutoModelForImageClassification",
            "",
            f'processor = AutoImageProcessor.from_pretrained("{repo_id}"{rev})',
            f'model = AutoModelForImageClassification.from_pretrained("{repo_id}"{rev})  # {architecture}',
            'inputs = processor(images=Image.open("photo.jpg"), return_tensors="pt")',
            "with torch.no_grad():",
            "    logits = model(**inputs).logits",
            "print(model.config.id2label[logits.argmax(-1).item()])",
            "```",
            "",
            preprocessing + " " + why,
            "",
        ]
    lines += _classifier_recipe(recipe, records or [])
    return "\n".join(lines)


def _classifier_files(model_dir, saved, repo_id, staging, format, license, datasets, base_model, revision):
    from .modeling import MAEForImageClassification
    from .modeling.convert import write_transformers_classifier

    model = _load(MAEForImageClassification, saved, complete=True).eval()
    config = model.config
    if format == "mae_trainer":
        source, weight_files, architecture = model_dir, saved.weight_files, CLASSIFIER_ARCHITECTURE
    else:
        write_transformers_classifier(model, staging)
        source, weight_files = staging, ["model.safetensors"]
        architecture = json.loads((staging / "config.json").read_text())["architectures"][0]
    metrics = model_dir / METRICS
    files: dict[str, Path | bytes] = {"config.json": source / "config.json"}
    files.update({name: source / name for name in weight_files})
    files["preprocessor_config.json"] = image_processor_json(config)
    files["README.md"] = build_classifier_card(
        config,
        repo_id,
        results=read_results(model_dir),
        recipe=read_recipe(model_dir),
        records=read_metrics(metrics) if metrics.is_file() else [],
        license=license,
        datasets=datasets,
        base_model=base_model,
        revision=revision,
        architecture=architecture,
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
    license: str | None = None,
    datasets: list[str] | None = None,
    format: str = DEFAULT_FORMAT,
) -> str:
    """Upload a saved model folder to ``repo_id`` in one commit and return the commit URL: a pre-trained MAE
    (our folder or a ``vit_mae`` one) or a fine-tuned classifier (our ``MAEForImageClassification`` save),
    told apart by the folder's config. ``format`` ``transformers`` (or its old name ``vit_mae``): plain
    transformers loads the repo (``vit_mae``; a classifier as BEiT or ViT); ``mae_trainer``: our own files.

    The card's ``license`` defaults to the folder's ``provenance.json``, else apache-2.0; ``datasets`` are
    added to the provenance's. After the commit the folder's provenance records ``pushed_to`` (the repo id).

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
        info, repo_id = _commit(files, repo_id, token, private, revision, endpoint, commit_message)
    _record_push(Path(model_dir), repo_id)
    return info.commit_url


def _record_push(model_dir: Path, repo_id: str) -> None:
    """``pushed_to`` in the folder's provenance; a folder that cannot be written only warns (the push is
    done)."""
    import warnings

    from .provenance import record_push

    try:
        record_push(model_dir, repo_id)
    except OSError as err:
        warnings.warn(
            f"{model_dir}: pushed, but could not record it in provenance.json ({err})", stacklevel=2
        )


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
        info = api.create_commit(
            repo_id,
            operations=operations,
            commit_message=commit_message,
            revision=revision,
            repo_type="model",
        )
        return info, repo_id
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise InputError(
                f"the Hub at {api.endpoint} refused the token for {repo_id} (HTTP {status}): it needs write "
                "access",
                "token",
            ) from None
        raise


# ------------------------------------------------------------------------------ the training commands


def check_push(config) -> None:
    """A training run's ``--push-to-hub`` settings, checked before any work (the repo id, a token, the
    endpoint): ``ConfigError`` naming the flag, not a failure after a day of training."""
    if not config.push_to_hub:
        return
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from .config import ConfigError, about

    try:
        validate_repo_id(config.push_to_hub)
    except HFValidationError as err:
        raise ConfigError("push_to_hub", repr(config.push_to_hub), str(err)) from None
    with about("hub_token"):
        resolve_token(config.hub_token)
    with about("hub_endpoint"):
        check_endpoint(config.hub_endpoint)


def push_run(config, folder: Path) -> str:
    """Upload a training run's saved ``folder`` to ``--push-to-hub`` with the run's Hub settings (license
    None: the run's provenance, else the default); returns the commit URL."""
    return push_to_hub(
        folder,
        config.push_to_hub,
        token=config.hub_token,
        private=config.hub_private,
        revision=config.hub_revision,
        endpoint=config.hub_endpoint,
        license=config.hub_license,
        datasets=config.dataset_names,
    )
