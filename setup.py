"""Native part of the package; everything else is declared in pyproject.toml.

``mae_trainer.data.crop_decode._cropjpeg`` is a plain C shared library (no Python API) linked against
libjpeg (Debian/Ubuntu: libjpeg-dev; conda-forge: libjpeg-turbo). It is declared as an Extension so that
``pip install .`` and ``pip install -e .`` compile it and put it inside the package; the decoder loads it with
ctypes. When pkg-config knows ``libjpeg`` (a conda/spack/module prefix on PKG_CONFIG_PATH) its include and
library directories are used, the latter also as the library's run path, so the libjpeg it was compiled
against is the one it loads; otherwise the compiler's default paths.
"""

import subprocess

from setuptools import Extension, setup


def _pkg_config_dirs(module: str) -> tuple[list[str], list[str]]:
    """(include dirs, library dirs) pkg-config gives for ``module``; empty when either is missing."""
    try:
        flags = subprocess.run(
            ["pkg-config", "--cflags", "--libs", module], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return [], []
    return [f[2:] for f in flags if f.startswith("-I")], [f[2:] for f in flags if f.startswith("-L")]


jpeg_include_dirs, jpeg_library_dirs = _pkg_config_dirs("libjpeg")

setup(
    ext_modules=[
        Extension(
            "mae_trainer.data.crop_decode._cropjpeg",
            sources=["mae_trainer/data/crop_decode/cropjpeg.c", "mae_trainer/data/crop_decode/resample.c"],
            include_dirs=jpeg_include_dirs,
            library_dirs=jpeg_library_dirs,
            runtime_library_dirs=jpeg_library_dirs,
            libraries=["jpeg", "m"],
        )
    ]
)
