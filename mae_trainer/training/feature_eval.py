"""k-NN and linear probes on frozen encoder features: shared by ``mae-trainer probe``
(``downstream/probe.py``) and the online evaluation of pre-training (``training/online_eval.py``).

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

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, about
from ..data.labelled import open_labelled

POOLS = ("cls", "avg")


# ---------------------------------------------------------------------------------------------- features


@torch.no_grad()
def extract_features(
    encoder, batches: Iterable, pool: str = "cls", device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``encoder`` (an :class:`~mae_trainer.modeling.MAEModel`) over ``(images, labels)`` batches and
    return ``(features (N, D) float32, labels (N,) int64)`` on the CPU.

    ``images`` are ``(B, 3, H, W)``: uint8 ones are normalised with the encoder config's mean and std
    (what the FFCV loaders yield), float ones are taken as already normalised; either is fed to the encoder
    in its weights' dtype (bf16 for a model that DeepSpeed trains).
    """
    from ..data.normalize import normalize, stats_tensor

    if pool not in POOLS:
        raise ValueError(f"pool {pool!r}: choose one of {', '.join(POOLS)}")
    encoder = encoder.eval().to(device)
    mean = stats_tensor(encoder.config.image_mean, device)
    std = stats_tensor(encoder.config.image_std, device)
    dtype = next(encoder.parameters()).dtype
    features, labels = [], []
    for images, targets in batches:
        images = torch.as_tensor(images).to(device)
        if images.dtype == torch.uint8:
            pixels = normalize(images, mean, std, dtype)
        else:
            pixels = images.to(dtype)
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
    labels = np.asarray(labels)
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


def open_split(path: Path, key: str, train=None):
    """:func:`~mae_trainer.data.labelled.open_labelled` for the config field ``key``; the training
    split (``train`` None) needs two labels or more."""
    with about(key):
        source = open_labelled(path, train=train)
    if train is None and len(set(source.labels)) < 2:
        raise ConfigError(key, path, "every sample has the same label (a probe needs 2+ classes)")
    return source
