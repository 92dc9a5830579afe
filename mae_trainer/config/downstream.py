"""``mae-trainer finetune``'s settings (:class:`FinetuneConfig`, on top of :class:`TrainingConfig`) and
``mae-trainer probe``'s (:class:`ProbeConfig`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

from .declare import ConfigError, RunConfig, at_least, existing, fraction, in_unit_interval, option, positive
from .pretrain import PretrainConfig, TrainingConfig, preset_names

# ------------------------------------------------------------------------------------------ fine-tuning


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(TrainingConfig):
    """``mae-trainer finetune``: the reference MAE fine-tune recipe on a pre-trained encoder."""

    command: ClassVar[str] = "finetune"

    epochs: int = 100
    batch_size: int = 32
    blr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 5.0
    output_dir: Path = Path("runs/finetune")

    model: str | None = option(None, "pre-trained MAE: folder or Hub id, ours or vit_mae", group="data")
    train: Path | None = option(
        None, "labelled .beton, ImageFolder or HF dataset", check=existing, group="data"
    )
    val: Path | None = option(None, "held-out split (same kinds as --train)", check=existing, group="data")
    val_fraction: float = option(
        0.1,
        "without --val: hold out this fraction of --train per class (seeded by --seed)",
        group="data",
        resume="same",
    )
    split: str = option("train", "HF dataset split for --train", group="data")
    val_split: str = option("validation", "HF dataset split for --val", group="data")
    image_column: str = option("image", "HF dataset image column", group="data")
    label_column: str = option("label", "HF dataset label column", group="data")
    loader: str = option(
        "auto",
        "ffcv: crop-decode FFCV loader + augmentations on batches of tensors (on the GPU when there is one); "
        "pil: PIL images in DataLoader workers; auto: ffcv for a .beton --train, else pil",
        choices=("auto", "ffcv", "pil"),
        group="data",
        resume="same",
    )
    resolution: int | None = option(
        None, "default: the model's image_size", check=positive, group="model", resume="same"
    )
    global_pool: str = option("avg", "avg: fc_norm on the mean token; token: the class token",
                              choices=("avg", "token"), group="model", resume="same")  # fmt: skip
    drop_path: float = option(
        0.1, "stochastic depth (0.1 B, 0.2 L/H)", check=in_unit_interval, group="model", resume="same"
    )
    augment: str = option(
        "randaug", "RandAugment, DeiT III's ThreeAugment or none", choices=("randaug", "three", "none"),
        group="augmentation", resume="same",
    )  # fmt: skip
    reprob: float = option(
        0.25, "random-erasing probability", check=in_unit_interval, group="augmentation", resume="same"
    )
    mixup: float = option(0.8, "mixup alpha (0: off)", check=at_least(0), group="augmentation", resume="same")
    cutmix: float = option(
        1.0, "cutmix alpha (0: off)", check=at_least(0), group="augmentation", resume="same"
    )
    smoothing: float = option(
        0.1, "label smoothing", check=in_unit_interval, group="augmentation", resume="same"
    )
    layer_decay: float = option(0.65, "layer-wise lr decay (1: off)", group="optimisation", resume="same")
    ema_decay: float = option(
        0.0,
        "keep an exponential moving average of the weights with this decay (e.g. 0.9999; 0: none, as the "
        "MAE recipe); it is evaluated and saved beside the raw weights (OUTPUT/ema)",
        check=in_unit_interval,
        group="optimisation",
        resume="same",
    )

    def validate(self) -> None:
        super().validate()
        if self.model is None:
            raise ConfigError("model", "", "required (on the command line or in the --recipe file)")
        if self.train is None:
            raise ConfigError("train", "", "required (on the command line or in the --recipe file)")
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ConfigError("batch_size", self.batch_size, "mixup/cutmix pair images, use an even batch")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError("layer_decay", self.layer_decay, "must be in (0, 1]")
        if self.val is None and not 0 < self.val_fraction < 1:
            raise ConfigError("val_fraction", self.val_fraction, "must be in (0, 1) when there is no --val")


# ------------------------------------------------------------------------------------------ probing


@dataclasses.dataclass(frozen=True)
class ProbeConfig(RunConfig):
    """``mae-trainer probe``: k-NN and linear probes of a frozen encoder."""

    command: ClassVar[str] = "probe"

    model: str | None = option(
        None, "pre-trained MAE: folder or Hub repo id, ours or vit_mae", metavar="DIR", group="encoder",
        exclusive="encoder",
    )  # fmt: skip
    random_init: str | None = option(
        None, "baseline: the preset's encoder at random init (seeded by --seed)", metavar="PRESET",
        group="encoder", exclusive="encoder",
    )  # fmt: skip
    image_size: int = option(224, "--random-init: the config's image_size", check=positive, group="encoder")
    train: Path | None = option(
        None, "training split: .beton with labels or DIR", check=existing, metavar="DATA", group="data"
    )
    val: Path | None = option(
        None, "held-out split: .beton with labels or DIR", check=existing, metavar="DATA", group="data",
        exclusive="held-out",
    )  # fmt: skip
    val_fraction: float | None = option(
        None, "hold out this fraction of --train instead (seeded by --seed, stratified by class)",
        check=fraction, metavar="F", group="data", exclusive="held-out",
    )  # fmt: skip
    resolution: int | None = option(
        None, "input side (default: the image_size)", check=positive, group="data"
    )
    crop_ratio: float = option(1.0, "centre crop side as a fraction of the short side", group="data")
    num_workers: int = option(
        2, "decode threads (.beton) or processes (DIR)", check=at_least(0), group="data"
    )
    extract_batch_size: int = option(64, "images per feature forward", check=at_least(1), group="data")
    device: str | None = option(None, "torch device (default: cuda when available, else cpu)", group="data")
    knn: bool = option(False, "weighted k-NN on cosine similarity", group="probes")
    linear: bool = option(False, "BatchNorm + Linear head on frozen features", group="probes")
    pool: str = option("cls", "class token or mean of patch tokens", choices=("cls", "avg"), group="probes")
    k: int = option(20, "k-NN: neighbours that vote", check=at_least(1), group="probes")
    temperature: float = option(0.07, "k-NN: vote weight exp(sim / T)", check=positive, group="probes")
    epochs: int = option(100, "linear: epochs over the cached features", check=at_least(1), group="probes")
    lr: float = option(0.1, "linear: peak SGD learning rate", check=positive, group="probes")
    batch_size: int = option(256, "linear: features per SGD step", check=at_least(1), group="probes")
    seed: int = option(0, "random init, --val-fraction split, linear head", group="probes")
    output: Path | None = option(None, "also write the results to this JSON file", group="output")

    def validate(self) -> None:
        if (self.model is None) == (self.random_init is None):
            raise ConfigError(
                "model", self.model or "", "give exactly one of --model DIR and --random-init PRESET"
            )
        if (self.val is None) == (self.val_fraction is None):
            raise ConfigError("val", self.val or "", "give exactly one of --val DATA and --val-fraction F")
        if not (self.knn or self.linear):
            raise ConfigError("knn", "", "choose at least one probe: --knn / --linear")
        if not 0 < self.crop_ratio <= 1:
            raise ConfigError("crop_ratio", self.crop_ratio, "must be in (0, 1]")
        if self.random_init is not None and self.random_init not in preset_names():
            raise ConfigError(
                "random_init",
                repr(self.random_init),
                f"unknown preset; choose one of {', '.join(preset_names())}",
            )
        if self.output is not None and self.output.is_dir():
            raise ConfigError("output", self.output, "is a directory")


COMMANDS: dict[str, type[RunConfig]] = {
    config.command: config for config in (PretrainConfig, FinetuneConfig, ProbeConfig)
}
