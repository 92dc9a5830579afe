"""Fine-tune an MAE encoder for image classification with plain transformers (``ViTForImageClassification``
and the HF ``Trainer``), starting from an mae_trainer model or from its ``vit_mae`` export.

    .venv/bin/python examples/finetune_with_transformers.py --model runs/demo/model \\
        --data path/to/imagefolder --output-dir runs/demo/finetuned --max-steps 200 --batch-size 32

- ``--model``: an mae_trainer ``save_pretrained`` folder (exported here with
  ``mae_trainer.modeling.convert.write_vit_mae`` into ``<output-dir>/vit_mae``), or a folder already
  written by ``mae-trainer export --to vit_mae``.
- ``--data``: an ImageFolder tree (``class_a/*.jpg``, ``class_b/*.jpg``, ...), read with
  ``datasets.load_dataset("imagefolder", data_dir=...)``. If it has ``train/`` and ``validation/`` (or
  ``test/``) sub-folders those splits are used; otherwise a stratified ``--eval-fraction`` is held out.
- ``--image-size``: defaults to the pre-training resolution; another multiple of the patch size resamples the
  position table (bicubic, as MAE fine-tuning does) and the saved model then runs natively at that size.

The encoder's weights and its position table load unchanged into ``ViTForImageClassification``; only the
classifier is new (checked here: the script stops if any other weight would be initialised at random). The
classifier reads the class token after the final layer norm. Runs on a GPU when there is one (``--cpu``
forces the CPU; ``--bf16`` uses bf16 autocast on GPUs that support it). The last line of stdout is a JSON
object with the final evaluation metrics; the fine-tuned model and its image processor are saved in
``--output-dir`` and reload with ``ViTForImageClassification.from_pretrained`` (or the Auto classes).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, required=True, help="mae_trainer model folder or vit_mae export"
    )
    parser.add_argument("--data", type=Path, required=True, help="ImageFolder directory")
    parser.add_argument("--output-dir", type=Path, required=True, help="where the fine-tuned model is saved")
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's pre-training size")
    parser.add_argument(
        "--eval-fraction", type=float, default=0.2, help="held out when there is no val split"
    )
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPUs with bf16 support)")
    args = parser.parse_args(argv)
    if args.max_steps < 1 or args.batch_size < 1 or not 0.0 < args.eval_fraction < 1.0:
        parser.error("--max-steps and --batch-size must be ≥ 1 and --eval-fraction in (0, 1)")
    return args


def vit_mae_folder(model_dir: Path, output_dir: Path) -> Path:
    """The ``vit_mae`` folder to start from: ``model_dir`` itself, or its export if it is an mae_trainer
    model (written into ``<output_dir>/vit_mae``, replacing an earlier export)."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise SystemExit(f"--model {model_dir}: no config.json")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type in ("vit_mae", "vit"):
        return model_dir
    if model_type != "mae_trainer_mae":
        raise SystemExit(f"--model {model_dir}: model_type {model_type!r} is neither ours nor vit_mae/vit")
    from mae_trainer import MAEForPreTraining
    from mae_trainer.modeling.convert import write_vit_mae
    from mae_trainer.publish import publish_folder

    exported = output_dir / "vit_mae"
    model = MAEForPreTraining.from_pretrained(model_dir)
    publish_folder(exported, lambda folder: write_vit_mae(model, folder))  # complete, or the old one kept
    print(f"exported {model_dir} to {exported} (vit_mae)", file=sys.stderr)
    return exported


def load_classifier(folder: Path, labels: list[str]):
    """``ViTForImageClassification`` with the encoder of ``folder`` and a new ``len(labels)``-way head."""
    from transformers import ViTForImageClassification
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the load report lists every decoder tensor; we check it ourselves below
    try:
        model, info = ViTForImageClassification.from_pretrained(
            folder,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # a ViT fine-tuned before, with another number of classes
        )
    finally:
        logging.set_verbosity(verbosity)
    mismatched = {key[0] if isinstance(key, tuple) else key for key in info["mismatched_keys"]}
    new = sorted(set(info["missing_keys"]) | mismatched)  # initialised at random
    not_head = [key for key in new if not key.startswith("classifier.")]
    if not_head or info["error_msgs"]:
        raise SystemExit(f"{folder}: encoder weights did not load ({not_head}, errors {info['error_msgs']})")
    ignored = sorted(info["unexpected_keys"])
    unused = "decoder" if all(key.startswith("decoder.") for key in ignored) else ", ".join(ignored)
    loaded = len(model.state_dict()) - len(new)
    print(
        f"loaded {loaded} encoder tensors from {folder}; new: {', '.join(new) or 'none'}; "
        f"not used: {len(ignored)} ({unused})",
        file=sys.stderr,
    )
    return model


def resize_position_table(model, image_size: int) -> None:
    """Make ``model`` (a ViT) run natively at ``image_size``: resample the patch part of its position table
    to the new grid (bicubic) and update the sizes the embeddings check against and the config."""
    embeddings = model.vit.embeddings
    patch = model.config.patch_size
    if image_size % patch:
        raise SystemExit(f"--image-size {image_size}: not a multiple of the patch size {patch}")
    if tuple(embeddings.patch_embeddings.image_size) == (image_size, image_size):
        return
    table = embeddings.position_embeddings.data
    dim, old = table.shape[-1], math.isqrt(table.shape[1] - 1)
    new = image_size // patch
    grid = table[:, 1:].reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    grid = nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, dim).to(table.dtype)
    embeddings.position_embeddings = nn.Parameter(torch.cat([table[:, :1], grid], dim=1))
    embeddings.patch_embeddings.image_size = (image_size, image_size)
    embeddings.patch_embeddings.num_patches = new * new
    embeddings.image_size = (image_size, image_size)
    model.config.image_size = image_size


def load_image_processor(folder: Path, config, image_size: int):
    from transformers import ViTImageProcessor

    if (folder / "preprocessor_config.json").is_file():
        processor = ViTImageProcessor.from_pretrained(folder)
    else:  # a bare vit_mae folder: the statistics the model was pre-trained with, else ImageNet's
        processor = ViTImageProcessor(
            image_mean=getattr(config, "image_mean", [0.485, 0.456, 0.406]),
            image_std=getattr(config, "image_std", [0.229, 0.224, 0.225]),
        )
    processor.size = {"height": image_size, "width": image_size}
    return processor


def load_splits(data_dir: Path, eval_fraction: float, seed: int):
    """(train, eval) ``datasets.Dataset`` with ``image`` and ``label`` columns, and the label names."""
    from datasets import load_dataset

    dataset = load_dataset("imagefolder", data_dir=str(data_dir))
    held_out = next((name for name in ("validation", "test") if name in dataset), None)
    if held_out is not None:
        train, evaluation = dataset["train"], dataset[held_out]
    else:
        split = dataset["train"].train_test_split(
            test_size=eval_fraction, stratify_by_column="label", seed=seed
        )
        train, evaluation = split["train"], split["test"]
    return train, evaluation, train.features["label"].names


def make_transforms(processor, image_size: int):
    from torchvision.transforms import v2

    augment = v2.Compose(
        [v2.RandomResizedCrop(image_size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    )

    def pixels(images) -> torch.Tensor:
        return processor(images=images, return_tensors="pt")["pixel_values"]

    def train_transform(batch: dict) -> dict:
        images = [augment(image.convert("RGB")) for image in batch["image"]]
        return {"pixel_values": pixels(images), "labels": batch["label"]}

    def eval_transform(batch: dict) -> dict:
        images = [image.convert("RGB") for image in batch["image"]]
        return {"pixel_values": pixels(images), "labels": batch["label"]}

    return train_transform, eval_transform


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples]),
    }


def accuracy(prediction) -> dict[str, float]:
    logits = (
        prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    )
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(args.seed)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    folder = vit_mae_folder(args.model, args.output_dir)
    train, evaluation, labels = load_splits(args.data, args.eval_fraction, args.seed)

    model = load_classifier(folder, labels)
    native = model.config.image_size
    image_size = args.image_size or (native if isinstance(native, int) else native[0])
    resize_position_table(model, image_size)
    processor = load_image_processor(folder, model.config, image_size)
    train_transform, eval_transform = make_transforms(processor, image_size)
    train.set_transform(train_transform)
    evaluation.set_transform(eval_transform)

    on_gpu = torch.cuda.is_available() and not args.cpu
    training_args = TrainingArguments(
        output_dir=str(args.output_dir),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.max_steps // 10,
        lr_scheduler_type="cosine",
        logging_steps=max(1, args.max_steps // 10),
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=not on_gpu,
        bf16=args.bf16 and on_gpu and torch.cuda.is_bf16_supported(),
        remove_unused_columns=False,  # the transforms need the image column
        dataloader_num_workers=args.num_workers,
        dataloader_pin_memory=on_gpu,
        seed=args.seed,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        data_collator=collate,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=processor,
        compute_metrics=accuracy,
    )
    trained = trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(str(args.output_dir))  # model, config (model_type "vit") and the image processor
    result = {
        "train_loss": trained.training_loss,
        "steps": trained.global_step,
        "train_images": len(train),
        "eval_images": len(evaluation),
        "image_size": image_size,
        "device": str(trainer.args.device),
        **{key: value for key, value in metrics.items() if key.startswith("eval_")},
        "output_dir": str(args.output_dir),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
