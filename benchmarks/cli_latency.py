"""How long the CLI takes to answer when it has nothing to compute: ``--help`` and usage errors. One JSON
line per case.

Every case is a fresh ``python -m mae_trainer ...`` process (this checkout first on ``PYTHONPATH``, run in
an empty temporary folder so relative paths name nothing), wall time from start to exit. The baseline,
measured in the same run the same way, is ``python -c "import torch"``: what any command pays that imports
torch. ``ratio`` = case median ÷ baseline median; goal: each case under ``--goal`` seconds (1.5), i.e. the
CLI imports neither torch nor transformers before it has something to run. Cases and the baseline
alternate (round robin, one untimed warm-up each first), so other load on the machine hits them alike.

    .venv/bin/python benchmarks/cli_latency.py [--repeats 5] [--goal 1.5]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ("import torch", ["-c", "import torch"], 0)
# the arguments after ``python -m mae_trainer`` (None: ``python -c "import mae_trainer"``), exit status
CLI_CASES = [
    (None, 0),
    ("--help", 0),
    ("pretrain --help", 0),
    ("", 2),
    ("pretrain --data missing.beton", 2),
    ("pretrain --mask-ratio 2 --data x", 2),
]
CASES = [
    ("import mae_trainer", ["-c", "import mae_trainer"], code)
    if args is None
    else (f"mae_trainer {args}".strip(), ["-m", "mae_trainer", *args.split()], code)
    for args, code in CLI_CASES
]


def timed(argv: list[str], cwd: str, env: dict) -> tuple[float, int, str]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd, env=env)
    seconds = time.perf_counter() - start
    last = (out.stderr.strip() or out.stdout.strip()).splitlines()
    return seconds, out.returncode, last[-1][:200] if last else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed processes per case")
    parser.add_argument("--goal", type=float, default=1.5, help="seconds a case should stay under")
    args = parser.parse_args()

    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    everything = [BASELINE, *CASES]
    times: dict[str, list[float]] = {name: [] for name, _, _ in everything}
    answers: dict[str, tuple[int, str]] = {}
    with tempfile.TemporaryDirectory() as cwd:
        for round_ in range(args.repeats + 1):  # round 0 warms caches (.pyc, page cache) and is not timed
            for name, argv, _ in everything:
                seconds, code, last = timed(argv, cwd, env)
                answers[name] = (code, last)
                if round_:
                    times[name].append(seconds)

    base = statistics.median(times[BASELINE[0]])
    for name, argv, expected in everything[1:]:
        median = statistics.median(times[name])
        code, last = answers[name]
        line = {
            "benchmark": "cli_latency",
            "case": name,
            "command": shlex.join(["python", *argv]),
            "median_s": round(median, 3),
            "min_s": round(min(times[name]), 3),
            "runs": len(times[name]),
            "baseline": 'python -c "import torch"',
            "baseline_median_s": round(base, 3),
            "ratio": round(median / base, 3),
            "goal_s": args.goal,
            "meets_goal": median < args.goal,
            "exit_status": code,
            "expected_exit_status": expected,
            "last_line": last,
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
