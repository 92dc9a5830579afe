"""FFCV's import without numba compiling a typed dict of two constants (seconds in every process).

``ffcv/fields/rgb_image.py`` builds, at import, ``IMAGE_MODES = numba.typed.Dict()`` and sets
``'jpg' -> 0`` and ``'raw' -> 1``: the first ``numba.typed.Dict`` of a process compiles numba's dictionary
and string code, which numba does not cache: 3-4 s of every ``import ffcv`` (``ffcv/__init__.py`` imports
its loader, which imports the fields), every command and rank that reads a ``.beton``. The dict is only
read from Python (FFCV's decoders and writer, ``crop_decode/decoder.py`` and ``data/write.py`` read
``IMAGE_MODES['jpg']`` when they build their code or encode a sample), never from compiled code, so a plain
``dict`` with the same two entries does the same.

:func:`install` (called by ``mae_trainer/__init__.py``, so before any FFCV import of ours) puts a
:class:`_Finder` first on ``sys.meta_path`` that answers for ``ffcv.fields.rgb_image`` alone: while that
module's code runs, ``numba.typed.Dict`` is ``dict`` (put back right after, also on an error), and the
finder leaves ``sys.meta_path`` once it has fired. Nothing changes when FFCV was imported before
``mae_trainer`` (the module is already there) or when the module's code no longer has this shape (a plain
dict serves every read the same way). ``MAE_TRAINER_FFCV_TYPED_MODES=1`` keeps FFCV's typed dict.
"""

from __future__ import annotations

import os
import sys

MODULE = "ffcv.fields.rgb_image"
KEEP_ENV = "MAE_TRAINER_FFCV_TYPED_MODES"


class _PlainDictLoader:
    """The real loader; ``numba.typed.Dict`` is ``dict`` while the module's code runs."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        import numba.typed

        typed = numba.typed.Dict
        numba.typed.Dict = dict
        try:
            self.loader.exec_module(module)
        finally:
            numba.typed.Dict = typed
            module.__loader__ = module.__spec__.loader = self.loader

    def __getattr__(self, name: str):  # get_source, get_filename, is_package, ...
        return getattr(self.__dict__["loader"], name)


class _Finder:
    """First on ``sys.meta_path`` until FFCV's ``rgb_image`` is imported; answers for nothing else."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != MODULE:
            return None
        self.uninstall()  # one module, once
        for finder in list(sys.meta_path):
            if not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PlainDictLoader(spec.loader)
                return spec
        return None

    def uninstall(self) -> None:
        while self in sys.meta_path:
            sys.meta_path.remove(self)

    def invalidate_caches(self) -> None:
        pass


def install() -> None:
    """Put the finder first on ``sys.meta_path``, unless FFCV's module is already imported (or the finder
    is there, or ``$MAE_TRAINER_FFCV_TYPED_MODES`` asks for FFCV's own typed dict)."""
    if MODULE in sys.modules or os.environ.get(KEEP_ENV, "") not in ("", "0"):
        return
    if any(isinstance(finder, _Finder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
