"""Crop decode (DailyMAE's "ESSL" trick): RandomResizedCrop that decodes only the crop of each JPEG.

``CropDecodeRGBImageDecoder`` replaces FFCV's ``RandomResizedCropRGBImageDecoder`` in a pipeline. The
native part (``cropjpeg.c``, libjpeg) is compiled by the package build (``setup.py``).
"""

from .decoder import CropDecodeRGBImageDecoder

__all__ = ["CropDecodeRGBImageDecoder"]
