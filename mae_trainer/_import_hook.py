"""One import hook for the modules of other packages that ``mae_trainer`` must act on while they import
(``_auto_register.py``: register our model with transformers' Auto modules; ``_lean_imports.py``: FFCV and
timm without work nothing here uses).

A :class:`Finder` sits first on ``sys.meta_path`` and answers for its pending module names alone: it asks
the finders after it for the real spec and wraps that spec's loader (:class:`HookedLoader`), so that the
module's code runs inside the step given for it (a context manager factory called with the module). The
original loader is put back on the module afterwards; a module whose code ran without error is no longer
pending, and the finder leaves ``sys.meta_path`` once none is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager


class HookedLoader:
    """The real loader; the module's code runs inside its step."""

    def __init__(self, loader, finder: Finder) -> None:
        self.loader = loader
        self.finder = finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            with self.finder.pending[module.__name__](module):
                self.loader.exec_module(module)
        finally:
            module.__loader__ = module.__spec__.loader = self.loader
        self.finder.fired(module.__name__)

    def __getattr__(self, name: str):  # get_source, get_filename, is_package, ...
        return getattr(self.__dict__["loader"], name)


class Finder:
    """First on ``sys.meta_path`` until every pending module has been imported; answers for nothing else.
    ``pending``: module name → step (called with the module, returns the context its code runs in)."""

    def __init__(self, pending: dict[str, Callable[[object], AbstractContextManager]]) -> None:
        self.pending = pending

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in self.pending:
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = HookedLoader(spec.loader, self)
                return spec
        return None

    def fired(self, name: str) -> None:
        self.pending.pop(name, None)
        if not self.pending:
            self.uninstall()

    def uninstall(self) -> None:
        while self in sys.meta_path:
            sys.meta_path.remove(self)

    def invalidate_caches(self) -> None:
        pass
