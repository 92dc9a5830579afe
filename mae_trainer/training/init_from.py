"""``pretrain --init-from``: start pre-training from saved weights (a longer schedule, another data set, the
DailyMAE authors' ``-w``), with a fresh optimizer, lr schedule, step counter and data order.

The source is anything the one loader of saved models accepts (``modeling/loading.py``): a folder saved by
this library (a pre-training run's output directory), a transformers ``vit_mae`` folder, or a Hub repo id of
either. Its architecture must be the ``--model`` preset's; image size, mask ratio and the loss target are
not architecture (the position tables are fixed sin-cos, computed for each grid) and follow the run's flags.

:func:`check_init_from` needs neither torch nor transformers (config.json and the safetensors headers);
:func:`load_init_weights` copies the weights into the run's model before the engine prepares it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..config import ConfigError, about
from ..modeling.loading import VIT_MAE, SavedModel, resolve_saved_model
from ..modeling.presets import PRESETS

# The fields that fix the network's tensors and function. Defaults for keys a config.json leaves out are
# MAEConfig's, which are transformers' ViTMAEConfig's too (MAE-B/16 with GELU and qkv bias).
DEFAULTS = {
    **PRESETS["base"],
    "patch_size": 16,
    "num_channels": 3,
    "mlp_ratio": 4.0,
    "decoder_mlp_ratio": 4.0,
    "qkv_bias": True,
    "hidden_act": "gelu",
}
ARCHITECTURE = tuple(DEFAULTS)


def preset_architecture(preset: str) -> dict:
    return {**DEFAULTS, **PRESETS[preset]}


def saved_architecture(raw: dict, model_type: str) -> dict:
    """The architecture fields of a saved ``config.json`` (``vit_mae``'s MLP sizes as ratios)."""
    values = {**DEFAULTS, **{k: raw[k] for k in ARCHITECTURE if k in raw}}
    if model_type == VIT_MAE:
        hidden = values["hidden_size"]
        values["mlp_ratio"] = raw.get("intermediate_size", 4 * hidden) / hidden
        decoder = values["decoder_hidden_size"]
        values["decoder_mlp_ratio"] = raw.get("decoder_intermediate_size", 4 * decoder) / decoder
    return values


def check_init_from(spec: str, preset: str) -> SavedModel:
    """The resolved saved model of ``--init-from`` (a Hub id is downloaded into the Hugging Face cache), or
    a :class:`ConfigError` naming the first architecture field that differs from ``--model``'s."""
    with about("init_from"):
        saved = resolve_saved_model(spec)
    raw = json.loads((saved.folder / "config.json").read_text())
    theirs, ours = saved_architecture(raw, saved.model_type), preset_architecture(preset)
    for key in ARCHITECTURE:
        if theirs[key] != ours[key]:
            raise ConfigError(
                "init_from",
                spec,
                f"not the architecture of --model {preset}: {key} is {theirs[key]!r} in the saved model, "
                f"{ours[key]!r} in {preset} (choose the --model it was saved with)",
            )
    return saved


def load_init_weights(model, folder: Path) -> None:
    """Copy the weights saved in ``folder`` (ours or ``vit_mae``, converted) into ``model``, every tensor."""
    with about("init_from"):
        source = type(model).from_pretrained(folder)
    model.load_state_dict(source.state_dict(), strict=True)


def init_weights(say: Callable[[str], None], model, spec: str | None, plan) -> None:
    """``--init-from``: load the checked folder of ``plan`` into ``model`` before ``accelerator.prepare`` (so
    that DeepSpeed's master weights are these), and ``say`` where the weights came from; a checkpoint to
    resume from wins over it (the command line of a preempted run stays the same)."""
    if plan.init_from is not None:
        load_init_weights(model, plan.init_from)
        say(f"weights from --init-from {spec} ({plan.init_from}); optimizer, lr and data start fresh")
    elif spec is not None:
        say(f"--init-from {spec} not used: resuming from the checkpoint {plan.resume.path}")
