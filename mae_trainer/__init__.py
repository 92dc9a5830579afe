"""mae_trainer: fast Masked Autoencoder pretraining (DailyMAE) with FFCV data, DeepSpeed and HF models.

Importing the package is cheap (no torch, no transformers): the model classes below are imported on first
use (PEP 562), and they are registered with transformers' Auto classes as soon as transformers imports
those (see ``mae_trainer/_auto_register.py``), so ``import mae_trainer`` followed by
``AutoModel.from_pretrained(folder)`` loads our model, in whichever order the two are imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _auto_register, _lean_imports

if TYPE_CHECKING:
    from .modeling import MAEConfig, MAEForImageClassification, MAEForPreTraining, MAEModel

__version__ = "0.1.0"
__all__ = ["MAEConfig", "MAEForImageClassification", "MAEForPreTraining", "MAEModel", "__version__"]

_auto_register.install()
_lean_imports.install()  # FFCV and timm without work nothing here uses (_lean_imports.py)


def __getattr__(name: str):
    if name in __all__:
        from . import modeling

        value = getattr(modeling, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
