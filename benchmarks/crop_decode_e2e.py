"""Crop decode end to end: the same pre-training with and without it — loss curve and throughput.

The question before crop decode became ``pretrain``'s default: does decoding only the crop change what the
model learns, or slow the run down? One ImageNet-like ``.beton`` (crops of scikit-image's bundled photos,
short side 300–400 px, long side ≤ 500, written with ``write-dataset``'s defaults: JPEG quality 90), then
real ``mae-trainer pretrain`` runs (one process, fp32: this CPU has no native BF16; MAE-Tiny at 160 px,
bicubic crops), each in a fresh process:

- ``full``, seed 0 and seed 1: whole-image decode. The two seeds give the run-to-run noise of the loss
  curve (other crops, masks and initial weights).
- ``crop``, seed 0: crop decode, same seed as ``full`` seed 0 (identical crop boxes, masks and weights;
  only the decoded pixels differ slightly).

Reported (one JSON line): the mean absolute gap between logged loss values of crop vs full at the same seed
(``loss_gap_crop_vs_full``) and between the two full-decode seeds (``loss_gap_seed_noise``);
``within_noise`` when the first is at most the second. Throughput: images/s over the run's log windows,
the first window (numba compiles FFCV's pipeline then) left out; ``ratio`` = crop / full (seed 0).

``--before TREE``: instead, the same crop-decode run (seed 0) with another source tree of the package
first on ``PYTHONPATH`` (its ``_cropjpeg`` built in place) and then with this one, on the same data, in
alternation (``--repeats`` pairs): ``ratio`` = images/s of this tree ÷ the other's (median over pairs). How
the bicubic resampler's change was measured end to end::

    mkdir /tmp/before && git archive main | tar -x -C /tmp/before
    (cd /tmp/before && ../path/to/.venv/bin/python setup.py build_ext --inplace)
    .venv/bin/python benchmarks/crop_decode_e2e.py --before /tmp/before --epochs 3

    .venv/bin/python benchmarks/crop_decode_e2e.py [--epochs 6] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _photos import photo_folder

BIN = Path(sys.executable).parent


def write_data(work: Path) -> Path:
    folder = photo_folder(work, per_photo=64, min_side=300, max_side=400, max_resolution=500)
    path = work / "imagenet_like.beton"
    if not path.exists():
        subprocess.run(
            [str(BIN / "mae-trainer"), "write-dataset", "--source", str(folder), "--output", str(path)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return path


def pretrain(
    data: Path, out: Path, seed: int, crop_decode: bool, epochs: int, tree: Path | None = None
) -> list[dict]:
    """One ``mae-trainer pretrain`` run; ``tree``: a source tree of the package to import instead."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])
    flags = (
        f"--model tiny --resolution 160 --epochs {epochs} --warmup-epochs 1 --batch-size 64 --blr 5e-3 "
        f"--num-workers 2 --log-every 4 --recon-images 0 --seed {seed} --overwrite"
    ).split()
    subprocess.run(
        [
            str(BIN / "mae-trainer"),
            "pretrain",
            "--data",
            str(data),
            "--output-dir",
            str(out),
            *flags,
            "--crop-decode" if crop_decode else "--no-crop-decode",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def loss_gap(a: list[dict], b: list[dict]) -> float:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    return statistics.fmean(abs(x["loss"] - y["loss"]) for x, y in zip(a, b))


def throughput(records: list[dict]) -> float:
    return statistics.median(r["images_per_s"] for r in records[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--work", type=Path, default=None, help="keep data and runs here (default: temp)")
    parser.add_argument("--before", type=Path, help="source tree to compare this one with (see above)")
    parser.add_argument("--repeats", type=int, default=1, help="--before: run pairs")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="crop_e2e_"))
    work.mkdir(parents=True, exist_ok=True)
    data = write_data(work)
    if args.before is not None:
        here = Path(__file__).resolve().parent.parent
        before, after = [], []
        for repeat in range(args.repeats):
            before.append(pretrain(data, work / f"before_{repeat}", 0, True, args.epochs, args.before))
            after.append(pretrain(data, work / f"after_{repeat}", 0, True, args.epochs, here))
        rate_before = [throughput(run) for run in before]
        rate_after = [throughput(run) for run in after]
        line = {
            "benchmark": "crop_decode_e2e_before_after",
            "model": "tiny",
            "resolution": 160,
            "steps": after[0][-1]["step"],
            "images_per_s_before": [round(rate, 1) for rate in rate_before],
            "images_per_s_after": [round(rate, 1) for rate in rate_after],
            "ratio": round(statistics.median(a / b for a, b in zip(rate_after, rate_before)), 3),
            "final_loss_before": round(before[0][-1]["loss"], 4),
            "final_loss_after": round(after[0][-1]["loss"], 4),
            "loss_gap_after_vs_before": round(loss_gap(after[0], before[0]), 5),
        }
        print(json.dumps(line))
        return
    full0 = pretrain(data, work / "full_seed0", 0, False, args.epochs)
    crop0 = pretrain(data, work / "crop_seed0", 0, True, args.epochs)
    full1 = pretrain(data, work / "full_seed1", 1, False, args.epochs)
    gap, noise = loss_gap(crop0, full0), loss_gap(full1, full0)
    print(
        json.dumps(
            {
                "benchmark": "crop_decode_e2e",
                "model": "tiny",
                "resolution": 160,
                "steps": full0[-1]["step"],
                "final_loss_full": round(full0[-1]["loss"], 4),
                "final_loss_crop": round(crop0[-1]["loss"], 4),
                "final_loss_full_seed1": round(full1[-1]["loss"], 4),
                "loss_gap_crop_vs_full": round(gap, 5),
                "loss_gap_seed_noise": round(noise, 5),
                "within_noise": gap <= noise,
                "images_per_s_full": round(throughput(full0), 1),
                "images_per_s_crop": round(throughput(crop0), 1),
                "ratio": round(throughput(crop0) / throughput(full0), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
