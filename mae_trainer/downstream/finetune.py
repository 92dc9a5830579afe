"""Fine-tuning (``mae-trainer finetune``): the reference MAE fine-tune recipe on a pre-trained encoder.

``MAEForImageClassification.from_pretrained`` (global-average pool + ``fc_norm`` or the class token,
stochastic depth) → AdamW with layer-wise lr decay (timm's ``param_groups_layer_decay``, 0.65) and
weight decay off norms/biases/class token → RandAugment (or DeiT III's ThreeAugment), random erasing,
mixup/cutmix with label smoothing (timm's ``Mixup``) → per-iteration warmup + cosine lr → top-1 on the
held-out split after every epoch; the best model is saved with ``save_pretrained`` (fp32).

Runs as is or under ``accelerate launch`` (DeepSpeed ZeRO-1 BF16 configs included): data loaders are torch
``DataLoader``s that accelerate shards across ranks.
"""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError, FinetuneConfig, about, world_size
from ..data.schedules import check_side
from ..publish import publish_text
from ..training.engine import Engine, adamw
from ..training.schedules import scaled_lr
from .data import LabelledImages, eval_transform, open_labelled, train_transform
from .probe import stratified_split


def check(config: FinetuneConfig) -> None:
    """Checks that need no process group: fail before any model or image is read."""
    from ..modeling.loading import resolve_saved_model

    with about("model"):
        resolve_saved_model(config.model)  # folder or Hub id, ours or vit_mae, weights intact
    config.check_output()


def open_split(config: FinetuneConfig, key: str, train=None):
    """:func:`~mae_trainer.downstream.data.open_labelled` for ``train`` or (with the training split
    ``train``) ``val``, whose classes must be the training split's."""
    path, split = (config.train, config.split) if train is None else (config.val, config.val_split)
    with about(key):
        return open_labelled(
            path, split=split, train=train, image_column=config.image_column, label_column=config.label_column
        )


def load_model(config: FinetuneConfig, classes: list[str]):
    from ..modeling import MAEForImageClassification

    with about("model"):
        return MAEForImageClassification.from_pretrained(
            config.model,
            num_labels=len(classes),
            id2label=dict(enumerate(classes)),
            label2id={c: i for i, c in enumerate(classes)},
            drop_path_rate=config.drop_path,
            global_pool=config.global_pool,
        )


def soft_targets(labels: torch.Tensor, classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets with label smoothing (what timm's Mixup produces when it mixes nothing)."""
    off = smoothing / classes
    return F.one_hot(labels, classes).float() * (1.0 - smoothing) + off


@torch.no_grad()
def evaluate(accelerator, model, loader, dtype) -> dict:
    """Top-1 (and top-5 with ≥ 5 classes) and the loss on every held-out image, over all ranks."""
    model.eval()
    correct1 = correct5 = seen = 0
    loss_sum = 0.0
    for images, labels in loader:
        logits = model(images.to(dtype)).logits.float()
        logits, labels = accelerator.gather_for_metrics((logits, labels))
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == labels).sum().item()
        correct5 += (top == labels[:, None]).any(dim=1).sum().item()
        seen += labels.numel()
    model.train()
    result = {"val_acc1": correct1 / seen, "val_loss": loss_sum / seen, "val_images": seen}
    if logits.shape[1] >= 5:
        result["val_acc5"] = correct5 / seen
    return result


def run(config: FinetuneConfig) -> dict:
    """Fine-tune; the best model (by held-out top-1) is saved in ``config.output_dir``. Returns its
    metrics."""
    from accelerate.utils import set_seed
    from timm.data import Mixup
    from timm.optim import param_groups_layer_decay

    check(config)
    batch_size = config.per_rank_batch(world_size())
    source = open_split(config, "train")
    if len(source.classes) < 2:
        raise ConfigError("train", config.train, f"needs at least 2 classes (found {len(source.classes)})")
    if config.val is not None:
        val_source = open_split(config, "val", source)
        train_idx, val_idx = list(range(len(source))), list(range(len(val_source)))
    else:
        val_source = source
        labels = [source.labels[i] for i in source.order]
        train_idx, val_idx = (
            part.tolist() for part in stratified_split(np.asarray(labels), config.val_fraction, config.seed)
        )
        if not val_idx:
            raise ConfigError("val_fraction", config.val_fraction, f"holds out no image of {config.train}")

    set_seed(config.seed)
    model = load_model(config, source.classes)  # before the engine: a refused model leaves no output folder
    model_config = model.config
    resolution = config.resolution or model_config.image_size
    with about("resolution"):
        check_side(resolution, model_config.patch_size)
    world = world_size()
    per_step = batch_size * world * config.grad_accum
    if len(train_idx) < per_step:
        raise ConfigError(
            "batch_size",
            batch_size,
            f"{world} process(es) × {config.grad_accum} accumulation need {per_step} training images; "
            f"{config.train} has {len(train_idx)}",
        )
    engine = Engine(config, micro_batch=batch_size, name="finetune", metric_prefix="train/")
    set_seed(config.seed, device_specific=True)  # augmentation and mixup differ per rank

    mean, std = model_config.image_mean, model_config.image_std
    train_set = LabelledImages(
        source, train_idx, train_transform(resolution, config.augment, mean, std, config.reprob)
    )
    val_set = LabelledImages(val_source, val_idx, eval_transform(resolution, mean, std))
    loader_kwargs = {"num_workers": config.num_workers, "persistent_workers": config.num_workers > 0}
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=batch_size, shuffle=True, drop_last=True, **loader_kwargs
    )
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=batch_size, **loader_kwargs)

    groups = param_groups_layer_decay(
        model,
        weight_decay=config.weight_decay,
        no_weight_decay_list=model.no_weight_decay(),
        layer_decay=config.layer_decay,
    )
    peak_lr = config.lr if config.lr is not None else scaled_lr(config.blr, per_step)
    optimizer = adamw(groups, peak_lr, (0.9, 0.999), engine.device)
    model, optimizer, train_loader, val_loader = engine.prepare(model, optimizer, train_loader, val_loader)
    dtype = next(model.parameters()).dtype

    steps_per_epoch = len(train_loader) // config.grad_accum
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    classes = len(source.classes)
    mixup = (
        Mixup(
            mixup_alpha=config.mixup,
            cutmix_alpha=config.cutmix,
            label_smoothing=config.smoothing,
            num_classes=classes,
        )
        if config.mixup > 0 or config.cutmix > 0
        else None
    )

    engine.start(total_steps, config.to_recipe(), fresh=True)
    engine.print(
        f"fine-tuning {config.model} ({model_config.global_pool} pool, {classes} classes, "
        f"{len(train_idx)} train / {len(val_idx)} held-out images) at {resolution}px on "
        f"{engine.num_processes} process(es) ({engine.accelerator.distributed_type}, {dtype}); effective "
        f"batch {per_step}, peak lr {peak_lr:.3g}, layer decay {config.layer_decay}, {total_steps} steps"
    )
    best = None
    model.train()
    for epoch in range(config.epochs):
        if engine.done:
            break
        for batch, (images, labels) in enumerate(engine.timed(train_loader)):
            engine.set_lr(optimizer, peak_lr, warmup_steps)
            if mixup is not None:
                images, targets = mixup(images, labels)
            else:
                targets = soft_targets(labels, classes, config.smoothing)
            out, stepped = engine.micro_step(
                model,
                optimizer,
                lambda: model(images.to(dtype), labels=targets),  # noqa: B023 (called at once)
                images=images.shape[0],
                where=f"epoch {epoch}, batch {batch}",
            )
            # top-1 against each image's own label: on mixup/cutmix batches only the dominant image's
            # label is scored, so this reads low; it is a trend, the held-out top-1 is the measure
            engine.add("acc1", (out.logits.detach().argmax(-1) == labels).float().mean())
            if stepped and engine.log_due:
                engine.log(epoch)
            if engine.done:
                break
        metrics = evaluate(engine.accelerator, model, val_loader, dtype)
        engine.write({"step": engine.step, "epoch": epoch, **{f"val/{k[4:]}": v for k, v in metrics.items()}})
        engine.print(
            f"epoch {epoch}: held-out top-1 {metrics['val_acc1']:.4f} ({metrics['val_images']} images), "
            f"loss {metrics['val_loss']:.4f}"
        )
        if best is None or metrics["val_acc1"] > best["val_acc1"]:
            best = {**metrics, "epoch": epoch, "step": engine.step}
            engine.save_model(model, type(engine.accelerator.unwrap_model(model)), model_config, "best")
    engine.finish()
    if engine.is_main:
        publish_text(config.output_dir / "results.json", json.dumps(best, indent=2))
        print(json.dumps({"finetune": "best", **best}), flush=True)
    return best
