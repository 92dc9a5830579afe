"""Run configurations: one frozen dataclass per command that trains or evaluates (``PretrainConfig``,
``FinetuneConfig``, ``ProbeConfig``).

Each field is declared once with its default, help text, choices and check; the CLI builds its flags from
these declarations, reads recipe files (YAML, keys = field names with ``-`` or ``_``) against them, and
writes a run's settings back as a recipe with :meth:`RunConfig.to_recipe`. A config is built once and never
changed; values derived from it (the per-rank batch, the resolution schedule, the checkpoint to resume) are
computed from it by the code that needs them.

Bad values raise :class:`ConfigError`, which carries the field's name: the CLI turns it into one line
naming the flag (``--mask-ratio 1.5: must be between 0 and 1``). Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from .errors import InputError
from .report_to import report_to_problem, tracker_names


class ConfigError(InputError):
    """A config value that is not valid. ``key`` is the field; ``detail`` is what follows its name in the
    message (`` 1.5: must be between 0 and 1``, or ``: required`` without a value); the CLI prints
    ``--mask-ratio 1.5: must be ...``."""

    def __init__(self, key: str, value: Any, reason: str):
        self.key = key
        self.detail = f": {reason}" if value in ("", None) else f" {value}: {reason}"
        super().__init__(key + self.detail)

    @classmethod
    def about(cls, key: str, err: InputError) -> ConfigError:
        """``err`` (whose message starts with the offending value or file) as a fault of field ``key``."""
        if isinstance(err, ConfigError):
            return err
        wrapped = cls(key, None, "")
        wrapped.detail = f" {err}"
        wrapped.args = (key + wrapped.detail,)
        return wrapped


@contextlib.contextmanager
def about(key: str):
    """Inside this block, an :class:`InputError` is a fault of the config field ``key``."""
    try:
        yield
    except InputError as err:
        raise ConfigError.about(key, err) from None


# ------------------------------------------------------------------------------------------ declarations


def option(
    default: Any = None,
    help: str = "",
    *,
    check: Callable[[Any], str | None] | None = None,
    choices: tuple | None = None,
    group: str | None = None,
    metavar: str | None = None,
    exclusive: str | None = None,
    recipe: bool = True,
    resume: str | None = None,
) -> Any:
    """A config field: default, help, the values allowed (``choices`` or a ``check`` that returns what is
    wrong, or None), its help group, the set of flags it excludes on a command line (``exclusive``),
    whether it belongs in a recipe (a secret token does not), and what a resumed run may do with it
    (``resume``: ``"same"``, it changes the math of the remaining steps and must equal the checkpoint's;
    ``"length"``, it changes the run's length, allowed with ``--replan``; None, free to change:
    :mod:`mae_trainer.training.run_state`)."""
    metadata = {"help": help, "check": check, "choices": choices, "group": group, "metavar": metavar}
    metadata.update(exclusive=exclusive, recipe=recipe, resume=resume)
    return dataclasses.field(default=default, metadata=metadata)


def at_least(low: float) -> Callable[[Any], str | None]:
    return lambda value: None if value is None or value >= low else f"must be at least {low}"


def positive(value) -> str | None:
    return None if value is None or value > 0 else "must be positive"


def fraction(value) -> str | None:
    return None if value is None or 0 < value < 1 else "must be between 0 and 1"


def existing(value) -> str | None:
    """An input path: it must exist (what it holds is checked by the code that reads it)."""
    return None if value is None or Path(value).exists() else "no such file or directory"


def in_unit_interval(value) -> str | None:
    return None if 0 <= value < 1 else "must lie in [0, 1)"


def report_to(value) -> str | None:
    """A ``--report-to`` list: known trackers, each installed (``report_to.py``, import-light)."""
    return report_to_problem(value)


def parse_value(kind: type, value: Any) -> Any:
    """``value`` as a field of type ``kind`` (int, float, str, Path or bool): text as typed on a command line,
    or a YAML scalar. Nothing is truncated or reinterpreted: ``2.7`` is not an int, ``true`` is not a number,
    a number is not a path; ``2.0`` is the int 2. Raises ValueError saying what was expected."""
    if isinstance(value, (list, dict)):
        raise ValueError(f"expected one value, not a {'list' if isinstance(value, list) else 'mapping'}")
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected {_KIND_NAMES.get(kind, kind.__name__)}, not {str(value).lower()}")
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"expected a whole number, not {value}")
            return int(value)
        return int(value)  # an int, or text: int("2.7") and int("abc") raise
    if kind is float:
        return float(value)
    if kind is Path:
        if not isinstance(value, (str, Path)):
            raise ValueError("expected a path")
        return Path(value)
    if isinstance(value, float | int | str):
        return kind(value)
    raise ValueError(f"expected {_KIND_NAMES.get(kind, kind.__name__)}")


_KIND_NAMES = {int: "a whole number", float: "a number", str: "text", Path: "a path"}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What every command config shares: declarations, checks, recipe conversion."""

    command: ClassVar[str] = ""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            meta = self.declaration(field.name)
            value = getattr(self, field.name)
            choices = meta.get("choices")
            if choices is not None and value is not None and value not in choices:
                raise ConfigError(field.name, value, f"choose one of {', '.join(map(str, choices))}")
            problem = meta["check"](value) if meta.get("check") else None
            if problem:
                raise ConfigError(field.name, value, problem)
        self.validate()

    def validate(self) -> None:
        """Checks that involve several fields (each command adds its own)."""

    @classmethod
    def declaration(cls, name: str) -> dict:
        """The field's declaration, from the class that declared it with :func:`option` (a subclass may
        change only the default, e.g. ``epochs: int = 800``)."""
        for klass in cls.__mro__:
            field = getattr(klass, "__dataclass_fields__", {}).get(name)
            if field is not None and field.metadata:
                return dict(field.metadata)
        return {"help": "", "recipe": True}

    @classmethod
    def field_types(cls) -> dict[str, type]:
        """Each field's value type (``int | None`` → ``int``; bools stay ``bool``)."""
        hints = typing.get_type_hints(cls)
        result = {}
        for field in dataclasses.fields(cls):
            hint = hints[field.name]
            if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
                hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
            result[field.name] = hint
        return result

    @classmethod
    def convert(cls, name: str, value: Any) -> Any:
        """Field ``name``'s value from a command line's text or a recipe file's YAML value, parsed and
        checked the same way for both (:func:`parse_value`, then the field's choices). A recipe's ``null``
        is left out by the reader: it means the default."""
        value = parse_value(cls.field_types()[name], value)
        choices = cls.declaration(name).get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"choose one of {', '.join(map(str, choices))}")
        return value

    @classmethod
    def from_mapping(cls, values: dict[str, Any]):
        """A config from ``{field: value}`` (unknown keys refused; keys may use ``-``)."""
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(unknown[0], values[unknown[0]], f"unknown setting of {cls.command}")
        return cls(**values)

    def to_recipe(self) -> dict[str, Any]:
        """The settings as a recipe file's mapping (paths as text, secrets left out)."""
        return {
            f.name.replace("_", "-"): str(v) if isinstance(v := getattr(self, f.name), Path) else v
            for f in dataclasses.fields(self)
            if self.declaration(f.name).get("recipe", True)
        }


def world_size() -> int:
    """Ranks of this run as the launcher announces them (1 without a launcher), known before any process
    group exists, so that checks depending on it fail before any work."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def deepspeed_launched() -> bool:
    """Whether ``accelerate launch`` started this process with a DeepSpeed config (known before any process
    group exists): the engine whose optimizer-state format a checkpoint will hold."""
    import os

    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


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

        from .publish import check_output_dir

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

        from .publish import publish_text

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


def _preset_names() -> tuple[str, ...]:
    from .modeling.presets import PRESETS

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
        if self.model not in _preset_names():
            raise ConfigError(
                "model", repr(self.model), f"unknown preset; choose one of {', '.join(_preset_names())}"
            )
        from .data.resolution import check_side

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
        from .modeling.presets import PRESETS

        return PRESETS[self.model].get("patch_size", 16)


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
        if self.random_init is not None and self.random_init not in _preset_names():
            raise ConfigError(
                "random_init",
                repr(self.random_init),
                f"unknown preset; choose one of {', '.join(_preset_names())}",
            )
        if self.output is not None and self.output.is_dir():
            raise ConfigError("output", self.output, "is a directory")


COMMANDS: dict[str, type[RunConfig]] = {
    config.command: config for config in (PretrainConfig, FinetuneConfig, ProbeConfig)
}
