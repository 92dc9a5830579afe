"""Do CPU minutes of MAE pre-training buy better features than random init? One JSON line.

Real components end to end: the shapes set (``benchmarks/shapes.py``: 8 shape classes at random size,
position, rotation, aspect and colour on crops of real photos; raw pixels score near chance on it) is
written to labelled .beton files; ``mae-trainer pretrain`` runs in a subprocess on the train split's
images (labels unused); then ``mae-trainer probe``'s code runs the weighted k-NN and the linear probe on
(a) the pre-trained encoder and (b) the same architecture at random init, both scored on the val split,
whose backgrounds and textures come from photos the train split never uses. Goal: pre-trained beats random
init by ≥ 10 points top-1 on the k-NN or the linear probe.

Reconstruction: the pre-trained model's own loss (MSE on masked patches against per-patch normalised
pixels) on plain crops of the held-out photos, with fixed-seed masks, against the predict-the-mean-patch
baseline — all-zero logits, the mean of every normalised patch — scored by the same loss function on the
same masks (computed, not assumed to be 1: flat patches normalise to ~0). ``recon_ratio`` = model ÷ baseline.

    .venv/bin/python benchmarks/quality.py [--epochs 30] [--batch-size 32] [--blr 1e-2] [--mask-ratio 0.5]
        [--resolution 64] [--train-count 4000] [--val-count 800] [--pool avg] [--work DIR] [--keep]

The settings were chosen on a stratified 25 % split of the *train* set, never on the val split. What
they cost: the number of optimizer steps moved the gain; data and optimiser knobs barely did. Measured on
that dev split (linear probe, avg pool, pre-trained minus random, points): 1250 steps (10 epochs, ~6 min
here) +2 to +5 on every variant tried (photo textures, clutter, several instances, upright shapes, mask
0.5 or 0.75, blr 5e-3/1e-2/3e-2); 3750 steps (30 epochs) +10.3. So the default is 30 epochs, about 15
minutes on 2 cores, three times the few minutes hoped for; k-NN stays within a few points of random init
throughout (weak k-NN features are commonly reported for MAE).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from shapes import ShapeSettings, photo_crops, write_shapes_beton

from mae_trainer import MAEForPreTraining
from mae_trainer.cli import parse_config
from mae_trainer.data.normalize import normalize, stats_tensor
from mae_trainer.downstream import probe

ROOT = Path(__file__).resolve().parents[1]


def shapes_settings(size: int) -> ShapeSettings:
    """The default shapes set at ``size``: one flat-coloured shape per image, any rotation, on a zoomed-in
    crop of a real photo. Raw pixels and random-init features sit near chance on it (colour, position,
    size, rotation and background are all random); harder variants (photo textures, clutter, several small
    instances) were measured too and are left as ``ShapeSettings`` knobs (see the report)."""
    return ShapeSettings(size=size)


def build_data(work: Path, settings: ShapeSettings, train_count: int, val_count: int, seed: int) -> dict:
    """The two labelled .beton files, written once per set of arguments."""
    name = f"shapes_{settings.size}_{train_count}_{val_count}_{seed}"
    paths = {"train": work / name / "train.beton", "val": work / name / "val.beton"}
    for split, count in (("train", train_count), ("val", val_count)):
        if not paths[split].exists():
            with contextlib.redirect_stdout(sys.stderr):
                write_shapes_beton(paths[split], count, split, seed, settings)
    return paths


def pretrain(args: argparse.Namespace, data: Path, output: Path) -> float:
    """``mae-trainer pretrain`` in a fresh process (no launcher: one process, fp32); returns minutes."""
    command = [
        sys.executable, "-m", "mae_trainer", "pretrain",
        "--data", str(data), "--model", args.model, "--resolution", str(args.resolution),
        "--epochs", str(args.epochs), "--warmup-epochs", str(args.warmup_epochs),
        "--batch-size", str(args.batch_size), "--blr", str(args.blr), "--mask-ratio", str(args.mask_ratio),
        "--num-workers", str(args.workers), "--seed", str(args.seed), "--recon-images", "8",
        "--log-every", "50", "--output-dir", str(output), "--overwrite",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=sys.stderr)
    return (time.perf_counter() - start) / 60


def probes(args: argparse.Namespace, encoder: list[str], paths: dict) -> dict:
    """k-NN and linear probe through the ``mae-trainer probe`` argument parser and ``run``."""
    argv = [
        *encoder, "--train", str(paths["train"]), "--val", str(paths["val"]), "--knn", "--linear",
        "--pool", args.pool, "--k", str(args.k), "--epochs", str(args.probe_epochs),
        "--resolution", str(args.resolution), "--num-workers", str(args.workers), "--seed", str(args.seed),
    ]  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the one result line
        return probe.run(parse_config(["probe", *argv]))


@torch.no_grad()
def reconstruction(model_dir: Path, settings: ShapeSettings, resolution: int, count: int, seed: int) -> dict:
    """Masked-patch loss on held-out photo crops (the set's background zoom, photos the pre-training never
    saw) of the pre-trained model, of the same architecture at random init, and of the all-zero prediction
    (the mean of each normalised patch), all on the same fixed-seed masks."""
    model = MAEForPreTraining.from_pretrained(model_dir).eval()
    torch.manual_seed(seed)
    untrained = MAEForPreTraining(model.config).eval()
    crops = photo_crops(
        count, "val", seed, resolution, settings.min_background_area, settings.max_background_area
    )
    images = torch.stack([torch.from_numpy(np.asarray(crop)).permute(2, 0, 1) for crop in crops])
    mean = stats_tensor(model.config.image_mean, "cpu")
    std = stats_tensor(model.config.image_std, "cpu")
    pixels = normalize(images, mean, std, torch.float32)
    patches = (resolution // model.config.patch_size) ** 2
    noise = torch.rand(count, patches, generator=torch.Generator().manual_seed(seed))
    out = model(pixels, noise=noise)
    baseline = model.reconstruction_loss(pixels, torch.zeros_like(out.logits), out.mask)
    return {
        "recon_loss": float(out.loss),
        "recon_loss_random_init": float(untrained(pixels, noise=noise).loss),
        "mean_patch_loss": float(baseline),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny", help="preset")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--warmup-epochs", type=float, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--blr", type=float, default=1e-2)
    parser.add_argument("--mask-ratio", type=float, default=0.5)
    parser.add_argument("--train-count", type=int, default=4000)
    parser.add_argument("--val-count", type=int, default=800)
    parser.add_argument("--pool", default="avg", choices=probe.POOLS)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--probe-epochs", type=int, default=100)
    parser.add_argument("--recon-count", type=int, default=256, help="held-out photo crops for the loss")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "mae_trainer_bench" / "quality"
    )
    parser.add_argument("--keep", action="store_true", help="keep the pre-trained model in --work")
    args = parser.parse_args()
    start = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    settings = shapes_settings(args.resolution)
    paths = build_data(args.work, settings, args.train_count, args.val_count, args.seed)
    model_dir = args.work / "model"
    minutes = pretrain(args, paths["train"], model_dir)
    pre = probes(args, ["--model", str(model_dir)], paths)
    rand = probes(args, ["--random-init", args.model, "--image-size", str(args.resolution)], paths)
    recon = reconstruction(model_dir, settings, args.resolution, args.recon_count, args.seed)
    final_loss = json.loads((model_dir / "metrics.jsonl").read_text().strip().splitlines()[-1])["loss"]
    result = {
        "benchmark": "quality",
        "knn_pretrained": pre["knn"]["top1"],
        "knn_random": rand["knn"]["top1"],
        "linear_pretrained": pre["linear"]["top1"],
        "linear_random": rand["linear"]["top1"],
        "knn_gain_points": round(100 * (pre["knn"]["top1"] - rand["knn"]["top1"]), 1),
        "linear_gain_points": round(100 * (pre["linear"]["top1"] - rand["linear"]["top1"]), 1),
        "recon_loss": round(recon["recon_loss"], 4),
        "mean_patch_loss": round(recon["mean_patch_loss"], 4),
        "recon_loss_random_init": round(recon["recon_loss_random_init"], 4),
        "recon_ratio": round(recon["recon_loss"] / recon["mean_patch_loss"], 3),
        "final_train_loss": round(final_loss, 4),
        "pretrain_minutes": round(minutes, 2),
        "total_minutes": round((time.perf_counter() - start) / 60, 2),
        "chance": round(1 / pre["knn"]["classes"], 4),
        "settings": {
            "model": args.model,
            "resolution": args.resolution,
            "epochs": args.epochs,
            "warmup_epochs": args.warmup_epochs,
            "batch_size": args.batch_size,
            "blr": args.blr,
            "mask_ratio": args.mask_ratio,
            "train": pre["knn"]["train_samples"],
            "val": pre["knn"]["val_samples"],
            "pool": args.pool,
            "k": args.k,
            "probe_epochs": args.probe_epochs,
            "recon_crops": args.recon_count,
            "shapes": asdict(settings),
            "threads": torch.get_num_threads(),
        },
    }
    goal = max(result["knn_gain_points"], result["linear_gain_points"]) >= 10
    result["goal_met"] = goal
    if not args.keep:
        shutil.rmtree(model_dir, ignore_errors=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
