"""The resume contract: what a checkpoint promises about the run that wrote it, built once per run, saved
with every checkpoint (``trainer_state.json``, key ``"run"``) and compared once when a run resumes.

:class:`RunState` holds

- ``model``: the architecture (preset shapes, image size, mask ratio, loss), the model config's content;
- ``recipe``: every setting that changes the math of the remaining steps, as declared next to each field
  in :mod:`mae_trainer.config` (``resume="same"``: lr, warmup, weight decay, schedules, masks, crops,
  interpolation, seed, ...; ``resume="length"``: ``--epochs``/``--max-steps``);
- ``stages``: the epochs' (resolution, mask ratio, global batch): the data schedule in layout-free terms;
- ``data``: the training file's identity (samples, bytes, a digest of its head and tail), not its path;
- ``layout``: ranks × per-rank batch × accumulation (their product, the global batch, is part of the
  math; the split is not) and the engine (DeepSpeed ZeRO or plain torch) that wrote the optimizer state;
- ``cosine``: where a ``--replan`` re-anchored the lr cosine, if one did.

A checkpoint adds the position: the optimizer step and the sampler's ``{epoch, samples}`` (samples of that
epoch consumed by all ranks together, layout-free). The random streams that shape the math are keyed, not
stored: crops and flips by (seed, sample, micro-batch), masks by (seed, epoch, micro-batch) (``data/``), so
they continue identically on any layout; accelerate's per-rank RNG files are restored when the layout is
the same.

Import-light (no torch): :func:`mae_trainer.training.pretrain_plan.check` uses it before any process group.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import InputError
from .schedules import cosine_progress, optimizer_steps_before

KEY = "run"  # where the contract sits in a checkpoint's trainer_state.json
_DIGEST_SPAN = 1 << 20  # bytes hashed at each end of the data file


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the global batch is split: ``ranks`` × ``batch`` (per rank per micro-step) × ``accumulation``."""

    ranks: int
    batch: int
    accumulation: int
    engine: str = "deepspeed"  # or "torch": which optimizer-state format the checkpoint holds

    @property
    def global_batch(self) -> int:
        return self.ranks * self.batch * self.accumulation

    def needs_conversion(self, ranks: int, engine: str) -> bool:
        """Whether a checkpoint written on this layout must go through DeepSpeed's universal checkpoint to
        be loaded on ``ranks`` ranks of ``engine``: its ZeRO partitions fit only their own number of ranks
        (a torch optimizer state is whole on every rank)."""
        return self.engine == "deepspeed" and (self.ranks, self.engine) != (ranks, engine)

    def describe(self) -> str:
        return (
            f"{self.ranks} rank(s) × {self.batch} images × {self.accumulation} accumulation step(s) = "
            f"{self.global_batch}"
        )


def data_identity(path: Path, samples: int) -> dict:
    """What identifies a data file however it is named or moved: its sample count, its size and a digest
    of its first and last MiB (cheap on a 100 GB file)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(f.read(_DIGEST_SPAN))
        if size > 2 * _DIGEST_SPAN:
            f.seek(size - _DIGEST_SPAN)
            digest.update(f.read(_DIGEST_SPAN))
    return {"samples": samples, "bytes": size, "sha256_head_tail": digest.hexdigest()[:16]}


def recipe_of(config, kind: str) -> dict[str, Any]:
    """The settings of ``config`` whose declaration says ``resume=kind`` (``"same"`` or ``"length"``)."""
    values = {}
    for field in dataclasses.fields(config):
        if config.declaration(field.name).get("resume") == kind:
            value = getattr(config, field.name)
            values[field.name] = str(value) if isinstance(value, Path) else value
    return values


@dataclasses.dataclass(frozen=True)
class RunState:
    command: str
    model: dict
    recipe: dict
    length: dict
    stages: list
    data: dict
    layout: Layout
    cosine: list | None = None  # [step, cosine progress there] after a --replan

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict) -> RunState:
        return cls(**{**values, "layout": Layout(**values["layout"])})

    @classmethod
    def of_checkpoint(cls, path: Path, state: dict) -> RunState:
        """The contract in ``state``, checkpoint ``path``'s ``trainer_state.json``; :class:`InputError`
        naming the file when it has none."""
        try:
            return cls.from_dict(state[KEY])
        except (KeyError, TypeError):
            raise InputError(
                f"{path / 'trainer_state.json'}: written by an older mae_trainer without a resume contract; "
                "resume it with the version that wrote it, or start a new --output-dir"
            ) from None

    def differences(self, saved: RunState, replan: bool) -> list[str]:
        """What ``saved`` (the checkpoint's) and this run disagree on, as ``name: saved → now`` items: every
        math-changing setting; the length only without ``replan``."""
        found = []
        for section in ("model", "recipe") + (() if replan else ("length",)):
            ours, theirs = getattr(self, section), getattr(saved, section)
            for key in sorted(set(ours) | set(theirs)):
                if ours.get(key) != theirs.get(key):
                    name = f"--{key.replace('_', '-')}" if section != "model" else f"model {key}"
                    found.append(f"{name}: {_show(theirs.get(key))} → {_show(ours.get(key))}")
        if self.layout.global_batch != saved.layout.global_batch:
            found.append(f"global batch: {saved.layout.global_batch} → {self.layout.global_batch}")
        else:  # over the epochs both lengths share (a length change is its own item)
            common = min(self.length["epochs"], saved.length["epochs"])
            ours, theirs = _stages_before(self.stages, common), _stages_before(saved.stages, common)
            if ours != theirs:
                found.append(f"stages (first epoch, side, mask ratio, global batch): {theirs} → {ours}")
        if self.data != saved.data:
            found.append(f"--data: {_show_data(saved.data)} → {_show_data(self.data)}")
        return found


def _stages_before(stages: list, epochs: int) -> list:
    return [stage for stage in stages if stage[0] < epochs]


def _show(value) -> str:
    return "(unset)" if value is None else repr(value) if isinstance(value, str) else str(value)


def _show_data(identity: dict) -> str:
    return f"{identity['samples']} samples, {identity['bytes']} bytes, digest {identity['sha256_head_tail']}"


def resume_layout(
    saved: Layout, ranks: int, batch: int, accumulation: int, global_batch: int | None = None
) -> tuple[Layout, str | None]:
    """The layout on ``ranks`` ranks that keeps ``saved``'s global batch, and a line saying what changed
    (None when the flags already fit). The flags' per-rank ``batch`` and ``accumulation`` are kept when
    they fit; a flag the user changed is honoured and the other one derived; with neither changed the
    per-rank batch is kept (the same micro-batches: identical crops and masks) and the accumulation
    derived, else the accumulation kept and the batch derived, else any split. A global batch the flags
    change on purpose (``global_batch``, or both per-rank flags) is returned as it is, for the contract to
    refuse by name. ``InputError`` when no split of the global batch over ``ranks`` exists."""
    total = saved.global_batch
    asked = Layout(ranks, batch, accumulation, saved.engine)
    changed_both = batch != saved.batch and accumulation != saved.accumulation
    if asked.global_batch == total or (global_batch or total) != total or changed_both:
        return asked, None
    per_rank = total // ranks if total % ranks == 0 else None
    candidates = []
    if per_rank is not None:
        if batch != saved.batch:
            candidates = [(batch, per_rank // batch)] if per_rank % batch == 0 else []
        elif accumulation != saved.accumulation:
            candidates = [(per_rank // accumulation, accumulation)] if per_rank % accumulation == 0 else []
        else:
            if per_rank % batch == 0:
                candidates.append((batch, per_rank // batch))
            if per_rank % accumulation == 0:
                candidates.append((per_rank // accumulation, accumulation))
            candidates += [(per_rank // a, a) for a in range(1, per_rank + 1) if per_rank % a == 0]
    if not candidates:
        fits = [n for n in range(1, min(total, 4096) + 1) if total % n == 0]
        raise InputError(
            f"the checkpoint's global batch is {saved.describe()}, and {ranks} rank(s) × --batch-size "
            f"{batch} × --grad-accum {accumulation} cannot keep it"
            + (
                f": with {ranks} ranks give --batch-size × --grad-accum = {per_rank}"
                if per_rank is not None
                else f"; launch a number of ranks that divides {total} ({', '.join(map(str, fits[:12]))})"
            )
        )
    new_batch, new_accumulation = candidates[0]
    layout = Layout(ranks, new_batch, new_accumulation, saved.engine)
    return layout, f"layout: {saved.describe()} → {layout.describe()} (global batch kept)"


def check_resume(config, path: Path, step: int, saved: RunState, run: RunState, batches_for) -> RunState:
    """``run`` (this run's contract) against ``saved``, the contract of checkpoint ``path`` at ``step``:
    every math-changing difference refused in one line (``name: saved → now``), a ``ConfigError`` of
    ``--resume``; a changed length only with ``config.replan``, which re-anchors the lr cosine where the run
    stands (refused when the new length ends at or before ``step``). ``batches_for(epochs)`` gives the
    local batches of each epoch of a run of that length. Returns ``run`` with the cosine anchor it
    continues (the saved one, or the new one)."""
    from ..config import ConfigError

    differences = run.differences(saved, replan=config.replan)
    if differences:
        raise ConfigError(
            "resume",
            path,
            "this run differs from the one that wrote it: " + "; ".join(differences) + " (give the "
            "checkpoint's settings, or a new --output-dir for a new run"
            + ("; --replan accepts a new --epochs/--max-steps" if not config.replan else "")
            + ")",
        )
    if run.length == saved.length:
        return dataclasses.replace(run, cosine=saved.cosine)
    accumulation = run.layout.accumulation
    new_total = total_steps(batches_for(config.epochs), accumulation, run.length["max_steps"])
    if new_total <= step:
        raise ConfigError(
            "resume",
            path,
            f"the run is at step {step}; --epochs {config.epochs}"
            + (f" --max-steps {config.max_steps}" if config.max_steps else "")
            + f" ends it at step {new_total}: nothing would be trained",
        )
    old_total = total_steps(batches_for(saved.length["epochs"]), accumulation, saved.length["max_steps"])
    warmup = optimizer_steps_before(config.warmup_epochs, batches_for(config.epochs), accumulation)
    progress = cosine_progress(step, old_total, warmup, tuple(saved.cosine) if saved.cosine else None)
    return dataclasses.replace(run, cosine=[step, progress] if step > warmup else None)


def total_steps(batches: list[int], grad_accum: int, max_steps: int | None) -> int:
    """Optimizer steps of a run whose epochs have ``batches`` local batches each, cut at ``max_steps``."""
    steps = sum(batches) // grad_accum
    return steps if max_steps is None else min(steps, max_steps)


def planned_layout(config, world: int) -> Layout:
    """The layout the flags ask for on ``world`` ranks, and the engine this process runs under."""
    from ..config import deepspeed_launched

    engine = "deepspeed" if deepspeed_launched() else "torch"
    return Layout(world, config.per_rank_batch(world), config.grad_accum, engine)


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run continues: its folder, ``trainer_state.json`` (read once), its contract, and
    how this run's layout differs from the one that wrote it (a line, or None)."""

    path: Path
    state: dict
    saved: RunState
    layout_note: str | None = None


def open_run(config, layout: Layout) -> tuple[Layout, ResumePoint | None]:
    """What every training command does first, before any model or image is read: lock
    ``--output-dir`` (rank 0; every rank dies with its launcher), find the checkpoint ``--resume`` names
    (damaged ones skipped or refused: ``checkpoint.resolve_resume``), read its contract and fit this
    run's ``layout`` to its global batch (:func:`resume_layout`). Returns the layout to run and the
    resume point (None for a fresh run). Errors are ``ConfigError``\\ s of ``--output-dir``/``--resume``."""
    from ..config import about
    from .checkpoint import read_state, resolve_resume
    from .lifecycle import claim_output_dir

    with about("output_dir"):
        claim_output_dir(config.output_dir)
    with about("resume"):
        path = resolve_resume(config.resume, config.output_dir / "checkpoints", strict=config.strict_resume)
    if path is None:
        return layout, None
    engine = layout.engine
    with about("resume"):
        state = read_state(path)
        saved = RunState.of_checkpoint(path, state)
        if saved.command != config.command:
            raise InputError(f"{path}: a checkpoint of `{saved.command}`, not of `{config.command}`")
        fitted, note = resume_layout(
            saved.layout, layout.ranks, layout.batch, layout.accumulation, config.global_batch_size
        )
        if saved.layout.engine == "torch" and engine == "deepspeed":
            raise InputError(
                f"{path}: written by a run without DeepSpeed (torch's AdamW state, no ZeRO partitions): "
                "resume it the same way, without a DeepSpeed accelerate config"
            )
    return dataclasses.replace(fitted, engine=engine), ResumePoint(path, state, saved, note)


def loads_universal(point: ResumePoint | None, layout: Layout) -> bool:
    """The checkpoint resumed holds ZeRO partitions of another number of ranks, and this run's DeepSpeed
    engine takes them as a universal checkpoint (``elastic.py``)."""
    return (
        point is not None
        and layout.engine == "deepspeed"
        and point.saved.layout.needs_conversion(layout.ranks, layout.engine)
    )
