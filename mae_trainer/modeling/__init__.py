"""MAE models. Names are imported on first use (PEP 562), so ``mae_trainer.modeling.configuration_mae`` can be
imported without torch's models or timm; registration with transformers' Auto classes is done by
``mae_trainer._auto_register`` when transformers imports them."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .configuration_mae import PRESETS, MAEConfig
    from .modeling_mae import (
        MAEForImageClassification,
        MAEForPreTraining,
        MAEForPreTrainingOutput,
        MAEImageClassifierOutput,
        MAEModel,
        MAEModelOutput,
        MAEPreTrainedModel,
        sincos_pos_embed_2d,
    )

__all__ = [
    "PRESETS",
    "MAEConfig",
    "MAEForImageClassification",
    "MAEForPreTraining",
    "MAEForPreTrainingOutput",
    "MAEImageClassifierOutput",
    "MAEModel",
    "MAEModelOutput",
    "MAEPreTrainedModel",
    "sincos_pos_embed_2d",
]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    source = ".configuration_mae" if name in ("PRESETS", "MAEConfig") else ".modeling_mae"
    value = getattr(importlib.import_module(source, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
