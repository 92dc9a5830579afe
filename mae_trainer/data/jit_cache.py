"""numba's on-disk cache for FFCV's compiled pipeline: a process compiles it once per machine, not per run.

FFCV compiles every pipeline operation with numba when a loader first runs (``Compiler.compile``, lazily,
at the first call): seconds in every process, in every rank and in every test that opens a loader. Inside
:func:`cached_pipeline` (around a ``Loader``'s construction) FFCV's ``Compiler.compile`` is replaced by
one that compiles the same way (same flags) but keeps the machine code in :func:`cache_dir`, so a later
process loads it instead of compiling.

numba's own ``cache=True`` cannot serve FFCV's operations as they are:

- they call C through ctypes function pointers (addresses in the machine code, "dynamic globals"):
  :mod:`~mae_trainer.data.crop_decode.native` binds the C functions by name instead;
- they are closures over other compiled functions, and numba keys its cache on a pickle of the closure
  cells, which for a compiled function holds a per-process random id: never a hit. The cache here keys on
  the closed-over functions' code and closures (recursively), arrays' bytes and other values' pickles.

The cache directory (``$MAE_TRAINER_NUMBA_CACHE``, default ``~/.cache/mae_trainer/numba``) has one
folder per fingerprint of what the code depends on: the versions of Python, numba, llvmlite and FFCV, the
sources of ``mae_trainer.data`` and the two C libraries (size and mtime). A change to any of them starts a
new folder; within one, numba itself checks each function's source file. Writes are atomic (numba writes
a temporary file and renames it), so several processes (ranks) can fill the same folder at once.
``MAE_TRAINER_NUMBA_CACHE=off`` compiles without the cache; deleting the folder clears it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import sys
import types as pytypes
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numba.core.errors import NumbaWarning

# FFCV's own decoders (e.g. the centre crop of the evaluation loader) still call C through ctypes pointers:
# numba compiles them as before and says, at every compile, that it cannot cache them. Expected: not shown.
warnings.filterwarnings("ignore", message="Cannot cache compiled function", category=NumbaWarning)

CACHE_ENV = "MAE_TRAINER_NUMBA_CACHE"
_OFF = ("0", "off", "false", "no")


def cache_root() -> Path | None:
    """The cache's root folder, or None when ``$MAE_TRAINER_NUMBA_CACHE`` turns it off."""
    value = os.environ.get(CACHE_ENV, "")
    if value.lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mae_trainer" / "numba"


@functools.cache
def fingerprint() -> str:
    """What compiled code depends on beyond each function's own source file (see the module docstring)."""
    import ffcv
    import ffcv._libffcv
    import llvmlite
    import numba

    from .crop_decode.native import _library_path

    digest = hashlib.sha256()
    digest.update(repr((sys.version, numba.__version__, llvmlite.__version__, ffcv.__version__)).encode())
    here = Path(__file__).parent
    for source in sorted([*here.glob("*.py"), *here.glob("crop_decode/*.py")]):
        digest.update(source.name.encode() + source.read_bytes())
    for library in (_library_path(), ffcv._libffcv.__file__):
        stat = os.stat(library)
        digest.update(repr((os.path.basename(library), stat.st_size, stat.st_mtime_ns)).encode())
    return digest.hexdigest()[:16]


def cache_dir() -> Path | None:
    """This code's cache folder (``<root>/<fingerprint>``), or None when caching is off."""
    root = cache_root()
    return None if root is None else root / fingerprint()


def _hash_code(code: pytypes.CodeType, digest) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, pytypes.CodeType):
            _hash_code(const, digest)
        else:
            digest.update(repr(const).encode())


def _hash_value(value, digest, depth: int = 0) -> None:
    """Feed a description of ``value`` that is the same in every process to ``digest``."""
    from numba.core.dispatcher import Dispatcher

    if depth > 20:
        raise RecursionError("closures nested too deeply to key the cache")
    if isinstance(value, Dispatcher):
        digest.update(repr(sorted(value.targetoptions.items())).encode())
        value = value.py_func
    if isinstance(value, pytypes.FunctionType):
        digest.update(f"{value.__module__}.{value.__qualname__}".encode())
        _hash_code(value.__code__, digest)
        for cell in value.__closure__ or ():
            _hash_value(cell.cell_contents, digest, depth + 1)
    elif isinstance(value, np.ndarray):
        digest.update(repr((value.dtype.str, value.shape)).encode() + np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (tuple, list)):
        digest.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _hash_value(item, digest, depth + 1)
    else:
        digest.update(pickle.dumps(value))


@functools.cache
def _cache_classes():
    from numba.core.caching import CompileResultCacheImpl, FunctionCache, UserProvidedCacheLocator

    class Locator(UserProvidedCacheLocator):
        """numba's locator for a user-given folder, the folder being :func:`cache_dir`."""

        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = str(cache_dir() / self.get_suitable_cache_subpath(py_file))

        @classmethod
        def from_function(cls, py_func, py_file):
            # the file-backed mixin's: the source file exists and the cache folder can be written
            return super(UserProvidedCacheLocator, cls).from_function(py_func, py_file)

    class Impl(CompileResultCacheImpl):
        _locator_classes = [Locator]

    class PipelineCache(FunctionCache):
        """numba's function cache in :func:`cache_dir`, keyed on a process-independent closure hash."""

        _impl_class = Impl

        def __init__(self, py_func):
            super().__init__(py_func)
            closure = hashlib.sha256()  # the closure as it is now: FFCV's never change once built
            for cell in py_func.__closure__ or ():
                _hash_value(cell.cell_contents, closure)
            self._closure_key = closure.hexdigest()

        def _index_key(self, sig, codegen):
            code = hashlib.sha256(self._py_func.__code__.co_code).hexdigest()
            return (sig, codegen.magic_tuple(), (code, self._closure_key))

    return PipelineCache


def enable(dispatcher) -> None:
    """Give the numba ``dispatcher`` (not compiled yet) the on-disk cache, if caching is on and its
    function has a source file to key on (else it compiles as before)."""
    if cache_dir() is None:
        return
    try:
        dispatcher._cache = _cache_classes()(dispatcher.py_func)
    except Exception:  # no source file, a folder that cannot be written, a closure that cannot be keyed
        pass


def _compile(code, signature=None):
    """FFCV's ``Compiler.compile`` (same flags), the result cached on disk."""
    from ffcv.pipeline.compiler import Compiler
    from numba import njit

    if not Compiler.is_enabled:
        return code
    parallel = getattr(code, "is_parallel", False) and Compiler.num_threads > 1
    flags = dict(fastmath=True, nogil=True, error_model="numpy", parallel=parallel)
    dispatcher = njit(**flags)(code)
    enable(dispatcher)
    if signature is not None:  # as njit(signature): compiled now (from the cache), and for it only
        for each in signature if isinstance(signature, list) else [signature]:
            dispatcher.compile(each)
        dispatcher.disable_compile()
    return dispatcher


@contextlib.contextmanager
def cached_pipeline() -> Iterator[None]:
    """While inside, FFCV compiles through the on-disk cache: wrap a ``Loader``'s construction (FFCV
    generates and wraps its pipeline's code there; the compilation itself happens at the first batch)."""
    from ffcv.pipeline.compiler import Compiler

    if cache_dir() is None:
        yield
        return
    original = Compiler.__dict__["compile"]
    Compiler.compile = staticmethod(_compile)
    try:
        yield
    finally:
        Compiler.compile = original
