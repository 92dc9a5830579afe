"""Write images to an FFCV ``.beton`` file (``mae-trainer write-dataset``).

The defaults follow the DailyMAE authors (and FFCV's ImageNet example): longest side 500 px, JPEG quality
90, so that crop decode has JPEG samples to work on and RandomResizedCrop rarely enlarges.

Every image is decoded once: in FFCV's writer workers, checked, oriented by its EXIF tag, converted to RGB
and resized here, so nothing that can fail reaches FFCV (whose writer hangs forever when one of its workers
raises). An image that cannot be written (unreadable, truncated, too small) is replaced by a tiny placeholder
that is removed from the file's tables once FFCV is done: the file holds only the images kept, and the
sidecar lists the others. Should a worker fail anyway, or the process get SIGTERM/Ctrl-C, the write stops
with a clear error. The output appears under its final name only once it is complete: FFCV writes into a
hidden file beside it, renamed at the end and removed on any error or signal. A sidecar ``FILE.beton.json``
records what was written (count, JPEG and raw samples, classes, settings, skipped files with the reason).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..publish import check_output_dir, publish_text, publishing, remove_stale_partials
from .sources import ImageSource, Skips
from .write_watch import WorkerWatch, release_shared_memory

WRITE_MODES = ("smart", "jpg", "raw")


@dataclass
class WriteSettings:
    """How images are stored. ``smart`` stores an image as JPEG when its raw size (after the
    ``max_resolution`` resize) exceeds ``smart_threshold`` bytes, raw otherwise."""

    max_resolution: int = 500
    write_mode: str = "jpg"
    jpeg_quality: int = 90
    smart_threshold: int = 3 * 256 * 256
    num_workers: int = 2

    def validate(self) -> None:
        """``InputError`` whose ``argument`` is the field at fault."""
        if self.write_mode not in WRITE_MODES:
            raise InputError(f"{self.write_mode!r}: choose one of {', '.join(WRITE_MODES)}", "write_mode")
        if self.max_resolution < 16:
            raise InputError(f"{self.max_resolution}: must be at least 16 pixels", "max_resolution")
        if not 1 <= self.jpeg_quality <= 100:
            raise InputError(f"{self.jpeg_quality}: must be between 1 and 100", "jpeg_quality")
        if self.num_workers < 1:
            raise InputError(f"{self.num_workers}: must be at least 1", "num_workers")


def check_output(output: Path, overwrite: bool) -> None:
    """``InputError`` (``argument`` ``"output"``) for an output that cannot or may not be written: not a
    ``.beton`` name, an existing file without ``overwrite``, a folder that is not one or cannot be written
    (nothing is created by the check)."""
    if output.suffix != ".beton":
        raise InputError(f"{output}: the file name must end in .beton", "output")
    if os.path.isdir(output):
        raise InputError(f"{output}: is a folder", "output")
    if os.path.lexists(output) and not overwrite:
        raise InputError(f"{output}: already exists (overwrite=True replaces it)", "output")
    try:
        check_output_dir(output.parent)
    except InputError as err:
        err.argument = "output"
        raise


def write_beton(source: ImageSource, output: Path, settings: WriteSettings, overwrite: bool = False) -> dict:
    """Write ``source`` to ``output`` atomically and return the summary also saved as ``output.json``."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    settings.validate()
    check_output(output, overwrite)
    for stale in remove_stale_partials(output, suffixes=("", ".json")):
        print(f"removed {stale}: left by an earlier write whose process is gone", file=sys.stderr)
    source.max_side = settings.max_resolution
    source.ready()
    fields = {
        "image": RGBImageField(
            write_mode=settings.write_mode,
            max_resolution=settings.max_resolution,
            jpeg_quality=settings.jpeg_quality,
            smart_threshold=settings.smart_threshold,
        ),
    }
    if source.labelled:
        fields["label"] = IntField()
    start = time.perf_counter()
    writer = None
    source._skips = skips = Skips(len(source))
    try:
        # the watch ends the workers before the partial file is removed (they could write it again)
        with publishing(output) as partial, WorkerWatch(source, output, partial) as watch:
            writer = _skipping_writer(DatasetWriter, source)(
                str(partial), fields, num_workers=settings.num_workers
            )
            writer.from_indexed_dataset(source, chunksize=64)
            watch.finished()
    except OSError as err:
        raise InputError(f"{output}: cannot write ({err.strerror}: {err.filename})", "output") from None
    finally:
        source._skips = None
        skips.log.close()
        release_shared_memory(writer)
    summary = {
        "file": output.name,
        "source": source.name,
        "count": len(source),
        **stored_formats(output),
        "labelled": source.labelled,
        "classes": source.classes if source.labelled else [],
        "class_counts": source.class_counts() if source.labelled else {},
        "skipped": source.skipped,
        "settings": asdict(settings),
        "bytes": output.stat().st_size,
        "seconds": round(time.perf_counter() - start, 2),
    }
    sidecar = output.with_name(output.name + ".json")
    publish_text(sidecar, json.dumps(summary, indent=2) + "\n")
    return summary


def _skipping_writer(DatasetWriter, source: ImageSource):
    """FFCV's ``DatasetWriter`` that, once its workers are done, drops the placeholders of the items they
    skipped: their rows of the metadata table and their entries of the allocation table go, the other samples
    are renumbered in order and the header's count is the samples kept (the placeholders' few bytes stay in
    the data region, unreferenced). ``source`` then lists the skipped items and keeps the others only."""
    from ffcv.types import ALLOC_TABLE_TYPE

    class SkippingWriter(DatasetWriter):
        def finalize(self, allocations):
            skips = source._skips
            bad = np.frombuffer(skips.flags, dtype=np.uint8)[: self.num_samples].astype(bool)
            if bad.any():
                entries = skips.entries()
                source.skipped += [{"file": e["file"], "reason": e["reason"]} for e in entries]
                source.order = [item for item, dropped in zip(source.order, bad) if not dropped]
                if not source.order:
                    raise InputError(
                        f"{source.name}: none of the images can be read "
                        f"(first: {entries[0]['file']}: {entries[0]['reason']})",
                        "source",
                    )
                keep = ~bad
                metadata = np.frombuffer(self.metadata_sm.buf, dtype=self.metadata_type)
                metadata[: keep.sum()] = metadata[keep]  # rows past the count are never read
                del metadata  # the shared memory cannot be closed while a view of it exists
                table = np.array(allocations, dtype=ALLOC_TABLE_TYPE)
                table = table[keep[table["sample_id"]]]
                table["sample_id"] = (np.cumsum(keep) - 1)[table["sample_id"]]
                allocations = table.tolist()
                self.header["num_samples"] = int(keep.sum())
            super().finalize(allocations)

    return SkippingWriter


def stored_formats(path: Path) -> dict:
    """How many samples of a ``.beton`` are stored as JPEG (crop decode applies) and how many raw."""
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.reader import Reader

    modes = Reader(str(path)).metadata["f0"]["mode"]
    return {"jpeg": int((modes == IMAGE_MODES["jpg"]).sum()), "raw": int((modes == IMAGE_MODES["raw"]).sum())}


def read_summary(path: Path) -> dict | None:
    sidecar = path.with_name(path.name + ".json")
    return json.loads(sidecar.read_text()) if sidecar.exists() else None
