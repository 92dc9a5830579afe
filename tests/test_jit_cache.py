"""numba's on-disk cache of FFCV's pipeline (``mae_trainer/data/jit_cache.py``): a second process loads the
compiled pipeline instead of compiling it, and its batches are byte for byte the first process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

# One epoch of crop-decoded samples; then the cache counters of every compiled
# function of the pipeline (numba's dispatcher stats: a hit is a load from disk, a miss a compilation).
SCRIPT = """
import hashlib, json, sys
from numba.core.dispatcher import Dispatcher
from mae_trainer.data.resolution import ResolutionSchedule
from mae_trainer.data.train_loader import ProgressiveLoader

digest = hashlib.sha256()
hits = misses = 0
loader = ProgressiveLoader(sys.argv[1], ResolutionSchedule(resolution=64, batch_size=64), num_workers=2,
                           seed=3, crop_decode=True)
for batch in loader.epoch(0):
    digest.update(batch.images.numpy().tobytes())
stages, _ = loader.loader.code
functions = [v for stage, _ in stages for v in stage.__globals__.values() if isinstance(v, Dispatcher)]
for dispatcher in {id(f): f for f in functions}.values():
    hits += sum(dispatcher.stats.cache_hits.values())
    misses += sum(dispatcher.stats.cache_misses.values())
print(json.dumps({"digest": digest.hexdigest(), "hits": hits, "misses": misses}))
"""


def run(beton: Path, cache: str) -> dict:
    env = {**os.environ, "MAE_TRAINER_NUMBA_CACHE": cache, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(beton)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_pipeline_from_the_cache(demo_beton, tmp_path):
    cache = tmp_path / "numba"
    first = run(demo_beton, str(cache))
    assert first["misses"] > 0 and first["hits"] == 0  # an empty cache: compiled
    assert list(cache.glob("*/*/*.nbc")), "nothing written to the cache folder"
    second = run(demo_beton, str(cache))
    assert second["misses"] == 0 and second["hits"] == first["misses"]  # every function loaded
    assert second["digest"] == first["digest"]
    uncached = run(demo_beton, "off")
    assert uncached["hits"] == 0  # compiled without the cache
    assert uncached["digest"] == first["digest"]
