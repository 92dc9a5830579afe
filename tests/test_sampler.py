"""The training loader (ProgressiveLoader) and its order (ShardedSampler): disjoint per-rank shards,
determinism, resume, stages — on real .beton files and with 2 real ranks (torch.distributed, gloo)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from mae_trainer.data.resolution import ResolutionSchedule, parse_steps, whole_batches
from mae_trainer.data.train_loader import ProgressiveLoader

NUM = 103  # odd on purpose: 2 ranks leave one sample out, and partial batches are dropped


@pytest.fixture(scope="module")
def indexed_beton(tmp_path_factory):
    """103 real photo crops whose label is their own index, so every delivered sample is identifiable."""
    from mae_trainer.data.demo import demo_samples
    from mae_trainer.data.sources import ArraySource
    from mae_trainer.data.write import WriteSettings, write_beton

    arrays = [np.asarray(image) for image, _ in demo_samples(per_photo=7, min_side=64, max_side=96)][:NUM]
    source = ArraySource("indexed", ["x"], arrays, list(range(NUM)))
    path = tmp_path_factory.mktemp("indexed") / "indexed.beton"
    write_beton(source, path, WriteSettings(max_resolution=96, write_mode="jpg", num_workers=1))
    return path


def schedule(batch=8):
    return ResolutionSchedule(
        kind="steps",
        resolution=64,
        mask_ratio=0.75,
        batch_size=batch,
        steps=parse_steps("0:32:0.5,1:64"),
        scale_batch=False,
    )


def labels_of(loader, epoch):
    return [(b.labels.tolist(), b.images.shape, b.resolution, b.mask_ratio) for b in loader.epoch(epoch)]


def test_shards_are_disjoint_deterministic_and_cover_the_dataset(indexed_beton):
    loaders = [
        ProgressiveLoader(indexed_beton, schedule(), rank=r, world_size=2, num_workers=1) for r in (0, 1)
    ]
    shards = [loader.sampler.shard(0, 8) for loader in loaders]
    assert len(shards[0]) == len(shards[1]) == (NUM // 16) * 8  # whole global batches of 2 × 8
    assert not set(shards[0]) & set(shards[1])
    assert len(set(shards[0]) | set(shards[1])) == NUM - NUM % 16  # the documented remainder
    again = ProgressiveLoader(indexed_beton, schedule(), rank=0, world_size=2, num_workers=1)
    assert np.array_equal(again.sampler.shard(0, 8), shards[0]) and np.array_equal(
        again.sampler.shard(3, 8), loaders[0].sampler.shard(3, 8)
    )
    assert not np.array_equal(loaders[0].sampler.shard(0, 8), loaders[0].sampler.shard(1, 8))

    delivered = labels_of(loaders[0], 0)
    # the rule pretrain.check counts batches with, before FFCV is imported: what the loader delivers
    assert len(delivered) == whole_batches(NUM, 2, 8) == 6
    assert [lbl for batch in delivered for lbl in batch[0]] == shards[0][
        : 6 * 8
    ].tolist()  # 51 // 8 = 6 batches
    assert {(shape[-1], res, mask) for _, shape, res, mask in delivered} == {(32, 32, 0.5)}
    later = labels_of(loaders[0], 1)
    assert {(shape[-1], res, mask) for _, shape, res, mask in later} == {(64, 64, 0.75)}


def test_order_does_not_depend_on_worker_count(indexed_beton):
    one = ProgressiveLoader(indexed_beton, schedule(), rank=1, world_size=2, num_workers=1)
    two = ProgressiveLoader(indexed_beton, schedule(), rank=1, world_size=2, num_workers=2)
    assert [b[0] for b in labels_of(one, 2)] == [b[0] for b in labels_of(two, 2)]


def test_resume_inside_an_epoch(indexed_beton):
    full = ProgressiveLoader(indexed_beton, schedule(), rank=0, world_size=1, num_workers=1)
    expected = [b[0] for b in labels_of(full, 1)]
    first = ProgressiveLoader(indexed_beton, schedule(), rank=0, world_size=1, num_workers=1)
    it = first.epoch(1)
    head = [next(it).labels.tolist() for _ in range(3)]
    state = json.loads(json.dumps(first.state_dict()))  # survives serialisation
    assert state == {"epoch": 1, "samples": 3 * 8}  # layout-free: images of the epoch consumed
    resumed = ProgressiveLoader(indexed_beton, schedule(), rank=0, world_size=1, num_workers=1)
    resumed.load_state_dict(state)
    tail = [b.labels.tolist() for b in resumed.epoch(1)]
    assert head + tail == expected
    assert next(b.index for b in resumed.epoch(2)) == 0  # the next epoch starts from its beginning
    with pytest.raises(ValueError, match="not a whole number of micro-batches"):
        ProgressiveLoader(indexed_beton, schedule(16), rank=0, world_size=1).load_state_dict(state)


def test_batch_size_changes_with_the_stage(indexed_beton):
    scaled = ResolutionSchedule(
        kind="steps", resolution=64, batch_size=8, steps=parse_steps("0:32,1:64"), scale_batch=True
    )
    loader = ProgressiveLoader(indexed_beton, scaled, rank=0, world_size=1, num_workers=1)
    sizes = {b.images.shape[0] for b in loader.epoch(0)}, {b.images.shape[0] for b in loader.epoch(1)}
    assert sizes == ({32}, {8})  # 8 × (64/32)² at 32 px
    assert loader.batches_in_epoch(0) == NUM // 32 and loader.batches_in_epoch(1) == NUM // 8


def test_stage_change_and_resume_inside_each_stage(indexed_beton):
    """48 px in batches of 40 (80 of the 103 samples), then 64 px in batches of 24 (96 samples): every
    batch has its stage's shape, each epoch its stage's batch count, also when a run resumes inside either
    stage (a fresh loader starts with stage 0's batch size and crop size, and must switch to the resumed
    epoch's)."""
    scaled = ResolutionSchedule(
        kind="steps", resolution=64, batch_size=24, steps=parse_steps("0:48,1:64"), scale_batch=True
    )

    def make():
        return ProgressiveLoader(indexed_beton, scaled, rank=0, world_size=1, num_workers=1)

    def run(loader, epoch):
        return [(b.labels.tolist(), tuple(b.images.shape), b.stage, b.index) for b in loader.epoch(epoch)]

    full = make()
    expected = {epoch: run(full, epoch) for epoch in (0, 1)}
    for epoch, (batch, res) in {0: (40, 48), 1: (24, 64)}.items():
        assert len(expected[epoch]) == NUM // batch == full.batches_in_epoch(epoch)
        assert {shape for _, shape, _, _ in expected[epoch]} == {(batch, 3, res, res)}
        assert {stage for _, _, stage, _ in expected[epoch]} == {scaled.stage(epoch)}
    for epoch, cut in ((0, 1), (1, 2)):
        first = make()
        head = [b.labels.tolist() for _, b in zip(range(cut), first.epoch(epoch))]
        state = first.state_dict()
        assert (state["epoch"], state["samples"]) == (epoch, cut * expected[epoch][0][1][0])
        resumed = make()
        resumed.load_state_dict(state)
        tail = run(resumed, epoch)
        assert [index for *_, index in tail] == list(range(cut, len(expected[epoch])))
        assert head + [labels for labels, *_ in tail] == [labels for labels, *_ in expected[epoch]]
        assert [shape for _, shape, _, _ in tail] == [shape for _, shape, _, _ in expected[epoch][cut:]]
        after = run(resumed, 1 - epoch)  # the other stage, from its beginning
        assert [(labels, shape) for labels, shape, _, _ in after] == [
            (labels, shape) for labels, shape, _, _ in expected[1 - epoch]
        ]


def _rank_main(rank: int, world: int, store: str, path: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    loader = ProgressiveLoader(path, schedule(), num_workers=1)  # rank and world from torch.distributed
    result = {"epoch0": [b.labels.tolist() for b in loader.epoch(0)]}
    it = loader.epoch(1)
    head = [next(it).labels.tolist() for _ in range(2)]
    state = loader.state_dict()
    resumed = ProgressiveLoader(path, schedule(), num_workers=1)
    resumed.load_state_dict(state)
    result["epoch1_resumed"] = head + [b.labels.tolist() for b in resumed.epoch(1)]
    result["epoch1_full"] = [
        b.labels.tolist() for b in ProgressiveLoader(path, schedule(), num_workers=1).epoch(1)
    ]
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_real_ranks(indexed_beton, tmp_path):
    # rendezvous through a file, not a port found free and released: another process may take that port
    # before rank 0 binds it
    store, out = str(tmp_path / "store"), str(tmp_path / "ranks")
    mp.start_processes(_rank_main, args=(2, store, str(indexed_beton), out), nprocs=2, start_method="spawn")
    ranks = [json.loads(open(f"{out}.{r}").read()) for r in (0, 1)]
    for epoch in ("epoch0", "epoch1_full"):
        seen = [{lbl for batch in r[epoch] for lbl in batch} for r in ranks]
        assert not seen[0] & seen[1]
        assert len(seen[0]) == len(seen[1]) == NUM // 16 * 8
    for r in ranks:
        assert r["epoch1_resumed"] == r["epoch1_full"]
        assert r["epoch0"] != r["epoch1_full"]


def test_order_crops_and_masks_do_not_depend_on_the_layout(indexed_beton):
    """The sample ids of every optimizer step are the same for every split of the global batch of 32
    (ranks × per-rank batch × accumulation): an uninterrupted run and one resumed on another number of
    ranks train on the same images per step. With the same per-rank batch, the micro-batches themselves
    are the same, delivered as the same pixels (seeded crops) with the same mask noise."""
    from mae_trainer.data.sampler import ShardedSampler

    def steps(world, batch, accumulation, epoch=2):
        """Per optimizer step: {micro-batch index: (sample ids, noise seed, pixels)} over all ranks."""
        found = []
        for rank in range(world):
            loader = ProgressiveLoader(indexed_beton, schedule(batch), rank=rank, world_size=world,
                                       accumulation=accumulation, num_workers=1, seed=7)  # fmt: skip
            for b in loader.epoch(epoch):
                step = b.index // accumulation
                found += [None] * (step + 1 - len(found))
                found[step] = {**(found[step] or {}), b.micro_batch: (b.labels.tolist(), b.noise_seed,
                                                                         b.images.clone())}  # fmt: skip
        return found

    def ids(step_batches):
        return sorted(i for ids, _, _ in step_batches.values() for i in ids)

    reference = steps(2, 8, 2)  # 2 ranks × 8 × accumulation 2
    assert len(reference) == NUM // 32 == 3
    for world, batch, accumulation in [(1, 8, 4), (4, 8, 1), (1, 32, 1), (2, 16, 1)]:
        other = steps(world, batch, accumulation)
        assert [ids(s) for s in other] == [ids(s) for s in reference], (world, batch, accumulation)
        if batch == 8:  # the same micro-batches: same samples in order, same crops, same mask noise
            for mine, theirs in zip(other, reference):
                assert mine.keys() == theirs.keys()
                for g in mine:
                    assert mine[g][:2] == theirs[g][:2] and torch.equal(mine[g][2], theirs[g][2])
    # the noise seed of a micro-batch draws the same masks on any device and differs between micro-batches
    batches = list(ProgressiveLoader(indexed_beton, schedule(), num_workers=1).epoch(0))[:2]
    assert torch.equal(batches[0].mask_noise(16, "cpu"), batches[0].mask_noise(16, "cpu"))
    assert not torch.equal(batches[0].mask_noise(16, "cpu"), batches[1].mask_noise(16, "cpu"))
    assert ShardedSampler(world_size=4, rank=3, accumulation=2).micro_batch(5) == 23


def test_crops_and_flips_are_reproducible(indexed_beton):
    """Same run seed → bit-identical batches, whatever the worker count and after a resume; crops of the
    same image still change from epoch to epoch."""

    def images(loader, epoch):
        return {int(lbl): img.clone() for b in loader.epoch(epoch) for lbl, img in zip(b.labels, b.images)}

    one = ProgressiveLoader(indexed_beton, schedule(), rank=0, world_size=1, num_workers=1, seed=4)
    two = ProgressiveLoader(indexed_beton, schedule(), rank=0, world_size=1, num_workers=2, seed=4)
    for epoch in (1, 2):
        a, b = images(one, epoch), images(two, epoch)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    e1, e2 = images(one, 1), images(one, 2)
    common = e1.keys() & e2.keys()
    assert sum(not torch.equal(e1[k], e2[k]) for k in common) > 0.9 * len(common)
    other = images(
        ProgressiveLoader(indexed_beton, schedule(), rank=0, world_size=1, num_workers=1, seed=5), 1
    )
    assert sum(not torch.equal(e1[k], other[k]) for k in e1.keys() & other.keys()) > 0
    # flips happen about half the time: compare a crop with its mirror across many samples is indirect;
    # instead check the decoder's flip helper and probability on a known pattern
    from mae_trainer.data.augment import flip_in_place

    pattern = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)
    flipped = pattern.copy()
    flip_in_place(flipped)
    assert np.array_equal(flipped, pattern[:, ::-1])


def test_crop_decode_gives_the_same_crops_reproducibly(demo_beton):
    """--crop-decode: same seeded crops and flips as the full-decode path (PSNR ≥ 30 dB), and reproducible."""
    stage = ResolutionSchedule(resolution=64, batch_size=32)

    def batches(crop_decode, workers):
        loader = ProgressiveLoader(demo_beton, stage, num_workers=workers, seed=2, crop_decode=crop_decode)
        return [b.images.float() for b in loader.epoch(0)]

    full, cropped, again = batches(False, 2), batches(True, 2), batches(True, 1)
    assert all(torch.equal(a, b) for a, b in zip(cropped, again))
    psnr = [10 * np.log10(255.0**2 / max(((a - b) ** 2).mean().item(), 1e-9)) for a, b in zip(full, cropped)]
    assert min(psnr) >= 30, psnr
