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

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, UsageError
from ..training.schedules import scaled_lr, warmup_cosine_lr
from .data import LabelledImages, eval_transform, open_labelled, train_transform
from .probe import stratified_split


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--model", required=True, help="pre-trained MAE: folder or Hub id, ours or vit_mae")
    data.add_argument("--train", type=Path, required=True, help="labelled .beton, ImageFolder or HF dataset")
    data.add_argument("--val", type=Path, default=None, help="held-out split (same kinds as --train)")
    data.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="without --val: hold out this fraction of --train per class (seeded by --seed)",
    )
    data.add_argument("--split", default="train", help="HF dataset split for --train")
    data.add_argument("--val-split", default="validation", help="HF dataset split for --val")
    data.add_argument("--image-column", default="image")
    data.add_argument("--label-column", default="label")
    data.add_argument("--num-workers", type=int, default=8, help="DataLoader workers per process")
    model = parser.add_argument_group("model")
    model.add_argument("--resolution", type=int, default=None, help="default: the model's image_size")
    model.add_argument("--global-pool", default="avg", choices=["avg", "token"])
    model.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth (0.1 B, 0.2 L/H)")
    aug = parser.add_argument_group("augmentation (MAE fine-tune defaults)")
    aug.add_argument("--augment", default="randaug", choices=["randaug", "three", "none"])
    aug.add_argument("--reprob", type=float, default=0.25, help="random-erasing probability")
    aug.add_argument("--mixup", type=float, default=0.8, help="mixup alpha (0: off)")
    aug.add_argument("--cutmix", type=float, default=1.0, help="cutmix alpha (0: off)")
    aug.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=100)
    optim.add_argument("--max-steps", type=int, default=None)
    optim.add_argument("--batch-size", type=int, default=32, help="images per process per micro-step")
    optim.add_argument("--grad-accum", type=int, default=1)
    optim.add_argument("--blr", type=float, default=5e-4, help="lr = blr × effective batch / 256")
    optim.add_argument("--lr", type=float, default=None, help="absolute peak lr (overrides --blr)")
    optim.add_argument("--min-lr", type=float, default=1e-6)
    optim.add_argument("--warmup-epochs", type=float, default=5)
    optim.add_argument("--weight-decay", type=float, default=0.05)
    optim.add_argument("--layer-decay", type=float, default=0.65, help="layer-wise lr decay (1: off)")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--output-dir", type=Path, default=Path("runs/finetune"))
    run_group.add_argument("--overwrite", action="store_true", help="reuse a directory that holds a model")
    run_group.add_argument("--seed", type=int, default=0)
    run_group.add_argument("--log-every", type=int, default=10, help="optimizer steps between log lines")
    run_group.add_argument(
        "--dist-timeout", type=float, default=1800, help="seconds before a dead rank fails"
    )


def check_arguments(args: argparse.Namespace) -> None:
    for flag in ("epochs", "batch_size", "grad_accum", "log_every"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    if args.num_workers < 0:
        raise UsageError(f"--num-workers {args.num_workers}: must be ≥ 0")
    if (args.mixup > 0 or args.cutmix > 0) and args.batch_size % 2:
        raise UsageError(f"--batch-size {args.batch_size}: mixup/cutmix pair images, use an even batch")
    if not 0 < args.layer_decay <= 1:
        raise UsageError(f"--layer-decay {args.layer_decay}: must be in (0, 1]")
    if not 0 <= args.smoothing < 1 or not 0 <= args.reprob <= 1 or not 0 <= args.drop_path < 1:
        raise UsageError("--smoothing / --reprob / --drop-path: must lie in [0, 1)")
    if not 0 <= args.warmup_epochs < args.epochs:
        raise UsageError(f"--warmup-epochs {args.warmup_epochs}: must be in [0, --epochs={args.epochs})")
    if args.val is None and not 0 < args.val_fraction < 1:
        raise UsageError(f"--val-fraction {args.val_fraction}: must be in (0, 1) when there is no --val")
    from ..modeling.loading import for_flag, resolve_saved_model

    for_flag("--model", resolve_saved_model, args.model)  # folder or Hub id, ours or vit_mae, weights intact
    if (args.output_dir / "model.safetensors").exists() and not args.overwrite:
        raise UsageError(
            f"--output-dir {args.output_dir}: already holds a model (pass --overwrite to replace it)"
        )


def open_split(args: argparse.Namespace, flag: str, train=None):
    """:func:`~mae_trainer.downstream.data.open_labelled` for ``--train`` or (with the training split
    ``train``) ``--val``, whose classes must be the training split's."""
    path, split = (args.train, args.split) if train is None else (args.val, args.val_split)
    columns = {"image_column": args.image_column, "label_column": args.label_column}
    try:
        return open_labelled(path, split=split, train=train, **columns)
    except InputError as err:
        raise UsageError(f"{flag} {err}") from None


def load_model(args: argparse.Namespace, classes: list[str]):
    from ..modeling import MAEForImageClassification
    from ..modeling.loading import for_flag

    return for_flag(
        "--model",
        MAEForImageClassification.from_pretrained,
        args.model,
        num_labels=len(classes),
        id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)},
        drop_path_rate=args.drop_path,
        global_pool=args.global_pool,
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


def run(args: argparse.Namespace) -> dict:
    """Fine-tune; the best model (by held-out top-1) is saved in ``args.output_dir``. Returns its metrics."""
    from accelerate.utils import set_seed
    from timm.data import Mixup
    from timm.optim import param_groups_layer_decay
    from tqdm.auto import tqdm

    from ..training.pretrain import check_finite, make_accelerator, save_model

    check_arguments(args)
    source = open_split(args, "--train")
    if len(source.classes) < 2:
        raise UsageError(f"--train {args.train}: needs at least 2 classes (found {len(source.classes)})")
    if args.val is not None:
        val_source = open_split(args, "--val", source)
        train_idx, val_idx = list(range(len(source))), list(range(len(val_source)))
    else:
        val_source = source
        labels = [source.labels[i] for i in source.order]
        train_idx, val_idx = (
            part.tolist() for part in stratified_split(np.asarray(labels), args.val_fraction, args.seed)
        )
        if not val_idx:
            raise UsageError(f"--val-fraction {args.val_fraction}: holds out no image of {args.train}")

    accelerator = make_accelerator(args)
    set_seed(args.seed)
    model = load_model(args, source.classes)
    config = model.config
    resolution = args.resolution or config.image_size
    if resolution % config.patch_size:
        raise UsageError(f"--resolution {resolution}: not a multiple of the patch size {config.patch_size}")
    per_step = args.batch_size * accelerator.num_processes * args.grad_accum
    if len(train_idx) < per_step:
        raise UsageError(
            f"--batch-size {args.batch_size}: {accelerator.num_processes} process(es) × {args.grad_accum} "
            f"accumulation need {per_step} training images; {args.train} has {len(train_idx)}"
        )
    set_seed(args.seed, device_specific=True)  # augmentation and mixup differ per rank

    train_set = LabelledImages(
        source,
        train_idx,
        train_transform(resolution, args.augment, config.image_mean, config.image_std, args.reprob),
    )
    val_set = LabelledImages(
        val_source, val_idx, eval_transform(resolution, config.image_mean, config.image_std)
    )
    loader_kwargs = {"num_workers": args.num_workers, "persistent_workers": args.num_workers > 0}
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.batch_size, shuffle=True, drop_last=True, **loader_kwargs
    )
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=args.batch_size, **loader_kwargs)

    groups = param_groups_layer_decay(
        model,
        weight_decay=args.weight_decay,
        no_weight_decay_list=model.no_weight_decay(),
        layer_decay=args.layer_decay,
    )
    effective_batch = per_step
    peak_lr = args.lr if args.lr is not None else scaled_lr(args.blr, effective_batch)
    optimizer = torch.optim.AdamW(groups, lr=peak_lr, betas=(0.9, 0.999))
    model, optimizer, train_loader, val_loader = accelerator.prepare(
        model, optimizer, train_loader, val_loader
    )
    dtype = next(model.parameters()).dtype

    steps_per_epoch = len(train_loader) // args.grad_accum
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    warmup_steps = round(args.warmup_epochs * steps_per_epoch)
    classes = len(source.classes)
    mixup = (
        Mixup(
            mixup_alpha=args.mixup,
            cutmix_alpha=args.cutmix,
            label_smoothing=args.smoothing,
            num_classes=classes,
        )
        if args.mixup > 0 or args.cutmix > 0
        else None
    )

    output_dir: Path = args.output_dir
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.jsonl").write_text("")
    hparams = {
        k: str(v) if isinstance(v, Path) else v
        for k, v in vars(args).items()
        if isinstance(v, (int, float, str, bool, Path)) and k != "func"
    }
    accelerator.init_trackers("finetune", config=hparams)
    accelerator.print(
        f"fine-tuning {args.model} ({config.global_pool} pool, {classes} classes, "
        f"{len(train_idx)} train / {len(val_idx)} held-out images) at {resolution}px on "
        f"{accelerator.num_processes} process(es) ({accelerator.distributed_type}, {dtype}); effective "
        f"batch {effective_batch}, peak lr {peak_lr:.3g}, layer decay {args.layer_decay}, {total_steps} steps"
    )

    def log(record: dict) -> None:
        accelerator.log({k: v for k, v in record.items() if k not in ("step", "epoch")}, step=record["step"])
        if accelerator.is_main_process:
            with (output_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")

    step, best = 0, None
    progress = tqdm(total=total_steps, disable=not accelerator.is_local_main_process, desc="finetune")

    def zeros() -> torch.Tensor:
        return torch.zeros((), device=accelerator.device)

    window_loss, window_correct, window_count = zeros(), zeros(), 0
    window_start = time.perf_counter()
    model.train()
    for epoch in range(args.epochs):
        if step >= total_steps:
            break
        for batch, (images, labels) in enumerate(train_loader):
            lr = warmup_cosine_lr(step, total_steps, warmup_steps, peak_lr, args.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if mixup is not None:
                images, targets = mixup(images, labels)
            else:
                targets = soft_targets(labels, classes, args.smoothing)
            with accelerator.accumulate(model):
                out = model(images.to(dtype), labels=targets)
                loss = out.loss
                check_finite(accelerator, loss, step + 1, epoch, batch, output_dir / "checkpoints")
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            window_loss += loss.detach().float()
            # top-1 against each image's own label: on mixup/cutmix batches only the dominant image's
            # label is scored, so this reads low; it is a trend, the held-out top-1 is the measure
            window_correct += (out.logits.detach().argmax(-1) == labels).float().mean()
            window_count += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)
            if step % args.log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": step,
                    "epoch": epoch,
                    "train/loss": accelerator.reduce(window_loss / window_count, "mean").item(),
                    "train/acc1": accelerator.reduce(window_correct / window_count, "mean").item(),
                    "train/lr": lr,
                    "train/images_per_s": window_count
                    * args.batch_size
                    * accelerator.num_processes
                    / elapsed,
                }
                log(record)
                progress.set_postfix(loss=f"{record['train/loss']:.4f}", lr=f"{lr:.2e}")
                window_loss, window_correct, window_count = zeros(), zeros(), 0
                window_start = time.perf_counter()
            if step >= total_steps:
                break
        metrics = evaluate(accelerator, model, val_loader, dtype)
        log({"step": step, "epoch": epoch, **{f"val/{k[4:]}": v for k, v in metrics.items()}})
        accelerator.print(
            f"epoch {epoch}: held-out top-1 {metrics['val_acc1']:.4f} ({metrics['val_images']} images), "
            f"loss {metrics['val_loss']:.4f}"
        )
        if best is None or metrics["val_acc1"] > best["val_acc1"]:
            best = {**metrics, "epoch": epoch, "step": step}
            save_model(accelerator, model, config, output_dir, type(accelerator.unwrap_model(model)), "best")
    progress.close()
    accelerator.end_training()
    if accelerator.is_main_process:
        (output_dir / "results.json").write_text(json.dumps(best, indent=2))
        print(json.dumps({"finetune": "best", **best}), flush=True)
    return best
