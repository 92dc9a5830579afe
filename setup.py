"""Native part of the package; everything else is declared in pyproject.toml.

``mae_trainer.data.crop_decode._cropjpeg`` is a plain C shared library (no Python API) linked against the
system libjpeg (Debian: libjpeg62-turbo-dev). It is declared as an Extension so that ``pip install .`` and
``pip install -e .`` compile it and put it inside the package; the decoder loads it with ctypes.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mae_trainer.data.crop_decode._cropjpeg",
            sources=["mae_trainer/data/crop_decode/cropjpeg.c", "mae_trainer/data/crop_decode/resample.c"],
            libraries=["jpeg", "m"],
        )
    ]
)
