"""How many batches FFCV should prepare ahead (``--batches-ahead``): the training loader feeding a consumer
that takes a fixed time per batch without using the CPU, as a GPU step does (the host only queues work,
then waits). The consumer's step is set to the loader's own mean time per batch (measured first, in the same
run): the balanced case, where the GPU would wait for data at every slow batch unless enough are ready. Real
JPEG photos of uneven sizes (``benchmarks/_photos.py``) make the decode time vary from batch to batch.

For each value: whole epochs, the fraction of wall time spent waiting for the next batch (what
``data_wait_fraction`` logs in a run), and ``ratio`` = the epoch time ÷ the epoch time at the baseline,
batches_ahead 2 (the old default). One JSON line per value; the loader is built once (numba compiles once)
and ``batches_ahead`` changed between epochs, as FFCV reads it when an epoch starts.

    .venv/bin/python benchmarks/batches_ahead.py [--values 1,2,3,4,6] [--resolution 160] [--batch 64]
        [--workers N] [--epochs 3] [--load 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _photos import beton, photo_folder

from mae_trainer.data.resolution import ResolutionSchedule
from mae_trainer.data.train_loader import ProgressiveLoader

BASELINE = 2


def consume(loader: ProgressiveLoader, epoch: int, step_s: float) -> tuple[float, float]:
    """One epoch with a ``step_s`` sleep per batch; returns (wall seconds, seconds waiting for batches)."""
    start = time.perf_counter()
    wait = 0.0
    iterator = iter(loader.epoch(epoch))
    while True:
        before = time.perf_counter()
        batch = next(iterator, None)
        wait += time.perf_counter() - before
        if batch is None:
            return time.perf_counter() - start, wait
        time.sleep(step_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", default="1,2,3,4,6")
    parser.add_argument("--resolution", type=int, default=160)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per value")
    parser.add_argument("--load", type=float, default=1.0, help="consumer step ÷ loader time per batch")
    parser.add_argument("--per-photo", type=int, default=48)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mae_trainer_bench")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = beton(photo_folder(args.work, per_photo=args.per_photo), "jpg")
    schedule = ResolutionSchedule(resolution=args.resolution, batch_size=args.batch)
    loader = ProgressiveLoader(data, schedule, num_workers=args.workers, seed=0, crop_decode=True)
    epoch = 0
    consume(loader, epoch, 0.0)  # numba compiles the pipeline
    epoch += 1
    producer = []
    for _ in range(2):  # the loader alone: its time per batch
        seconds, _ = consume(loader, epoch, 0.0)
        producer.append(seconds / loader.batches_in_epoch(epoch))
        epoch += 1
    step_s = statistics.median(producer) * args.load
    results = {}
    values = [int(v) for v in args.values.split(",")]
    for _ in range(args.epochs):  # values in alternation, so noise spreads over all of them
        for value in values:
            loader.loader.batches_ahead = value
            seconds, wait = consume(loader, epoch, step_s)
            results.setdefault(value, []).append((seconds, wait))
            epoch += 1
    base = statistics.median(s for s, _ in results[BASELINE]) if BASELINE in results else None
    for value in values:
        seconds = statistics.median(s for s, _ in results[value])
        wait = statistics.median(w / s for s, w in results[value])
        print(
            json.dumps(
                {
                    "benchmark": "batches_ahead",
                    "batches_ahead": value,
                    "resolution": args.resolution,
                    "batch": args.batch,
                    "workers": args.workers,
                    "consumer_step_ms": round(step_s * 1e3, 1),
                    "batches_per_epoch": loader.batches_in_epoch(0),
                    "data_wait_fraction": round(wait, 3),
                    "epoch_s": round(seconds, 2),
                    "baseline": f"batches_ahead {BASELINE}",
                    "ratio": round(seconds / base, 3) if base else None,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
