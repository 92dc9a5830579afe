"""Model cards (``README.md``) of the folders ``mae-trainer push`` publishes (:mod:`mae_trainer.hub`): the
pre-trained MAE's card (architecture, pre-training recipe and loss read back from ``metrics.jsonl`` and
``resolved_config.yaml``, loading snippets for plain transformers, reconstructions) and the fine-tuned
classifier's (``results.json`` as ``model-index``, the fine-tune recipe), with their metadata (license,
datasets, base model from ``provenance.json``). Over 400 lines as one cohesive thing: the text of two cards
and the reading of the run files they quote; nothing here talks to the Hub."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from .errors import InputError

DEFAULT_LICENSE = "apache-2.0"
TAGS = ["mae", "masked-autoencoder", "vision", "self-supervised", "mae_trainer", "pretraining"]
CLASSIFIER_TAGS = ["mae", "vision", "image-classification", "mae_trainer", "fine-tuned"]
CLASSIFIER_PIPELINE_TAG = "image-classification"
LIBRARY_NAME = "transformers"
DEFAULT_FORMAT = "transformers"  # the format a card's loading snippets show by default (hub.FORMATS)
RECONSTRUCTION = "reconstruction.png"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
RESOLVED_CONFIG = "resolved_config.yaml"

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
