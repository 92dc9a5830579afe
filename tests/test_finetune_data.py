"""The FFCV fine-tuning data path: the training loader over a subset (``indices``) with timm's crop scale,
the batch augmentations (:mod:`mae_trainer.data.batch_augment`) and the sharded evaluation loader, on a
real .beton whose labels are the samples' ids."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mae_trainer.data.batch_augment import RA_OPS, BatchAugment, augment_seed
from mae_trainer.data.eval_loader import eval_loader, eval_shard
from mae_trainer.data.resolution import ResolutionSchedule
from mae_trainer.data.train_loader import ProgressiveLoader, noise_seed

SAMPLES = 40
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def id_beton(tmp_path_factory):
    """The first 40 images of the embedded set as a jpg .beton, each labelled with its own sample id."""
    from mae_trainer.data.sources import embedded_source
    from mae_trainer.data.write import WriteSettings, write_beton

    source = embedded_source()
    source.order = source.order[:SAMPLES]
    source.labels = list(range(len(source.labels)))  # item i (the i-th written) is labelled i
    path = tmp_path_factory.mktemp("ids") / "ids.beton"
    write_beton(source, path, WriteSettings(max_resolution=96, write_mode="jpg", num_workers=1))
    return path


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Eight real 64 px photo crops, uint8 (8, 3, 64, 64)."""
    from mae_trainer.data.demo import demo_samples

    crops = []
    for image, _ in demo_samples(per_photo=1, min_side=64, max_side=80):
        crops.append(torch.from_numpy(np.array(image.convert("RGB").resize((64, 64)))).permute(2, 0, 1))
        if len(crops) == 8:
            break
    return torch.stack(crops).contiguous()


def epoch_batches(loader: ProgressiveLoader, epoch: int, stop: int | None = None):
    """(labels, images) of ``epoch``'s batches, copied (FFCV reuses its buffers); ``stop`` batches at most."""
    out = []
    for batch in loader.epoch(epoch):
        out.append((batch.labels.clone(), batch.images.clone()))
        if stop is not None and len(out) == stop:
            break
    return out


SUBSET = list(range(1, SAMPLES, 2))  # 20 of the 40 samples


def subset_loader(path, seed: int = 3) -> ProgressiveLoader:
    schedule = ResolutionSchedule(resolution=32, batch_size=4, patch_size=16)
    return ProgressiveLoader(
        path, schedule, num_workers=1, seed=seed, scale=(0.08, 1.0), indices=SUBSET, crop_decode=True
    )


def test_loader_with_indices_yields_each_chosen_sample_once_seeded_and_resumable(id_beton):
    loader = subset_loader(id_beton)
    assert tuple(loader.decoder.scale) == (0.08, 1.0)
    assert loader.batches_in_epoch(0) == len(SUBSET) // 4
    epochs = [epoch_batches(loader, epoch) for epoch in (0, 1)]
    for batches in epochs:
        labels = torch.cat([labels for labels, _ in batches]).tolist()
        assert sorted(labels) == SUBSET  # only the chosen samples, each once
        assert all(images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8 for _, images in batches)
    orders = [torch.cat([labels for labels, _ in batches]).tolist() for batches in epochs]
    assert orders[0] != orders[1]  # a new permutation each epoch

    # Another loader with the same seed: the same samples in the same order, the same crops.
    again = subset_loader(id_beton)
    first = epoch_batches(again, 0, stop=2)
    for (labels, images), (labels2, images2) in zip(epochs[0], first):
        assert torch.equal(labels, labels2) and torch.equal(images, images2)
    # Stopped after 2 batches, resumed from its state in a fresh loader: the remaining batches, equal.
    state = again.state_dict()
    assert state == {"epoch": 0, "samples": 8}
    resumed = subset_loader(id_beton)
    resumed.load_state_dict(state)
    rest = epoch_batches(resumed, 0)
    assert len(rest) == len(epochs[0]) - 2
    for (labels, images), (labels2, images2) in zip(epochs[0][2:], rest):
        assert torch.equal(labels, labels2) and torch.equal(images, images2)
    # A different seed crops differently.
    other = epoch_batches(subset_loader(id_beton, seed=4), 0, stop=1)
    assert not torch.equal(other[0][1], epochs[0][0][1])


def rng_states():
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


@pytest.mark.parametrize("augment", ["randaug", "three", "none"])
def test_batch_augment_is_seeded_per_call_and_leaves_global_rng_alone(augment, photos):
    aug = BatchAugment(augment, MEAN, STD, reprob=0.25, resolution=64)
    before = rng_states()
    out = aug(photos, seed=11)
    again = aug(photos, seed=11)
    other = aug(photos, seed=12)
    after = rng_states()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]
    assert out.shape == photos.shape and out.dtype == torch.float32 and out.device == photos.device
    assert torch.equal(out, again)
    assert not torch.equal(out, other)
    assert torch.equal(photos, photos.clone())  # input untouched (FFCV's buffer)


@pytest.mark.parametrize("augment", ["randaug", "three"])
def test_batch_augment_draws_per_image(augment, photos):
    same = photos[:1].repeat(32, 1, 1, 1)
    out = BatchAugment(augment, MEAN, STD, reprob=0.0, resolution=64)(same, seed=5)
    distinct = {tuple(image.flatten()[::97].tolist()) for image in out}
    assert len(distinct) >= 8  # one draw per image, not one per batch


def test_batch_augment_none_is_normalisation_only(photos):
    out = BatchAugment("none", MEAN, STD, reprob=0.0, resolution=64)(photos, seed=0)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (photos.float() / 255 - mean) / std, rtol=1e-5, atol=1e-5)


def test_three_augment_outcomes_include_grayscale(photos):
    # mean/std equal over channels: a grayscale image keeps equal channels after normalisation
    same = photos[:1].repeat(32, 1, 1, 1)
    out = BatchAugment("three", (0.5,) * 3, (0.5,) * 3, reprob=0.0, resolution=64)(same, seed=1)
    gray = [bool((image[0] == image[1]).all() and (image[1] == image[2]).all()) for image in out]
    assert 3 <= sum(gray) <= 20  # about a third chose grayscale (jitter keeps it gray), the rest did not


def test_random_erasing_changes_one_rectangle(photos):
    plain = BatchAugment("none", MEAN, STD, reprob=0.0, resolution=64)(photos, seed=0)
    erased = BatchAugment("none", MEAN, STD, reprob=1.0, resolution=64)(photos, seed=0)
    for before, after in zip(plain, erased):
        changed = (before != after).any(dim=0)
        rows, cols = torch.nonzero(changed.any(dim=1)).flatten(), torch.nonzero(changed.any(dim=0)).flatten()
        box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and changed.sum() == box.numel()  # every changed pixel, and only them, in a box
        assert 0.015 <= box.numel() / changed.numel() <= 0.36  # timm's 2–33 % of the area (rounded sides)


def test_randaugment_ops_match_timm_on_pil(photos):
    """Each op of the policy at magnitude 9 (positive sign) against timm's PIL op: within about a gray level
    on average. The geometric ops are compared with PIL resampling bilinearly as ours does (timm's policy
    uses bicubic: a resampling difference only, checked here to be the only one)."""
    from PIL import Image
    from timm.data.auto_augment import NAME_TO_OP

    aug = BatchAugment("randaug", MEAN, STD, reprob=0.0, resolution=64)
    fill = tuple(min(255, round(255 * m)) for m in MEAN)
    args = {
        "Rotate": (27.0,), "PosterizeIncreasing": (1,), "SolarizeIncreasing": (26,), "SolarizeAdd": (99,),
        "ColorIncreasing": (1.81,), "ContrastIncreasing": (1.81,), "BrightnessIncreasing": (1.81,),
        "SharpnessIncreasing": (1.81,), "ShearX": (0.27,), "ShearY": (0.27,), "TranslateXRel": (0.405,),
        "TranslateYRel": (0.405,),
    }  # fmt: skip
    level, sign = torch.full((len(photos),), 9.0), torch.ones(len(photos))
    for name in RA_OPS:
        ours = aug._ra_op(name, photos, level, sign).permute(0, 2, 3, 1).numpy().astype(float)
        for image, mine in zip(photos, ours):
            pil = Image.fromarray(image.permute(1, 2, 0).numpy())
            theirs = NAME_TO_OP[name](pil, *args.get(name, ()), fillcolor=fill, resample=Image.BILINEAR)
            theirs = np.asarray(theirs, dtype=float)
            gap = np.abs(mine - theirs).mean()
            assert gap < 1.25, (name, gap)  # the geometric ops move pixels by 4–26 gray levels on average


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("augment", ["randaug", "three", "none"])
def test_batch_augment_on_cuda(augment, photos):
    aug = BatchAugment(augment, MEAN, STD, reprob=0.5, resolution=64)
    images = photos.cuda()
    out = aug(images, seed=3)
    assert out.device == images.device and out.dtype == torch.float32 and out.shape == photos.shape
    assert torch.equal(out, aug(images, seed=3)) and not torch.equal(out, aug(images, seed=4))


def test_augment_seed_is_its_own_stream():
    assert augment_seed(0, 1, 2) == augment_seed(0, 1, 2)
    assert augment_seed(0, 1, 2) != noise_seed(0, 1, 2)
    assert len({augment_seed(0, e, m) for e in range(3) for m in range(5)}) == 15
    assert 0 <= augment_seed(7, 3, 9) < 2**63


@pytest.mark.parametrize("num_samples", [0, 1, 5, 10, 40])
@pytest.mark.parametrize("world", [1, 2, 3, 7, 64])
def test_eval_shard_covers_every_sample_once(num_samples, world):
    shards = [eval_shard(num_samples, rank, world) for rank in range(world)]
    assert [i for shard in shards for i in shard] == list(range(num_samples))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
    with pytest.raises(ValueError):
        eval_shard(num_samples, world, world)


def test_eval_loader_over_shards_returns_every_sample_once(id_beton):
    whole = {}
    for images, labels in eval_loader(id_beton, 8, 48, crop_ratio=0.875):
        whole.update({int(label): image.clone() for label, image in zip(labels, images)})
    assert sorted(whole) == list(range(SAMPLES))

    def shard_labels(rank: int, world: int) -> list[int]:
        seen = []
        shard = eval_shard(SAMPLES, rank, world)
        for images, labels in eval_loader(id_beton, 8, 48, crop_ratio=0.875, indices=shard):
            assert images.shape[1:] == (3, 48, 48) and images.dtype == torch.uint8
            for label, image in zip(labels.tolist(), images):
                assert torch.equal(image, whole[label])  # the same centre crop as the whole file's
                seen.append(label)
        return seen

    assert sorted(label for rank in range(3) for label in shard_labels(rank, 3)) == list(range(SAMPLES))
    # More ranks than samples: one sample each on the first ranks, nothing (and no error) on the others.
    assert [shard_labels(rank, SAMPLES + 5) for rank in (0, SAMPLES - 1, SAMPLES, SAMPLES + 4)] == [
        [0],
        [SAMPLES - 1],
        [],
        [],
    ]
    assert list(eval_loader(id_beton, 8, 48, indices=[])) == []
