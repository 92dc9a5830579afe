"""Fine-tuning (``mae-trainer finetune``): the reference MAE fine-tune recipe on a pre-trained encoder, at the
scale and with the safety of pre-training. Read top to bottom: accelerator → data → optimizer → resume →
engine → loop (lr, step, EMA, log, checkpoint) → evaluation and best model per epoch → results → push.
What the run is (splits, model, layout, resume contract) was settled before, by ``finetune_plan.check``.

``MAEForImageClassification.from_pretrained`` (global-average pool + ``fc_norm`` or the class token,
stochastic depth) → AdamW with layer-wise lr decay (timm's ``param_groups_layer_decay``, 0.65) and
weight decay off norms/biases/class token → RandAugment (or DeiT III's ThreeAugment), random erasing,
mixup/cutmix with label smoothing (timm's ``Mixup``) → per-iteration warmup + cosine lr → top-1/top-5 on
the held-out split after every epoch; the best model is saved with ``save_pretrained`` (fp32), and with
``--ema-decay`` an exponential moving average of the weights (timm's ``ModelEmaV3``, fp32) is evaluated
and its best saved beside it (``OUTPUT/ema``).

Data (``train_data.py``): a ``.beton`` goes through pre-training's crop-decode FFCV loader with the
augmentations on batches of tensors; folders and ``datasets`` saves through PIL in ``DataLoader`` workers.
Both follow the layout-free sample order of pre-training, every random draw keyed, so that checkpoints
(``--save-every``, every epoch end, SIGTERM/SIGUSR1) resume bit-identically on the same layout and on any
other one with the same global batch (DeepSpeed's universal checkpoint re-partitions the optimizer): the
resume contract, output lock and damaged-checkpoint handling are pre-training's (``training/run_state.py``,
``lifecycle.py``, ``checkpoint.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from timm.data import Mixup
from timm.optim import param_groups_layer_decay
from timm.utils import ModelEmaV3

from ..config import FinetuneConfig
from ..data.batch_augment import BatchAugment
from ..data.labelled import train_transform
from ..hub import push_run
from ..modeling import MAEForImageClassification
from ..provenance import PROVENANCE, license_of, origin_of, write_provenance
from ..publish import publish_folder, publish_text
from ..training.accelerator import adamw, make_accelerator, resume
from ..training.checkpoint import raise_if_final_save_failed, write_error
from ..training.engine import Engine
from ..training.lifecycle import StopSignals
from ..training.run_state import loads_universal
from ..training.schedules import optimizer_steps_before, scaled_lr
from .finetune_plan import Plan
from .train_data import FFCVTrainData, PILTrainData, eval_batches, keyed_rng, mix

EMA_DIR = "ema"
RESULTS = "results.json"
RESOLVED_CONFIG = "resolved_config.yaml"


def soft_targets(labels, classes: int, smoothing: float):
    """One-hot targets with label smoothing (what timm's Mixup produces when it mixes nothing)."""
    off = smoothing / classes
    return F.one_hot(labels, classes).float() * (1.0 - smoothing) + off


def evaluate(engine, model, batches, dtype) -> dict:
    """Top-1, top-5 (with ≥ 5 classes) and the loss over the held-out images, each rank scoring its own
    share (``batches``) and the sums reduced over ranks: every image once, on any layout."""
    sums = torch.zeros(4, dtype=torch.float64, device=engine.device)  # top-1, top-5, loss, images
    classes = None
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for images, labels in batches:
            logits = model(images.to(dtype)).logits.float()
            classes = logits.shape[1]
            top = logits.topk(min(5, classes), dim=1).indices
            sums[0] += (top[:, 0] == labels).sum()
            sums[1] += (top == labels[:, None]).any(dim=1).sum()
            sums[2] += F.cross_entropy(logits, labels, reduction="sum").double()
            sums[3] += labels.numel()
    model.train(was_training)
    if engine.num_processes > 1:
        sums = engine.accelerator.reduce(sums, reduction="sum")
    top1, top5, loss, images = sums.tolist()
    seen = max(images, 1.0)
    result = {"val_acc1": top1 / seen, "val_loss": loss / seen, "val_images": int(images)}
    classes = classes or model_classes(model)
    if classes >= 5:
        result["val_acc5"] = top5 / seen
    return result


def model_classes(model) -> int:

    return extract_model_from_parallel(model).config.num_labels


def train(config: FinetuneConfig, plan: Plan) -> dict:

    layout = plan.layout
    classes = plan.source.classes
    model = plan.model  # loaded by check, before the accelerator: a refused model leaves no output folder
    model_config = model.config
    accelerator = make_accelerator(
        config,
        name="finetune",
        micro_batch=layout.batch,
        grad_accum=layout.accumulation,
        load_universal=loads_universal(plan.resume, layout),
    )
    device = accelerator.device
    stop = StopSignals(accelerator.num_processes)  # SIGTERM/SIGUSR1 → checkpoint at the next step
    ema = None
    if config.ema_decay > 0:
        # fp32 copy of the fp32 weights, made before DeepSpeed casts the model to BF16
        ema = ModelEmaV3(model, decay=config.ema_decay, device=device, dtype=torch.float32)
        ema.module.eval()
        accelerator.register_for_checkpointing(ema)  # saved with every checkpoint, loaded on any layout

    mean, std = list(model_config.image_mean), list(model_config.image_std)
    resolution = plan.resolution
    common = {"batch_size": layout.batch, "seed": config.seed, "accumulation": layout.accumulation,
              "num_workers": config.num_workers, "device": device}  # fmt: skip
    if plan.loader == "ffcv":
        items = [plan.source.order[i] for i in plan.train]
        augment = BatchAugment(config.augment, mean, std, config.reprob, resolution)
        data = FFCVTrainData(
            plan.source.path,
            items,
            resolution=resolution,
            patch_size=plan.patch_size,
            augment=augment,
            **common,
        )
    else:
        transform = train_transform(resolution, config.augment, mean, std, config.reprob)
        data = PILTrainData(plan.source, plan.train, transform, **common)

    def held_out():
        return eval_batches(
            plan.val_source, plan.val, resolution=resolution, mean=mean, std=std, batch_size=layout.batch,
            num_workers=config.num_workers, rank=accelerator.process_index, world=accelerator.num_processes,
            device=device,
        )  # fmt: skip

    groups = param_groups_layer_decay(
        model,
        weight_decay=config.weight_decay,
        no_weight_decay_list=model.no_weight_decay(),
        layer_decay=config.layer_decay,
    )
    peak_lr = config.lr if config.lr is not None else scaled_lr(config.blr, layout.global_batch)
    optimizer = adamw(groups, peak_lr, (0.9, 0.999), device)
    model, optimizer = accelerator.prepare(model, optimizer)
    dtype = next(model.parameters()).dtype
    unwrapped = accelerator.unwrap_model(model)
    warmup_steps = optimizer_steps_before(
        config.warmup_epochs, [plan.batches] * config.epochs, layout.accumulation
    )
    mixup = (
        Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.smoothing,
              num_classes=len(classes))
        if config.mixup > 0 or config.cutmix > 0
        else None
    )  # fmt: skip

    resolved = dataclasses.replace(config, batch_size=layout.batch, grad_accum=layout.accumulation)
    if accelerator.is_main_process:
        resolved.write_recipe(config.output_dir / RESOLVED_CONFIG)
        if plan.resume is None:  # a fresh run: where its model comes from, for the model card
            license = config.hub_license or license_of(
                config.model, endpoint=config.hub_endpoint, token=config.hub_token
            )  # the pre-trained model card's
            write_provenance(config.output_dir, base_model=origin_of(config.model),
                             datasets=config.dataset_names, license=license)  # fmt: skip
    start_epoch, best = 0, {}
    point = plan.resume
    if point is not None:
        resume(accelerator, point.path, point.saved.layout, model, optimizer)
        state = point.state
        data.load_state_dict(state["sampler"])
        start_epoch, best = state["sampler"]["epoch"], state.get("best", {})
        if point.layout_note:
            accelerator.print(point.layout_note)
        accelerator.print(
            f"resumed from {point.path} at step {state['step']} (epoch {start_epoch}, "
            f"{state['sampler']['samples']} images into it)"
        )
    engine = Engine(
        accelerator,
        config,
        name="finetune",
        total_steps=plan.total_steps,
        peak_lr=peak_lr,
        warmup_steps=warmup_steps,
        hparams=resolved.to_recipe(),
        resumed_at=None if point is None else point.state["step"],
        metric_prefix="train/",
        cosine=plan.run.cosine,
    )
    if point is None:
        engine.print(
            f"fine-tuning {config.model} ({model_config.global_pool} pool, {len(classes)} classes, "
            f"{len(plan.train)} train / {len(plan.val)} held-out images) at {resolution}px with the "
            f"{plan.loader} loader on {engine.num_processes} process(es) "
            f"({accelerator.distributed_type}, {dtype}); effective batch {layout.global_batch}, "
            f"peak lr {peak_lr:.3g}, layer decay {config.layer_decay}, {plan.total_steps} steps"
            + (f", EMA {config.ema_decay}" if ema else "")
        )

    def checkpoint() -> Path:
        state = {"sampler": data.state_dict(), "best": best, "run": plan.run.to_dict()}
        return engine.checkpoint({**state, "args": resolved.to_recipe()}, config.keep_last)

    def forward(model, images, targets, seed: int):
        with keyed_rng(seed, device):  # stochastic depth keyed by the micro-batch, not the layout
            return model(images, labels=targets)

    model.train()
    for epoch in range(start_epoch, config.epochs):
        if engine.done:
            break
        for batch in engine.timed(data.epoch(epoch)):
            engine.set_lr(optimizer)
            images, labels = batch.images, batch.labels
            if mixup is not None:
                images, targets = mix(mixup, images, labels, batch.seed)
            else:
                targets = soft_targets(labels, len(classes), config.smoothing)
            out, stepped = engine.micro_step(
                model,
                optimizer,
                functools.partial(forward, model, images.to(dtype), targets, batch.seed),
                images=images.shape[0],
                where=f"epoch {epoch}, batch {batch.index}",
            )
            # top-1 against each image's own label: on mixup/cutmix batches only the dominant image's
            # label is scored, so this reads low; it is a trend, the held-out top-1 is the measure
            engine.add("acc1", (out.logits.detach().argmax(-1) == labels).float().mean())
            if not stepped:
                continue
            if ema is not None:
                ema.update(unwrapped, step=engine.step)
            if engine.log_due:
                engine.log(epoch)
            if not engine.done and stop.requested():  # a signal on any rank, agreed by all: save, exit
                stop.stop(engine, checkpoint())
            if config.save_every and engine.step % config.save_every == 0 and not engine.done:
                checkpoint()
            if engine.done:
                break
        best = evaluate_epoch(engine, config, model, ema, held_out, dtype, epoch, best)
        if not engine.done:  # epoch end: the resume point after a crash (its evaluation is done)
            checkpoint()
    results = summary(best)
    if engine.is_main:
        publish(config, results, engine.print)
    engine.finish()
    if engine.is_main:
        print(json.dumps({"finetune": "best", **results}), flush=True)
    return results


def publish(config: FinetuneConfig, results: dict, say) -> None:
    """Main process, at the end: ``results.json`` beside the weights (and the EMA's, with the run's record
    files, so that ``OUTPUT/ema`` is a complete folder to push too); with ``--push-to-hub``, the better
    of the two goes up as a classifier plain transformers loads (``hub.py``)."""
    out = config.output_dir
    text = json.dumps(results, indent=2)
    publish_text(out / RESULTS, text)
    folders = {"raw": out}
    if (out / EMA_DIR / "model.safetensors").exists():
        folders["ema"] = out / EMA_DIR
        for name in (RESOLVED_CONFIG, PROVENANCE, "metrics.jsonl"):
            if (out / name).exists():
                shutil.copyfile(out / name, out / EMA_DIR / name)
        publish_text(out / EMA_DIR / RESULTS, text)
    if config.push_to_hub:
        folder = folders[results.get("weights", "raw")]
        say(f"pushed {folder} to {config.push_to_hub}: {push_run(config, folder)}")


def evaluate_epoch(engine, config, model, ema, held_out, dtype, epoch: int, best: dict) -> dict:
    """Evaluate the weights (and their EMA) on the held-out split after ``epoch``; log, and save each one
    that beats its best so far (``OUTPUT``, ``OUTPUT/ema``). Returns the bests."""
    best = dict(best)

    kinds = [("raw", model, dtype)] + ([("ema", ema.module, torch.float32)] if ema is not None else [])
    for kind, weights, weights_dtype in kinds:
        metrics = evaluate(engine, weights, held_out(), weights_dtype)
        prefix = "val/" if kind == "raw" else "val_ema/"
        engine.write({"step": engine.step, "epoch": epoch, **{prefix + k[4:]: v for k, v in metrics.items()}})
        engine.print(
            f"epoch {epoch}: held-out top-1 {metrics['val_acc1']:.4f}"
            + (f", top-5 {metrics['val_acc5']:.4f}" if "val_acc5" in metrics else "")
            + f" ({metrics['val_images']} images, {'EMA' if kind == 'ema' else 'weights'}), "
            f"loss {metrics['val_loss']:.4f}"
        )
        if kind not in best or metrics["val_acc1"] > best[kind]["val_acc1"]:
            best[kind] = {**metrics, "epoch": epoch, "step": engine.step}
            if kind == "raw":
                engine.save_model(
                    model, MAEForImageClassification, engine.accelerator.unwrap_model(model).config
                )
            else:
                save_ema(engine, config, weights)
    return best


def save_ema(engine, config: FinetuneConfig, module) -> None:
    """The EMA weights (fp32, the same on every rank) as ``OUTPUT/ema``: a ``save_pretrained`` folder."""
    error = None
    if engine.is_main:
        error = write_error(
            lambda: publish_folder(
                config.output_dir / EMA_DIR,
                lambda folder: module.save_pretrained(folder, safe_serialization=True),
            )
        )
    raise_if_final_save_failed(engine.accelerator, error, config.output_dir)


def summary(best: dict) -> dict:
    """``results.json``: the best held-out metrics of the weights, of their EMA if any, and which of the two
    is better (``weights``; its metrics also at the top level)."""
    if not best:
        return {}
    winner = max(best, key=lambda kind: (best[kind]["val_acc1"], kind == "raw"))
    return {**best[winner], "weights": winner, **{kind: best[kind] for kind in best}}
