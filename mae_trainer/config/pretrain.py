"""The settings every training command shares (:class:`TrainingConfig`: optimisation, run, checkpoints,
publishing) and ``mae-trainer pretrain``'s (:class:`PretrainConfig`: data, resolution schedule, model)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

from ..report_to import tracker_names
from .declare import ConfigError, RunConfig, about, at_least, existing, fraction, option, positive, report_to

# ------------------------------------------------------------------------------------------ training


@dataclasses.dataclass(frozen=True)
class TrainingConfig(RunConfig):
    """Flags shared by the commands that train (pre-training and fine-tuning), declared once here."""

    epochs: int = option(800, "epochs to train", check=at_least(1), group="optimisation", resume="length")
    max_steps: int | None = option(
        None, "stop after this many optimizer steps", check=at_least(1), group="optimisation", resume="length"
    )
    batch_size: int = option(64, "images per process per micro-step", check=at_least(1), group="optimisation")
    global_batch_size: int | None = option(
        None,
        "images per optimizer step over all ranks; sets --batch-size to it ÷ (ranks × --grad-accum)",
        check=at_least(1),
        group="optimisation",
    )
    grad_accum: int = option(1, "micro-steps per optimizer step", check=at_least(1), group="optimisation")
    blr: float = option(
        1.5e-4,
        "base lr: lr = blr × effective batch / 256",
        check=positive,
        group="optimisation",
        resume="same",
    )
    lr: float | None = option(
        None,
        "absolute peak lr (overrides --blr; 0 keeps the weights)",
        check=at_least(0),
        group="optimisation",
        resume="same",
    )
    min_lr: float = option(
        0.0, "lr at the end of the cosine", check=at_least(0), group="optimisation", resume="same"
    )
    warmup_epochs: float = option(
        40.0, "epochs of linear lr warmup", check=at_least(0), group="optimisation", resume="same"
    )
    weight_decay: float = option(
        0.05,
        "AdamW weight decay (not on norms, biases, tokens)",
        check=at_least(0),
        group="optimisation",
        resume="same",
    )
    num_workers: int = option(8, "data workers per process", check=at_least(0), group="data")
    output_dir: Path = option(Path("runs/pretrain"), "where the model, logs and checkpoints go", group="run")
    overwrite: bool = option(False, "reuse an output directory that holds a model", group="run")
    seed: int = option(0, "seed of weights, data order and augmentation", group="run", resume="same")
    log_every: int = option(10, "optimizer steps between log lines", check=at_least(1), group="run")
    report_to: str = option(
        "tensorboard",
        "experiment trackers, a comma list: tensorboard, wandb; all (both) or none (metrics.jsonl only)",
        check=report_to,
        metavar="TRACKERS",
        group="run",
    )
    dist_timeout: float = option(
        1800.0,
        "seconds a collective may wait for the other ranks before the run fails (a dead node); at start-up "
        "the ranks wait up to max(this, 600 s) for the slowest one",
        check=positive,
        group="run",
    )
    push_to_hub: str | None = option(
        None, "upload the final model to this Hub repo (mae-trainer push)", metavar="REPO", group="hub"
    )
    hub_token: str | None = option(
        None, "write token (default: $HF_TOKEN, saved login)", group="hub", recipe=False
    )
    hub_private: bool = option(False, "create the repo private", group="hub")
    hub_revision: str | None = option(None, "branch to commit to", group="hub")
    hub_endpoint: str | None = option(None, "Hub URL (default: $HF_ENDPOINT or the public Hub)", group="hub")
    hub_license: str | None = option(
        None,
        "model card license (default: pretrain apache-2.0; finetune the pre-trained model's card license, "
        "else apache-2.0)",
        group="hub",
    )
    dataset_name: str | None = option(
        None, "Hub dataset id the data came from, for the model card", metavar="DATASET_ID", group="hub"
    )

    save_every: int = option(
        0, "optimizer steps between checkpoints (0: at each epoch end only)", check=at_least(0), group="ckpt"
    )
    keep_last: int = option(2, "complete checkpoints kept", check=at_least(1), group="ckpt")
    replan: bool = option(
        False,
        "with --resume: accept a changed --epochs/--max-steps; the rest of the lr cosine is stretched or "
        "shrunk to the new length from where the run stands",
        group="ckpt",
    )
    resume: str | None = option(
        None,
        "auto: the newest complete checkpoint in OUTPUT_DIR/checkpoints (if any; damaged newer ones are "
        "named in a warning and skipped); or a path (refused if damaged)",
        metavar="auto|PATH",
        group="ckpt",
    )
    strict_resume: bool = option(
        False, "with --resume auto: refuse a damaged newest checkpoint instead of falling back", group="ckpt"
    )

    def validate(self) -> None:
        if not self.warmup_epochs < self.epochs:
            raise ConfigError("warmup_epochs", self.warmup_epochs, f"must be below --epochs={self.epochs}")

    def check_output(self, resuming: bool = False) -> None:
        """``--output-dir`` can hold this run's files, and holds no model unless ``--overwrite`` or the run
        continues a checkpoint of it (``resuming``: a fine-tune saves its best model as it goes). Probed
        on rank 0 only (the probe creates and removes files; ranks probing at once would race)."""
        import os

        from ..publish import check_output_dir

        if os.environ.get("RANK", "0") == "0":
            with about("output_dir"):
                check_output_dir(self.output_dir)
        if (self.output_dir / "model.safetensors").exists() and not (self.overwrite or resuming):
            raise ConfigError(
                "output_dir", self.output_dir, "already holds a model (pass --overwrite to replace it)"
            )

    @property
    def dataset_names(self) -> list[str] | None:
        """``--dataset-name`` as the model card's ``datasets`` list."""
        return [self.dataset_name] if self.dataset_name else None

    def write_recipe(self, path: Path) -> None:
        """Every setting's final value (defaults ← recipe file ← command line) as a recipe file:
        ``mae-trainer COMMAND --recipe PATH`` repeats the run."""
        import yaml

        from ..publish import publish_text

        publish_text(
            path,
            f"# Resolved settings of this run (mae-trainer {self.command} --recipe THIS_FILE repeats it)\n"
            + yaml.safe_dump(self.to_recipe(), sort_keys=False),
        )

    @property
    def trackers(self) -> tuple[str, ...]:

        return tracker_names(self.report_to)

    def per_rank_batch(self, world_size: int) -> int:
        """Images per rank per micro-step: ``--batch-size``, or ``--global-batch-size`` ÷ (ranks ×
        accumulation), which must divide evenly."""
        if self.global_batch_size is None:
            return self.batch_size
        per_step = world_size * self.grad_accum
        if self.global_batch_size < per_step or self.global_batch_size % per_step:
            raise ConfigError(
                "global_batch_size",
                self.global_batch_size,
                f"not divisible by {world_size} rank(s) × --grad-accum {self.grad_accum} = {per_step}; "
                f"choose a multiple of {per_step}",
            )
        return self.global_batch_size // per_step


def preset_names() -> tuple[str, ...]:
    from ..modeling.presets import PRESETS

    return tuple(PRESETS)


@dataclasses.dataclass(frozen=True)
class PretrainConfig(TrainingConfig):
    """``mae-trainer pretrain``: MAE pre-training with progressive resolution (DailyMAE)."""

    command: ClassVar[str] = "pretrain"

    data: Path | None = option(
        None, "training .beton (mae-trainer write-dataset)", check=existing, group="data"
    )
    crop_decode: bool = option(
        True,
        "decode only the crop region of JPEG samples (libjpeg crop/skip + DCT scaling), as DailyMAE does; "
        "--no-crop-decode decodes whole images (same crops, same seeds)",
        group="data",
        resume="same",
    )
    interpolation: str = option(
        "bicubic",
        "filter that resizes each crop: bicubic (reference MAE, antialiased like PIL) or area (FFCV)",
        choices=("bicubic", "area"),
        group="data",
        resume="same",
    )
    batches_ahead: int = option(
        4,
        "batches FFCV prepares in advance (4, the DailyMAE authors': benchmarks/batches_ahead.py)",
        check=at_least(1),
        group="data",
    )
    no_os_cache: bool = option(
        False, "read through FFCV's process cache instead of the OS page cache", group="data"
    )
    resolution: int = option(
        224,
        "crop side; the final/reference side of a progressive schedule",
        check=positive,
        group="resolution",
        resume="same",
    )
    progressive: str = option(
        "constant",
        "resolution schedule",
        choices=("constant", "linear", "steps"),
        group="resolution",
        resume="same",
    )
    start_resolution: int = option(
        160, "linear: side before the ramp", check=positive, group="resolution", resume="same"
    )
    ramp_start_epoch: int = option(
        0, "linear: first epoch of the ramp", check=at_least(0), group="resolution", resume="same"
    )
    ramp_end_epoch: int = option(
        0, "linear: epoch the ramp reaches --resolution", check=at_least(0), group="resolution", resume="same"
    )
    resolution_multiple: int = option(
        32, "linear: round sides to this", check=at_least(1), group="resolution", resume="same"
    )
    resolution_steps: str | None = option(
        None,
        "steps: EPOCH:RES[:MASK],... e.g. the authors' 0:160:0.5,200:192:0.66,400:224:0.75",
        group="resolution",
        resume="same",
    )
    mask_schedule: str = option(
        "fixed",
        "constant-visible: mask ratio keeps the encoder's token count of --resolution",
        choices=("fixed", "constant-visible"),
        group="resolution",
        resume="same",
    )
    scale_batch_with_resolution: bool = option(
        False,
        "scale the per-rank batch by (resolution / side)^2 to keep patches per step; the lr follows each "
        "stage's effective batch (linear rule)",
        group="resolution",
        resume="same",
    )
    model: str = option("base", "preset: tiny, small, base, large, huge", group="model", resume="same")
    mask_ratio: float = option(
        0.75, "fraction of patches masked", check=fraction, group="model", resume="same"
    )
    no_norm_pix_loss: bool = option(
        False, "regress raw (not per-patch normalised) pixels", group="model", resume="same"
    )
    gradient_checkpointing: bool = option(
        False, "recompute block activations (saves memory; L/H)", group="model"
    )
    init_from: str | None = option(
        None,
        "start from these weights (a pretrain output dir, a vit_mae folder or a Hub id; same architecture "
        "as --model) with a fresh optimizer, lr schedule and data order; a checkpoint found by --resume wins",
        metavar="DIR_OR_HUB_ID",
        group="model",
    )
    compile: bool = option(
        False,
        "torch.compile the model (static shapes: one graph per stage's side, batch and mask ratio, "
        "compiled when the stage starts)",
        group="model",
    )
    compile_backend: str = option(
        "inductor",
        "torch.compile backend with --compile: inductor (fused kernels), aot_eager (the same graphs without "
        "code generation: to tell a compiler problem from a model one), or any name "
        "torch._dynamo.list_backends(exclude_tags=()) gives",
        metavar="NAME",
        group="model",
    )
    recon_images: int = option(
        8, "images in each reconstruction grid (0: none)", check=at_least(0), group="run"
    )
    recon_every: int = option(
        0,
        "optimizer steps between reconstruction grids of the same images (0: only at the end)",
        check=at_least(0),
        group="run",
    )
    recon_data: Path | None = option(
        None,
        "held-out .beton for the reconstruction grids (default: images spread over --data)",
        check=existing,
        group="run",
    )
    eval_data: Path | None = option(
        None,
        "labelled held-out .beton: k-NN top-1 of the current encoder on it during training",
        check=existing,
        group="evaluation",
    )
    eval_every: int = option(
        10, "epochs between evaluations on --eval-data (0: only at the end)", check=at_least(0),
        group="evaluation",
    )  # fmt: skip
    eval_k: int = option(20, "k-NN: neighbours that vote", check=at_least(1), group="evaluation")
    eval_linear: bool = option(
        False, "also a linear probe on the same cached features (main process, CPU)", group="evaluation"
    )

    def validate(self) -> None:
        super().validate()
        if self.data is None:
            raise ConfigError("data", "", "required (on the command line or in the --recipe file)")
        if self.model not in preset_names():
            raise ConfigError(
                "model", repr(self.model), f"unknown preset; choose one of {', '.join(preset_names())}"
            )
        from ..data.resolution import check_side

        with about("resolution"):
            check_side(self.resolution, self.patch_size)
        if self.num_workers < 1:
            raise ConfigError("num_workers", self.num_workers, "must be at least 1 (FFCV decode threads)")
        if self.progressive == "linear" and not (self.ramp_start_epoch <= self.ramp_end_epoch <= self.epochs):
            raise ConfigError(
                "ramp_end_epoch", self.ramp_end_epoch, "must lie in [--ramp-start-epoch, --epochs]"
            )

    @property
    def patch_size(self) -> int:
        from ..modeling.presets import PRESETS

        return PRESETS[self.model].get("patch_size", 16)
