"""k-NN and linear probes on frozen encoder features (``mae-trainer probe``).

Why: the pre-training loss says how well a model fills in masked pixels, not whether its features are
worth anything downstream. The two standard cheap answers are used here:

- **weighted k-NN** (Wu et al. 2018, as in DINO's and MAE's evaluation code): cosine similarity between
  L2-normalised features, the ``k`` nearest training samples vote for their class with weight
  ``exp(similarity / T)``;
- **linear probe** (MAE §4, ``main_linprobe.py``): ``BatchNorm1d(affine=False)`` followed by a ``Linear``
  layer, trained with SGD (momentum 0.9, no weight decay, linear warmup then cosine) on frozen features.
  The parameter-free BatchNorm matters for MAE: its features are not normalised the way a linear
  classifier likes, and the BatchNorm fixes that without adding capacity.

A difference from MAE's protocol, on purpose: MAE's linear probe re-augments every epoch on the fly
(RandomResizedCrop + horizontal flip, one encoder forward per image per epoch). We extract features once,
from centre crops, and train the head on that cache: one forward per image instead of ``epochs`` of them,
which is what makes a 100-epoch probe take seconds on a CPU. The cost is the augmentation's mild
regularisation, so absolute numbers run a little below MAE's protocol; comparisons between encoders probed
the same way are what the numbers are for.

Features are the class token (``--pool cls``, MAE's linear-probe default) or the mean of the patch tokens
(``--pool avg``), both taken from ``last_hidden_state``, i.e. after the encoder's final LayerNorm.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, UsageError

POOLS = ("cls", "avg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    enc = parser.add_argument_group("encoder (one of)")
    which = enc.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--model", default=None, metavar="DIR", help="pre-trained MAE: folder or Hub repo id, ours or vit_mae"
    )
    which.add_argument(
        "--random-init",
        default=None,
        metavar="PRESET",
        help="baseline: the preset's encoder at random init (seeded by --seed)",
    )
    enc.add_argument("--image-size", type=int, default=224, help="--random-init: the config's image_size")
    data = parser.add_argument_group("data (labelled .beton files or ImageFolder directories)")
    data.add_argument(
        "--train", type=Path, required=True, metavar="DATA", help="training split: .beton with labels or DIR"
    )
    held_out = data.add_mutually_exclusive_group(required=True)
    held_out.add_argument(
        "--val", type=Path, default=None, metavar="DATA", help="held-out split: .beton with labels or DIR"
    )
    held_out.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        default=None,
        help="hold out this fraction of --train instead (seeded by --seed, stratified by class)",
    )
    data.add_argument("--resolution", type=int, default=None, help="input side (default: the image_size)")
    data.add_argument(
        "--crop-ratio", type=float, default=1.0, help="centre crop side as a fraction of the short side"
    )
    data.add_argument("--num-workers", type=int, default=2, help="decode threads (.beton) or processes (DIR)")
    data.add_argument("--extract-batch-size", type=int, default=64, help="images per feature forward")
    data.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    probes = parser.add_argument_group("probes (at least one)")
    probes.add_argument("--knn", action="store_true", help="weighted k-NN on cosine similarity")
    probes.add_argument("--linear", action="store_true", help="BatchNorm + Linear head on frozen features")
    probes.add_argument("--pool", default="cls", choices=POOLS, help="class token or mean of patch tokens")
    probes.add_argument("--k", type=int, default=20, help="k-NN: neighbours that vote")
    probes.add_argument("--temperature", type=float, default=0.07, help="k-NN: vote weight exp(sim / T)")
    probes.add_argument("--epochs", type=int, default=100, help="linear: epochs over the cached features")
    probes.add_argument("--lr", type=float, default=0.1, help="linear: peak SGD learning rate")
    probes.add_argument("--batch-size", type=int, default=256, help="linear: features per SGD step")
    probes.add_argument("--seed", type=int, default=0, help="random init, --val-fraction split, linear head")
    parser.add_argument("--output", type=Path, default=None, help="also write the results to this JSON file")


# ---------------------------------------------------------------------------------------------- features


@torch.no_grad()
def extract_features(
    encoder, batches: Iterable, pool: str = "cls", device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``encoder`` (an :class:`~mae_trainer.modeling.MAEModel`) over ``(images, labels)`` batches and
    return ``(features (N, D) float32, labels (N,) int64)`` on the CPU.

    ``images`` are ``(B, 3, H, W)``: uint8 ones are normalised with the encoder config's mean and std
    (what the FFCV loaders yield), float ones are taken as already normalised.
    """
    from ..data.normalize import normalize, stats_tensor

    if pool not in POOLS:
        raise ValueError(f"pool {pool!r}: choose one of {', '.join(POOLS)}")
    encoder = encoder.eval().to(device)
    mean = stats_tensor(encoder.config.image_mean, device)
    std = stats_tensor(encoder.config.image_std, device)
    features, labels = [], []
    for images, targets in batches:
        images = torch.as_tensor(images).to(device)
        if images.dtype == torch.uint8:
            pixels = normalize(images, mean, std, torch.float32)
        else:
            pixels = images.float()
        hidden = encoder(pixels).last_hidden_state
        pooled = hidden[:, 0] if pool == "cls" else hidden[:, 1:].mean(dim=1)
        features.append(pooled.float().cpu())
        # clone: FFCV's loader reuses its output buffers from batch to batch
        labels.append(torch.as_tensor(targets).reshape(-1).to("cpu", torch.int64, copy=True))
    if not features:
        raise ValueError("no batches to extract features from")
    return torch.cat(features), torch.cat(labels)


# ---------------------------------------------------------------------------------------------- probes


@torch.no_grad()
def knn_top1(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    val_f: torch.Tensor,
    val_y: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> float:
    """Top-1 accuracy of the weighted k-NN classifier: each validation feature's ``k`` most cosine-similar
    training features vote for their label with weight ``exp(similarity / temperature)``."""
    if not 1 <= k <= len(train_f):
        raise ValueError(f"k={k} must be between 1 and the {len(train_f)} training samples")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive")
    train = F.normalize(train_f.float(), dim=1)
    train_y = train_y.long()
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    correct = 0
    for start in range(0, len(val_f), chunk):
        queries = F.normalize(val_f[start : start + chunk].float(), dim=1)
        similarity, neighbours = (queries @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(queries), num_classes, dtype=similarity.dtype)
        votes.scatter_add_(1, train_y[neighbours], (similarity / temperature).exp())
        correct += int((votes.argmax(dim=1) == val_y[start : start + chunk].long()).sum())
    return correct / len(val_f)


def linear_probe_top1(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    val_f: torch.Tensor,
    val_y: torch.Tensor,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Top-1 accuracy of MAE's linear-probe head, ``BatchNorm1d(affine=False) → Linear``, trained on the
    cached features with SGD (momentum 0.9, no weight decay; a tenth of the epochs of linear warmup, then
    half-cycle cosine to 0, as MAE). Deterministic for a given ``seed``."""
    from ..training.schedules import warmup_cosine_lr

    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"epochs={epochs}, batch_size={batch_size} must be ≥ 1 and lr={lr} positive")
    train_f, val_f, train_y = train_f.float(), val_f.float(), train_y.long()
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    generator = torch.Generator().manual_seed(seed)
    head = nn.Sequential(
        nn.BatchNorm1d(train_f.shape[1], affine=False, eps=1e-6), nn.Linear(train_f.shape[1], num_classes)
    )
    with torch.no_grad():  # MAE: trunc_normal_(std=0.01) on the classifier weight, zero bias
        head[1].weight.copy_(torch.randn(head[1].weight.shape, generator=generator).clamp_(-2, 2) * 0.01)
        head[1].bias.zero_()
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(train_f) / batch_size)
    total, warmup = epochs * steps_per_epoch, (epochs // 10) * steps_per_epoch
    step = 0
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_f), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            if len(index) < 2:  # BatchNorm needs two samples to estimate a variance
                continue
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine_lr(step, total, warmup, lr)
            loss = F.cross_entropy(head(train_f[index]), train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    head.eval()
    with torch.no_grad():
        predictions = head(val_f).argmax(dim=1)
    return float((predictions == val_y.long()).float().mean())


def stratified_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, val_indices)``: a seeded ``fraction`` of every class held out (at least one sample
    of each class with two or more, never all of a class), each side in ascending order."""
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue
        count = min(len(members) - 1, max(1, round(len(members) * fraction)))
        held.append(rng.permutation(members)[:count])
    val = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val


# ---------------------------------------------------------------------------------------------- data


class LabelledData:
    """A labelled split: a ``.beton`` with a ``label`` field or an ImageFolder directory. The labels and
    class names are read up front (no image decoded), so bad input fails before any forward pass."""

    def __init__(self, path: Path, flag: str):
        self.path, self.flag = path, flag
        if not path.exists():
            raise UsageError(f"{flag} {path}: no such file or directory")
        self.is_folder = path.is_dir()
        if self.is_folder:
            self._init_folder()
        else:
            self._init_beton()
        if len(np.unique(self.labels)) < 2 and flag == "--train":
            raise UsageError(f"{flag} {path}: every sample has the same label (a probe needs 2+ classes)")

    def _init_beton(self) -> None:
        from ffcv.reader import Reader

        from ..data.beton import check_beton
        from ..data.write import read_summary

        try:
            check_beton(self.path)
        except InputError as err:
            raise UsageError(f"{self.flag} {err}") from None
        reader = Reader(str(self.path))
        if "label" not in reader.field_names:
            raise UsageError(
                f"{self.flag} {self.path}: has no 'label' field (fields: {', '.join(reader.field_names)}); "
                "write it with labels (mae-trainer write-dataset --label-column ...)"
            )
        column = f"f{reader.field_names.index('label')}"
        self.labels = np.array(reader.metadata[column], dtype=np.int64)  # a writable copy
        summary = read_summary(self.path) or {}
        self.classes = summary.get("classes")

    def _init_folder(self) -> None:
        from ..data.write import image_folder_source

        try:
            source = image_folder_source(self.path)
        except UsageError as err:
            raise UsageError(str(err).replace("--source", self.flag, 1)) from None
        if not any(p.is_dir() for p in self.path.iterdir()):
            raise UsageError(
                f"{self.flag} {self.path}: no class sub-directories (expected DIR/<class>/<image>)"
            )
        self.source = source
        self.labels = np.asarray(source.labels, dtype=np.int64)
        self.classes = source.classes

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, resolution: int, batch_size: int, num_workers: int, crop_ratio: float) -> Iterable:
        """``(uint8 images (B, 3, R, R), labels)`` in file order: the centre ``crop_ratio`` of the short
        side, resized to ``resolution`` (FFCV's centre-crop decoder for .beton; the torchvision equivalent
        for folders)."""
        if not self.is_folder:
            from ..data.eval_loader import eval_loader

            return eval_loader(  # FFCV decodes in threads: at least one
                self.path, batch_size, resolution, num_workers=max(1, num_workers), crop_ratio=crop_ratio
            )
        from torchvision.transforms import v2

        transform = v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize(max(resolution, round(resolution / crop_ratio)), antialias=True),
                v2.CenterCrop(resolution),
            ]
        )
        source = self.source

        class Folder(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return len(source.labels)

            def __getitem__(self, index: int):
                return transform(source.open(index).convert("RGB")), source.labels[index]

        return torch.utils.data.DataLoader(Folder(), batch_size=batch_size, num_workers=num_workers)


# ---------------------------------------------------------------------------------------------- command


def load_encoder(args: argparse.Namespace):
    """``(MAEModel, description)`` from ``--model DIR`` or ``--random-init PRESET``."""
    from ..modeling import PRESETS, MAEConfig, MAEModel

    if args.random_init is not None:
        if args.random_init not in PRESETS:
            raise UsageError(
                f"--random-init {args.random_init!r}: unknown preset; choose one of {', '.join(PRESETS)}"
            )
        patch = PRESETS[args.random_init].get("patch_size", 16)
        if args.image_size <= 0 or args.image_size % patch:
            raise UsageError(
                f"--image-size {args.image_size}: must be a positive multiple of the patch {patch}"
            )
        torch.manual_seed(args.seed)
        config = MAEConfig.from_preset(args.random_init, image_size=args.image_size)
        return MAEModel(config), f"random-init:{args.random_init}"
    from ..modeling.loading import for_flag

    return for_flag("--model", MAEModel.from_pretrained, args.model), str(args.model)


def check_arguments(args: argparse.Namespace) -> None:
    """Flag checks that need no file: fail before any model or image is read."""
    if not (args.knn or args.linear):
        raise UsageError("--knn / --linear: choose at least one probe")
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise UsageError(f"--val-fraction {args.val_fraction}: must be between 0 and 1")
    if args.k < 1:
        raise UsageError(f"--k {args.k}: must be at least 1")
    if args.temperature <= 0:
        raise UsageError(f"--temperature {args.temperature}: must be positive")
    for flag in ("epochs", "batch_size", "extract_batch_size"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    if args.num_workers < 0:
        raise UsageError(f"--num-workers {args.num_workers}: must be at least 0")
    if args.lr <= 0:
        raise UsageError(f"--lr {args.lr}: must be positive")
    if not 0 < args.crop_ratio <= 1:
        raise UsageError(f"--crop-ratio {args.crop_ratio}: must be in (0, 1]")
    if args.output is not None and args.output.is_dir():
        raise UsageError(f"--output {args.output}: is a directory")


def run(args: argparse.Namespace) -> dict:
    """Probe the encoder, print one JSON line per probe and return ``{probe name: result}``."""
    check_arguments(args)
    train = LabelledData(args.train, "--train")
    val = LabelledData(args.val, "--val") if args.val is not None else None
    if val is not None and train.classes and val.classes and list(train.classes) != list(val.classes):
        raise UsageError(f"--val {args.val}: classes {val.classes} differ from --train's {train.classes}")
    if val is None:
        train_index, val_index = stratified_split(train.labels, args.val_fraction, args.seed)
        if len(val_index) == 0:
            raise UsageError(f"--val-fraction {args.val_fraction}: holds out no sample of {args.train}")
        train_count = len(train_index)
    else:
        train_count = len(train)
    if args.knn and args.k > train_count:
        raise UsageError(f"--k {args.k}: larger than the {train_count} training samples")

    encoder, description = load_encoder(args)
    resolution = args.resolution or encoder.config.image_size
    patch = encoder.config.patch_size
    if resolution <= 0 or resolution % patch:
        raise UsageError(f"--resolution {resolution}: must be a positive multiple of the patch size {patch}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    start = time.perf_counter()
    loading = (resolution, args.extract_batch_size, args.num_workers, args.crop_ratio)
    train_f, train_y = extract_features(encoder, train.batches(*loading), args.pool, device)
    if val is None:
        val_f, val_y = train_f[val_index], train_y[val_index]
        train_f, train_y = train_f[train_index], train_y[train_index]
    else:
        val_f, val_y = extract_features(encoder, val.batches(*loading), args.pool, device)
    extract_seconds = time.perf_counter() - start

    common = {
        "encoder": description,
        "pool": args.pool,
        "resolution": resolution,
        "train_samples": len(train_f),
        "val_samples": len(val_f),
        "val": str(args.val) if args.val is not None else f"{args.val_fraction} of --train",
        "classes": int(max(train_y.max(), val_y.max())) + 1,
        "feature_dim": int(train_f.shape[1]),
        "extract_seconds": round(extract_seconds, 2),
    }
    results = {}
    if args.knn:
        start = time.perf_counter()
        top1 = knn_top1(train_f, train_y, val_f, val_y, args.k, args.temperature)
        results["knn"] = {
            "probe": "knn",
            "top1": round(top1, 4),
            "k": args.k,
            "temperature": args.temperature,
            **common,
            "seconds": round(time.perf_counter() - start, 2),
        }
    if args.linear:
        start = time.perf_counter()
        top1 = linear_probe_top1(
            train_f, train_y, val_f, val_y, args.epochs, args.lr, args.batch_size, args.seed
        )
        results["linear"] = {
            "probe": "linear",
            "top1": round(top1, 4),
            "epochs": args.epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            **common,
            "seconds": round(time.perf_counter() - start, 2),
        }
    for result in results.values():
        print(json.dumps(result), flush=True)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return results
