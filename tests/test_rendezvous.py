"""Two real gloo ranks (torch.distributed, spawned processes) through training/rendezvous.py: at start-up
a rank waits for a late one longer than ``--dist-timeout``; afterwards ``--dist-timeout`` bounds every
collective. (The same through ``accelerate launch`` on two "machines": tests/test_multinode.py.)"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mae_trainer.training.rendezvous import end_rendezvous, rendezvous_timeout

DIST_TIMEOUT = timedelta(seconds=3)
LATE_S = 10.0  # rank 1 starts this late: over 3× DIST_TIMEOUT


def _rank_main(rank: int, store: str, out: str) -> None:
    if rank == 1:
        time.sleep(LATE_S)  # a node slow to start
    rendezvous = rendezvous_timeout(DIST_TIMEOUT)
    start = time.monotonic()
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=rendezvous
    )
    end_rendezvous(DIST_TIMEOUT, rendezvous)
    result = {"joined_s": time.monotonic() - start}
    done = Path(f"{out}.0")
    if rank == 0:  # rank 1 never joins this collective (a hung node): it must fail after DIST_TIMEOUT
        start = time.monotonic()
        try:
            dist.all_reduce(torch.ones(1))
            result["error"] = None
        except RuntimeError as err:
            result["error"] = str(err).splitlines()[0]
        result["collective_s"] = time.monotonic() - start
    else:
        while not done.exists():  # alive, connected and silent until rank 0 has its answer
            time.sleep(0.1)
    Path(f"{out}.{rank}").write_text(json.dumps(result))
    if rank == 0:
        # gloo cannot tear down a group whose collective timed out (its worker thread is still blocked:
        # "terminate called without an active exception" at exit); the answer is written, leave now.
        os._exit(0)


@pytest.mark.slow
def test_late_rank_joins_then_dist_timeout_bounds_collectives(tmp_path):
    store, out = str(tmp_path / "store"), str(tmp_path / "rank")
    mp.start_processes(_rank_main, args=(store, out), nprocs=2, start_method="spawn")
    first, late = (json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1))
    print(
        f"rank 0 waited {first['joined_s']:.1f} s at start-up; its lone collective failed after "
        f"{first['collective_s']:.1f} s: {first['error']}"
    )
    # rank 0 waited for rank 1 far longer than DIST_TIMEOUT, and both joined
    assert first["joined_s"] > 2 * DIST_TIMEOUT.total_seconds() and late["joined_s"] < LATE_S
    # afterwards a collective the other rank misses fails within DIST_TIMEOUT (not the rendezvous bound)
    assert first["error"] and "Timed out" in first["error"], first
    assert DIST_TIMEOUT.total_seconds() - 0.5 < first["collective_s"] < DIST_TIMEOUT.total_seconds() + 10


def test_rendezvous_bound():
    assert rendezvous_timeout(timedelta(seconds=30)) == timedelta(minutes=10)
    assert rendezvous_timeout(timedelta(hours=1)) == timedelta(hours=1)  # never below --dist-timeout
