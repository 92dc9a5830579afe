"""How long a process that imported the training stack takes to exit once its work is done: with
``gc.freeze()`` as its last act (what ``mae-trainer``'s entry point, ``cli.entry``, does after the command)
÷ without (the interpreter's own shutdown, which walks every tracked object in full collections).

Each run is a fresh ``python -c`` process (this checkout first on ``PYTHONPATH``) that imports what a rank
imports (``mae_trainer.training.pretrain``, DeepSpeed, FFCV), prints the wall clock and returns; the time
counted is from that print to the parent seeing the process end. The two variants alternate (round robin,
one untimed warm-up each first), so other load hits them alike. One JSON line; ``ratio`` = frozen median ÷
plain median.

    .venv/bin/python benchmarks/exit_time.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import gc, sys, time
import deepspeed, ffcv
import mae_trainer.training.pretrain
objects = len(gc.get_objects())
print("done", time.time(), objects, flush=True)
if {freeze}:
    gc.freeze()
"""


def exit_seconds(freeze: bool, env: dict) -> tuple[float, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(freeze=freeze)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    for line in proc.stdout:  # DeepSpeed's import prints to stdout too
        if line.startswith("done "):
            _, printed, objects = line.split()
            break
    else:
        raise SystemExit("the child ended before its work was done")
    proc.wait()
    ended = time.time()
    if proc.returncode:
        raise SystemExit(f"the child exited with status {proc.returncode}")
    return ended - float(printed), int(objects)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed processes per variant")
    args = parser.parse_args()
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    times: dict[bool, list[float]] = {True: [], False: []}
    objects = 0
    for round_ in range(args.repeats + 1):  # round 0 warms caches (.pyc, page cache) and is not timed
        for freeze in (False, True):
            seconds, objects = exit_seconds(freeze, env)
            if round_:
                times[freeze].append(seconds)
    frozen, plain = statistics.median(times[True]), statistics.median(times[False])
    line = {
        "benchmark": "exit_time",
        "case": "gc.freeze() before exit (cli.entry)",
        "baseline": "the interpreter's own shutdown",
        "tracked_objects": objects,
        "median_s": round(frozen, 3),
        "baseline_median_s": round(plain, 3),
        "range_s": [round(min(times[True]), 3), round(max(times[True]), 3)],
        "baseline_range_s": [round(min(times[False]), 3), round(max(times[False]), 3)],
        "runs": args.repeats,
        "ratio": round(frozen / plain, 3),
    }
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
