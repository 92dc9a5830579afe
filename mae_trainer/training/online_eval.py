"""Online evaluation during pre-training (``pretrain --eval-data``): the weighted k-NN top-1 of the current
encoder on a labelled held-out ``.beton`` (and with ``--eval-linear`` the linear-probe top-1), every
``--eval-every`` epochs and when training ends, logged next to the loss.

It uses the probe command's pieces (``training/feature_eval.py``: ``extract_features``, ``knn_top1``,
``linear_probe_top1``, ``stratified_split``; the labelled reader ``open_labelled``; the FFCV centre-crop
loader), and the choices are:

- **Bank and queries**: the held-out set is split once, per class, into a feature bank (80 %) and queries
  (20 %), seeded by ``--seed``: the split of ``mae-trainer probe --train EVAL --val-fraction 0.2 --seed S``,
  so a run's last number is what the probe command says of the saved model. A split rather than
  leave-one-out, because the linear probe needs one anyway and both probes then score the same queries.
- **Every rank works**: each rank extracts the features of a contiguous share of the set; one all-gather
  puts them together in file order (every rank takes part in it, at the same epochs, so it cannot
  deadlock). The probes then run on the main process on the CPU; the other ranks go on and meet it at the
  next training collective.
- **The weights being trained**: the unwrapped model's encoder in eval mode, without gradients, in the
  training dtype (bf16 weights under DeepSpeed), put back in train mode after.
- **At ``--resolution``**, the final side of a progressive schedule: numbers stay comparable across stages,
  and it is the side the saved model is used at. The images are centre-cropped (the whole short side) to it,
  a multiple of the patch size by the config's own check.
- **No trace in training**: every random generator (Python, NumPy, torch's CPU and the device's) is saved
  before and restored after, so a run with ``--eval-data`` trains exactly as one without it.
- **On schedule after a resume**: when to evaluate is a function of the epoch (and of the run ending), and
  the evaluation comes before the epoch-end checkpoint, so a resumed run evaluates at the same epochs.
"""

from __future__ import annotations

import contextlib
import random
import time

import numpy as np
import torch

from ..config import ConfigError, PretrainConfig
from .feature_eval import extract_features, knn_top1, linear_probe_top1, open_split, stratified_split

QUERY_FRACTION = 0.2  # of each class: the queries; the rest is the feature bank
POOL = "cls"  # the probe command's default (MAE's linear-probe feature)


class OnlineEval:
    """The held-out set of ``--eval-data``, opened and checked before any work (labels, bank size, ranks),
    and the evaluation run at the end of each epoch of the schedule."""

    def __init__(self, config: PretrainConfig, batch_size: int, world: int):
        self.config, self.batch_size = config, batch_size
        path = config.eval_data
        self.source = open_split(path, "eval_data")
        labels = np.asarray(self.source.labels)
        if len(labels) < world:
            raise ConfigError("eval_data", path, f"holds {len(labels)} samples, fewer than the {world} ranks")
        self.bank, self.queries = stratified_split(labels, QUERY_FRACTION, config.seed)
        if len(self.queries) == 0:
            raise ConfigError("eval_data", path, "no class has two samples to split into bank and queries")
        if config.eval_k > len(self.bank):
            raise ConfigError(
                "eval_k", config.eval_k, f"larger than the feature bank ({len(self.bank)} samples of {path})"
            )
        self.labels = torch.as_tensor(labels)
        self.shards = np.array_split(np.arange(len(labels)), world)  # the longer shards first
        self.loader = None  # this rank's share, made at the first evaluation and reused

    def due(self, epoch: int, done: bool) -> bool:
        every = self.config.eval_every
        return done or (every > 0 and (epoch + 1) % every == 0)

    def after_epoch(self, engine, model, epoch: int) -> dict | None:
        """Every rank, at the end of ``epoch`` (or where the run stops): evaluate when due; returns the
        record on the main process."""
        if not self.due(epoch, engine.done):
            return None
        with untouched_rng(engine.device):
            return self.evaluate(engine, engine.accelerator.unwrap_model(model).mae, epoch)

    def evaluate(self, engine, encoder, epoch: int) -> dict | None:
        start = time.perf_counter()
        training = encoder.training
        features = self.features(engine, encoder)
        encoder.train(training)
        if not engine.is_main:
            return None
        bank = (features[self.bank], self.labels[self.bank])
        queries = (features[self.queries], self.labels[self.queries])
        record = {"step": engine.step, "epoch": epoch}
        record["eval/knn_top1"] = knn_top1(*bank, *queries, k=self.config.eval_k)
        if self.config.eval_linear:
            record["eval/linear_top1"] = linear_probe_top1(*bank, *queries, seed=self.config.seed)
        record["eval/seconds"] = round(time.perf_counter() - start, 3)
        engine.write(record)
        linear = f", linear top-1 {record['eval/linear_top1']:.4f}" if self.config.eval_linear else ""
        engine.print(
            f"eval at epoch {epoch}, step {engine.step}: k-NN top-1 {record['eval/knn_top1']:.4f}{linear} "
            f"({len(self.bank)} bank / {len(self.queries)} queries of {self.config.eval_data}, "
            f"{self.config.resolution} px, {record['eval/seconds']:.1f} s)"
        )
        return record

    def features(self, engine, encoder) -> torch.Tensor:
        """Every sample's feature ``(N, D)`` in file order, on the CPU of every rank: this rank's share
        extracted, then all shares gathered."""
        rank, world = engine.accelerator.process_index, engine.num_processes
        if self.loader is None:
            from ..data.eval_loader import eval_loader

            self.loader = eval_loader(
                self.config.eval_data,
                self.batch_size,
                self.config.resolution,
                num_workers=self.config.num_workers,
                indices=[self.source.order[i] for i in self.shards[rank]],
            )
        features, _ = extract_features(encoder, self.loader, POOL, engine.device)
        if world == 1:
            return features
        longest = len(self.shards[0])  # every rank sends as many rows; the padding is cut off after
        padded = features.new_zeros(longest, features.shape[1])
        padded[: len(features)] = features
        gathered = engine.accelerator.gather(padded.to(engine.device)).cpu()
        return torch.cat([gathered[r * longest : r * longest + len(s)] for r, s in enumerate(self.shards)])


@contextlib.contextmanager
def untouched_rng(device: torch.device):
    """Python's, NumPy's, torch's CPU and ``device``'s random states as they were on entry, on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)
