"""What ``mae-trainer finetune`` settles before any work: the plan.

:func:`check` locks the output folder, resolves ``--model`` (folder or Hub id, ours or vit_mae), opens the
training and held-out splits, loads the classifier (a folder lacking a tensor is refused by name), and
derives the layout, the micro-batches per epoch and the resume contract (``training/run_state.py``) before
a process group exists. Bad input is refused as a ``ConfigError`` naming its flag; nothing is written.
The CLI imports the training loop (``finetune.train``) only once the plan holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from ..config import ConfigError, FinetuneConfig, about
from ..data.labelled import BetonSource, open_labelled
from ..data.resolution import check_side, whole_batches
from ..hub import check_push
from ..modeling.loading import resolve_saved_model
from ..training.feature_eval import stratified_split
from ..training.run_state import (
    ResumePoint,
    RunState,
    check_resume,
    data_identity,
    open_run,
    planned_layout,
    recipe_of,
    total_steps,
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the run derives from its config and the world size before any work: checked inputs."""

    run: RunState  # the resume contract (layout included)
    resume: ResumePoint | None
    source: object  # the training split (data.labelled.ImageSource)
    val_source: object  # the held-out split (the training split itself with --val-fraction)
    train: list[int]  # positions in source.order
    val: list[int]  # positions in val_source.order
    loader: str  # "ffcv" or "pil"
    resolution: int
    patch_size: int
    batches: int  # local micro-batches per epoch
    model: object = dataclasses.field(default=None, repr=False)  # the classifier, loaded (and checked) here

    @property
    def layout(self):
        return self.run.layout

    @property
    def total_steps(self) -> int:
        epochs = self.run.length["epochs"]
        return total_steps([self.batches] * epochs, self.layout.accumulation, self.run.length["max_steps"])


def open_split(config: FinetuneConfig, key: str, train=None):
    """:func:`~mae_trainer.data.labelled.open_labelled` for ``train`` or (with the training split
    ``train``) ``val``, whose classes must be the training split's."""
    path, split = (config.train, config.split) if train is None else (config.val, config.val_split)
    with about(key):
        return open_labelled(
            path, split=split, train=train, image_column=config.image_column, label_column=config.label_column
        )


def split_identity(source, positions: list[int]) -> dict:
    """The training samples' identity for the resume contract: a ``.beton``'s file identity, or a digest of
    the labels and class names of a folder or dataset, and which positions train."""
    if isinstance(source, BetonSource):
        identity = data_identity(source.path, len(source))
    else:
        text = json.dumps([list(source.classes), [source.labels[i] for i in source.order]])
        identity = {"samples": len(source), "sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}
    identity["train_sha256"] = hashlib.sha256(np.asarray(positions, np.int64).tobytes()).hexdigest()[:16]
    return identity


def check(config: FinetuneConfig, world: int) -> Plan:
    """Every check that needs no process group: fail before any model is built or image decoded. A resumed
    run is compared with its checkpoint's contract here, once."""
    layout, point = open_run(config, planned_layout(config, world))  # lock, checkpoint, layout
    with about("model"):
        saved_model = resolve_saved_model(config.model)  # folder or Hub id, ours or vit_mae, weights intact
        model_config = json.loads((saved_model.folder / "config.json").read_text())
    source = open_split(config, "train")
    if len(source.classes) < 2:
        raise ConfigError("train", config.train, f"needs at least 2 classes (found {len(source.classes)})")
    if config.val is not None:
        val_source = open_split(config, "val", source)
        train, val = list(range(len(source))), list(range(len(val_source)))
    else:
        val_source = source
        labels = np.asarray([source.labels[i] for i in source.order])
        train, val = (part.tolist() for part in stratified_split(labels, config.val_fraction, config.seed))
        if not val:
            raise ConfigError("val_fraction", config.val_fraction, f"holds out no image of {config.train}")
    beton = isinstance(source, BetonSource)
    loader = config.loader if config.loader != "auto" else ("ffcv" if beton else "pil")
    if loader == "ffcv" and not beton:
        raise ConfigError("loader", "ffcv", f"needs a .beton --train ({config.train} is not one)")
    model = load_model(config, source.classes)  # a folder lacking a tensor is refused here, by name
    patch = int(model_config.get("patch_size", 16))
    resolution = config.resolution or int(model_config.get("image_size", 224))
    with about("resolution"):
        check_side(resolution, patch)
    batches = whole_batches(len(train), world, layout.batch, layout.accumulation)
    if batches == 0:
        raise ConfigError(
            "batch_size",
            layout.batch,
            f"{layout.describe()} images per optimizer step: {config.train} has {len(train)} training images",
        )
    run = RunState(
        command=config.command,
        model={"classes": list(source.classes), "resolution": resolution, "patch_size": patch},
        recipe=recipe_of(config, "same"),
        length=recipe_of(config, "length"),
        stages=[[0, resolution, 0.0, layout.global_batch]],
        data=split_identity(source, train),
        layout=layout,
    )
    if point is not None:
        run = check_resume(config, point.path, point.state["step"], point.saved, run, lambda e: [batches] * e)
    check_push(config)  # fail now, not after the fine-tune
    config.check_output(resuming=point is not None)
    return Plan(run, point, source, val_source, train, val, loader, resolution, patch, batches, model)


def load_model(config: FinetuneConfig, classes: list[str]):
    """The pre-trained encoder with a new head for ``classes`` (transformers' ``from_pretrained``)."""
    from accelerate.utils import set_seed  # torch and transformers: after the import-light checks

    from ..modeling import MAEForImageClassification

    set_seed(config.seed)  # the head's init
    with about("model"):
        return MAEForImageClassification.from_pretrained(
            config.model,
            num_labels=len(classes),
            id2label=dict(enumerate(classes)),
            label2id={c: i for i, c in enumerate(classes)},
            drop_path_rate=config.drop_path,
            global_pool=config.global_pool,
        )
