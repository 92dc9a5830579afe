"""Start-up: seconds from the command to the first optimizer step, ours vs transformers' ``run_mae.py`` path.

Ours: the real ``mae-trainer pretrain`` CLI (1 process, fp32, MAE-Tiny, batch 32, 2 workers, bicubic crops)
on a ``.beton`` written by ``write-dataset``'s defaults. The peer (``_peer_mae.py``): ``datasets``
imagefolder + torchvision bicubic RandomResizedCrop + transformers' ``Trainer`` with
``ViTMAEForPreTraining`` of the same size, on the same photos (1024 crops of scikit-image's photos, short
side 400-500 px, long side <= 500). Each side is launched as a fresh process and killed once its first
optimizer step is done: ours at its first ``metrics.jsonl`` record (``--log-every 1``), the peer at its
``first_step`` file (a ``TrainerCallback``); the time is taken from just before the launch.

One untimed run of each side first (the peer's ``datasets`` cache, ours' numba cache, the OS page cache),
then ``--repeats`` alternating timed runs; medians. ``ours_cold_s``: ours with an empty numba cache
directory (what the very first run on a machine pays). One JSON line; ``ratio`` = ours / peer.

    .venv/bin/python benchmarks/startup.py [--resolution 160] [--repeats 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _photos import photo_folder

BIN = Path(sys.executable).parent
HERE = Path(__file__).parent


def write_data(work: Path) -> tuple[Path, Path]:
    folder = photo_folder(work, per_photo=64, min_side=400, max_side=500, max_resolution=500)
    path = work / "photos.beton"
    if not path.exists():
        subprocess.run(
            [str(BIN / "mae-trainer"), "write-dataset", "--source", str(folder), "--output", str(path)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return folder, path


def first_step_seconds(command: list[str], done, env: dict, timeout: float = 600.0) -> float:
    """Launch ``command``; seconds until ``done()`` returns a time (then the process group is killed)."""
    start = time.time()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        while time.time() - start < timeout:
            stamp = done()
            if stamp is not None:
                return stamp - start
            if process.poll() is not None:
                raise RuntimeError(f"{command[:3]} exited ({process.returncode}) before its first step")
            time.sleep(0.01)
        raise TimeoutError(command)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def ours(data: Path, out: Path, resolution: int, env: dict) -> float:
    shutil.rmtree(out, ignore_errors=True)
    metrics = out / "metrics.jsonl"
    flags = (
        f"--model tiny --resolution {resolution} --epochs 3 --warmup-epochs 1 --batch-size 32 "
        "--num-workers 2 --log-every 1 --overwrite"
    ).split()
    command = [str(BIN / "mae-trainer"), "pretrain", "--data", str(data), "--output-dir", str(out), *flags]

    def done():
        # the record of step 1 is written right after the first optimizer step
        if metrics.exists() and metrics.read_text().strip():
            return time.time()
        return None

    return first_step_seconds(command, done, env)


def peer(folder: Path, out: Path, resolution: int, env: dict) -> float:
    shutil.rmtree(out, ignore_errors=True)
    marker = out / "first_step"
    command = [
        sys.executable,
        str(HERE / "_peer_mae.py"),
        str(folder),
        str(out),
        "--resolution",
        str(resolution),
    ]

    def done():
        text = marker.read_text() if marker.exists() else ""
        return float(text) if text else None

    return first_step_seconds(command, done, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="keep data and runs here (default: temp)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="startup_"))
    work.mkdir(parents=True, exist_ok=True)
    folder, data = write_data(work)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_DATASETS_CACHE": str(work / "hf_datasets")}
    cold_cache = work / "numba_cold"
    shutil.rmtree(cold_cache, ignore_errors=True)
    cold = ours(
        data,
        work / "ours",
        args.resolution,
        {**env, "NUMBA_CACHE_DIR": str(cold_cache), "MAE_TRAINER_NUMBA_CACHE": str(cold_cache)},
    )
    peer(folder, work / "peer", args.resolution, env)  # warm-up: datasets' Arrow cache
    ours(data, work / "ours", args.resolution, env)  # warm-up: the numba cache
    times = {"ours": [], "peer": []}
    for _ in range(args.repeats):
        times["ours"].append(ours(data, work / "ours", args.resolution, env))
        times["peer"].append(peer(folder, work / "peer", args.resolution, env))
    ours_s, peer_s = statistics.median(times["ours"]), statistics.median(times["peer"])
    print(
        json.dumps(
            {
                "benchmark": "startup",
                "model": "tiny",
                "resolution": args.resolution,
                "ours_s": round(ours_s, 2),
                "peer_s": round(peer_s, 2),
                "ratio": round(ours_s / peer_s, 3),
                "ours_cold_s": round(cold, 2),
                "ours_runs": [round(t, 2) for t in times["ours"]],
                "peer_runs": [round(t, 2) for t in times["peer"]],
                "load": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
