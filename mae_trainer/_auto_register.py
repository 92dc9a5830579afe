"""Register our model with transformers' Auto classes without importing transformers (or torch) early.

``import mae_trainer`` promises that ``AutoConfig``, ``AutoModel``, ``AutoModelForPreTraining`` and
``AutoModelForImageClassification`` know our ``model_type``, but importing transformers' Auto classes pulls
in torch (seconds), which a command that only prints ``--help`` should not pay. Registration needs the Auto
classes, so it happens when they exist:

- :func:`install` (called by ``mae_trainer/__init__.py``) registers at once with every Auto module that is
  already imported, and puts a :class:`_Finder` first on ``sys.meta_path`` for the others;
- transformers imports its Auto classes from two modules: ``AutoConfig`` (also what ``AutoModel*`` use to
  read ``config.json``) from :data:`CONFIG_AUTO`, the ``AutoModel*`` classes from :data:`MODELING_AUTO`
  (which imports :data:`CONFIG_AUTO` first). The finder only answers for these two names: it asks the
  finders after it for the real spec and wraps its loader, so that right after the module's code has run
  our classes are registered with it (:data:`CONFIG_AUTO`: ``MAEConfig`` only, which needs no timm;
  :data:`MODELING_AUTO`: the models). It puts the original loader back on the module and leaves
  ``sys.meta_path`` once both have fired (the hook itself: ``_import_hook.py``, shared with
  ``_lean_imports.py``).

Why after the module's own code, and why one step per module: ``AutoModel.register`` needs the finished
:data:`MODELING_AUTO`, but :data:`CONFIG_AUTO` finishes while :data:`MODELING_AUTO` is still half imported,
so the config step must not touch the models. The callbacks use the module object they are given, never
``from transformers import ...``, so no import of transformers' lazy modules runs inside transformers' own
import. ``mae_trainer.modeling`` itself is lazy, so importing the config does not import the models.

A failure to register is a warning, not an exception: it must not break ``import transformers`` for code
that never uses our model. Each process registers for itself (``spawn`` children and launched ranks import
``mae_trainer`` again).
"""

from __future__ import annotations

import contextlib
import sys
import warnings

from ._import_hook import Finder

CONFIG_AUTO = "transformers.models.auto.configuration_auto"
MODELING_AUTO = "transformers.models.auto.modeling_auto"


def register_config(configuration_auto) -> None:
    from .modeling.configuration_mae import MAEConfig

    configuration_auto.AutoConfig.register(MAEConfig.model_type, MAEConfig, exist_ok=True)


def register_models(auto) -> None:
    from .modeling.configuration_mae import MAEConfig
    from .modeling.modeling_mae import MAEForImageClassification, MAEForPreTraining, MAEModel

    auto.AutoModel.register(MAEConfig, MAEModel, exist_ok=True)
    auto.AutoModelForPreTraining.register(MAEConfig, MAEForPreTraining, exist_ok=True)
    auto.AutoModelForImageClassification.register(MAEConfig, MAEForImageClassification, exist_ok=True)


STEPS = {CONFIG_AUTO: register_config, MODELING_AUTO: register_models}


def _run(step, module) -> None:
    try:
        step(module)
    except Exception as error:  # a broken install of ours must not break transformers' import
        warnings.warn(
            f"mae_trainer could not register its model with {module.__name__}: {error!r}",
            RuntimeWarning,
            stacklevel=2,
        )


def _after(step):
    """The hook's step for a module: ``step`` runs on it right after its code ran (not on an error)."""

    @contextlib.contextmanager
    def around(module):
        yield
        _run(step, module)

    return around


class _Finder(Finder):
    """First on ``sys.meta_path`` until both Auto modules are imported (``_import_hook.Finder``)."""


def install() -> None:
    """Register now with the Auto modules already imported; register with the others when they are."""
    if any(isinstance(finder, _Finder) for finder in sys.meta_path):
        return
    pending = {}
    for name, step in STEPS.items():
        module = sys.modules.get(name)
        if module is None:
            pending[name] = step
        else:
            _run(step, module)
    if pending:
        sys.meta_path.insert(0, _Finder({name: _after(step) for name, step in pending.items()}))
