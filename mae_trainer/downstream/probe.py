"""``mae-trainer probe``: the k-NN and/or linear probe (``training/feature_eval.py``) of a saved encoder's
frozen features on a labelled split, with the top-1 written to ``OUTPUT/probe.json``.
"""

from __future__ import annotations

import json
import time

import torch

from ..config import ConfigError, ProbeConfig, about
from ..data.labelled import centre_crop_batches
from ..data.resolution import check_side
from ..training.feature_eval import (
    extract_features,
    knn_top1,
    linear_probe_top1,
    open_split,
    stratified_split,
)

# ---------------------------------------------------------------------------------------------- command


def load_encoder(config: ProbeConfig):
    """``(MAEModel, description)`` from ``--model DIR`` or ``--random-init PRESET``."""
    from ..modeling import MAEConfig, MAEModel

    if config.random_init is not None:
        with about("image_size"):
            check_side(config.image_size, MAEConfig.from_preset(config.random_init).patch_size)
        torch.manual_seed(config.seed)
        model_config = MAEConfig.from_preset(config.random_init, image_size=config.image_size)
        return MAEModel(model_config), f"random-init:{config.random_init}"
    with about("model"):
        return MAEModel.from_pretrained(config.model), str(config.model)


def run(config: ProbeConfig) -> dict:
    """Probe the encoder, print one JSON line per probe and return ``{probe name: result}``."""
    train = open_split(config.train, "train")
    val = open_split(config.val, "val", train) if config.val is not None else None
    if val is None:
        train_index, val_index = stratified_split(train.labels, config.val_fraction, config.seed)
        if len(val_index) == 0:
            raise ConfigError("val_fraction", config.val_fraction, f"holds out no sample of {config.train}")
        train_count = len(train_index)
    else:
        train_count = len(train)
    if config.knn and config.k > train_count:
        raise ConfigError("k", config.k, f"larger than the {train_count} training samples")

    encoder, description = load_encoder(config)
    resolution = config.resolution or encoder.config.image_size
    with about("resolution"):
        check_side(resolution, encoder.config.patch_size)
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")

    start = time.perf_counter()
    loading = (resolution, config.extract_batch_size, config.num_workers, config.crop_ratio)
    train_f, train_y = extract_features(encoder, centre_crop_batches(train, *loading), config.pool, device)
    if val is None:
        val_f, val_y = train_f[val_index], train_y[val_index]
        train_f, train_y = train_f[train_index], train_y[train_index]
    else:
        val_f, val_y = extract_features(encoder, centre_crop_batches(val, *loading), config.pool, device)
    extract_seconds = time.perf_counter() - start

    common = {
        "encoder": description,
        "pool": config.pool,
        "resolution": resolution,
        "train_samples": len(train_f),
        "val_samples": len(val_f),
        "val": str(config.val) if config.val is not None else f"{config.val_fraction} of --train",
        "classes": int(max(train_y.max(), val_y.max())) + 1,
        "feature_dim": int(train_f.shape[1]),
        "extract_seconds": round(extract_seconds, 2),
    }
    results = {}
    if config.knn:
        start = time.perf_counter()
        top1 = knn_top1(train_f, train_y, val_f, val_y, config.k, config.temperature)
        results["knn"] = {
            "probe": "knn",
            "top1": round(top1, 4),
            "k": config.k,
            "temperature": config.temperature,
            **common,
            "seconds": round(time.perf_counter() - start, 2),
        }
    if config.linear:
        start = time.perf_counter()
        top1 = linear_probe_top1(
            train_f, train_y, val_f, val_y, config.epochs, config.lr, config.batch_size, config.seed
        )
        results["linear"] = {
            "probe": "linear",
            "top1": round(top1, 4),
            "epochs": config.epochs,
            "lr": config.lr,
            "batch_size": config.batch_size,
            **common,
            "seconds": round(time.perf_counter() - start, 2),
        }
    for result in results.values():
        print(json.dumps(result), flush=True)
    if config.output is not None:
        from ..publish import publish_text

        publish_text(config.output, json.dumps(results, indent=2) + "\n")  # makes missing parents
    return results
