"""Two dependencies' imports without work that no caller of ours uses (seconds in every process).

- FFCV: ``ffcv/fields/rgb_image.py`` builds, at import, ``IMAGE_MODES = numba.typed.Dict()`` and sets
  ``'jpg' -> 0`` and ``'raw' -> 1``: the first ``numba.typed.Dict`` of a process compiles numba's dictionary
  and string code, which numba does not cache: 3-4 s of every ``import ffcv`` (``ffcv/__init__.py``
  imports its loader, which imports the fields), every command and rank that reads a ``.beton``. The dict
  is only read from Python (FFCV's decoders and writer, ``crop_decode/decoder.py`` and ``data/write.py``
  read ``IMAGE_MODES['jpg']`` when they build their code or encode a sample), never from compiled code, so
  while that module's code runs ``numba.typed.Dict`` is ``dict``: a plain dict with the same two entries.
- timm: ``import timm`` imports all of it, ``timm/utils/summary.py`` included, which imports wandb if it is
  installed (``try: import wandb``; 0.4-0.9 s) for ``update_summary(log_wandb=True)`` of timm's own
  training scripts, which nothing here calls. While timm's package code runs, ``import wandb`` fails as if
  it were not installed (``sys.modules['wandb'] = None``, removed right after); a later ``import wandb``
  (``--report-to wandb``) imports it as usual. When wandb is already imported, nothing changes.

:func:`install` (called by ``mae_trainer/__init__.py``, so before any import of ours of either) puts a
:class:`_Finder` (``_import_hook.py``) first on ``sys.meta_path`` that answers for ``ffcv.fields.rgb_image``
and ``timm`` alone: it wraps the module's loader so that the change above holds while the module's code
runs (undone right after, also on an error), and leaves ``sys.meta_path`` once both have fired. Nothing
changes for a module imported before ``mae_trainer``. ``MAE_TRAINER_LEAN_IMPORTS=0`` turns both off.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from ._import_hook import Finder

FFCV_MODES = "ffcv.fields.rgb_image"
TIMM = "timm"
ENV = "MAE_TRAINER_LEAN_IMPORTS"


@contextlib.contextmanager
def _plain_dict(module=None) -> Iterator[None]:
    import numba.typed

    typed = numba.typed.Dict
    numba.typed.Dict = dict
    try:
        yield
    finally:
        numba.typed.Dict = typed


@contextlib.contextmanager
def _without_wandb(module=None) -> Iterator[None]:
    if "wandb" in sys.modules:  # imported already (or blocked by someone else): leave it
        yield
        return
    sys.modules["wandb"] = None  # `import wandb` raises ImportError
    try:
        yield
    finally:
        if "wandb" in sys.modules and sys.modules["wandb"] is None:
            del sys.modules["wandb"]


STEPS = {FFCV_MODES: _plain_dict, TIMM: _without_wandb}


class _Finder(Finder):
    """First on ``sys.meta_path`` until both modules are imported (``_import_hook.Finder``)."""


def install() -> None:
    """Put the finder first on ``sys.meta_path`` for the modules not imported yet (unless it is there, or
    ``$MAE_TRAINER_LEAN_IMPORTS`` is ``0``)."""
    if os.environ.get(ENV, "").lower() in ("0", "off", "false", "no"):
        return
    if any(isinstance(finder, _Finder) for finder in sys.meta_path):
        return
    pending = {name: step for name, step in STEPS.items() if name not in sys.modules}
    if pending:
        sys.meta_path.insert(0, _Finder(pending))
