"""Online evaluation during pre-training (``--eval-data``): real runs, plain ones in the test's process
(``conftest.run_to_end``) and 2 DeepSpeed ZeRO-1 BF16 ranks, on a labelled held-out .beton of real photos.

Why the top-1 must be far above chance: each class is one photograph (16 of scikit-image's), and the held-out
crops are fresh ones (another seed than the training set's). Crops of one photo share its colours, texture
and content, which an encoder's features carry, so a query crop's nearest bank crops mostly come from its own
photo: measured 0.59-0.66 against a chance of 1/16. Features assigned to the wrong samples (a gather in the
wrong order, stale or shifted buffers) would score near chance, and the last number must equal what the probe
command says of the saved model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import BIN, launch_cmd, run_main, run_to_end, small_embedded_beton, tiny_flags

CLASSES = 16
CHANCE = 1 / CLASSES
FLAGS = tiny_flags(epochs=3, blr="1e-3", seed=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``(training .beton: 160 images, 10 steps of 16 per epoch; held-out labelled .beton: 10 fresh crops of
    each of the 16 photos)``."""
    from mae_trainer.data.demo import class_names, demo_samples
    from mae_trainer.data.sources import ArraySource
    from mae_trainer.data.write import WriteSettings, write_beton

    folder = tmp_path_factory.mktemp("online_eval")
    arrays, labels = [], []
    for image, label in demo_samples(per_photo=10, min_side=64, max_side=96, seed=1):
        arrays.append(np.asarray(image))
        labels.append(label)
    held_out = folder / "held_out.beton"
    source = ArraySource("held-out", class_names(), arrays, labels)
    write_beton(source, held_out, WriteSettings(max_resolution=64, write_mode="jpg", num_workers=1))
    return small_embedded_beton(folder, limit=160, max_resolution=64), held_out


def run(cmd: list[str], *args: str) -> str:
    """``cmd ARGS FLAGS`` to its end (a plain one in this process: ``conftest.run_to_end``); its output."""
    return run_to_end([*cmd, *map(str, args), *FLAGS])


def records(out) -> tuple[list[dict], list[dict]]:
    """``(training records, evaluation records)`` of ``out/metrics.jsonl``."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "loss" in r], [r for r in lines if "eval/knn_top1" in r]


def tensorboard_steps(out, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "tensorboard").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_one_process_evaluates_on_schedule_without_touching_training(data, tmp_path):
    train, held_out = data
    plain = [str(BIN / "mae-trainer"), "pretrain", "--data", str(train)]
    out = tmp_path / "eval"
    result = run(plain, "--output-dir", out, "--eval-data", held_out, "--eval-every", 2, "--eval-linear")
    trained, evals = records(out)
    # --eval-every 2 of 3 epochs: after epoch 1 (step 20) and where training ends (epoch 2, step 30)
    assert [(r["step"], r["epoch"]) for r in evals] == [(20, 1), (30, 2)]
    for r in evals:
        assert r["eval/knn_top1"] > 4 * CHANCE and r["eval/linear_top1"] > 4 * CHANCE, r
    assert "eval at epoch 2, step 30: k-NN top-1" in result
    assert tensorboard_steps(out, "eval/knn_top1") == tensorboard_steps(out, "eval/linear_top1") == [20, 30]
    epoch_seconds = 160 / np.mean([r["images_per_s"] for r in trained])
    print(f"one evaluation {evals[-1]['eval/seconds']:.3f} s, one epoch ~{epoch_seconds:.2f} s")

    # the same run without --eval-data trains exactly the same (the linear probe's head init draws from
    # torch's CPU generator, which also draws the masks: the evaluation restores it)
    bare = tmp_path / "bare"
    run(plain, "--output-dir", bare)
    assert [r["loss"] for r in records(bare)[0]] == [r["loss"] for r in trained]

    # the last number is what the probe command says of the saved model (same split, k, seed, pixels)
    from mae_trainer.cli import parse_config
    from mae_trainer.downstream import probe

    argv = ["probe", "--model", str(out), "--train", str(held_out), "--val-fraction", "0.2", "--seed", "3",
            "--knn", "--linear", "--num-workers", "1", "--extract-batch-size", "16"]  # fmt: skip
    probed = probe.run(parse_config(argv))
    assert probed["knn"]["top1"] == round(evals[-1]["eval/knn_top1"], 4)
    assert probed["linear"]["top1"] == round(evals[-1]["eval/linear_top1"], 4)

    # resumed from the epoch-0 checkpoint, evaluation continues on schedule with the same numbers
    resumed = tmp_path / "resumed"
    resume = out / "checkpoints" / "step_00000010"
    run(plain, "--output-dir", resumed, "--eval-data", held_out, "--eval-every", 2, "--eval-linear",
        "--resume", resume)  # fmt: skip
    again = records(resumed)[1]
    assert [(r["step"], r["epoch"], r["eval/knn_top1"], r["eval/linear_top1"]) for r in again] == [
        (r["step"], r["epoch"], r["eval/knn_top1"], r["eval/linear_top1"]) for r in evals
    ]


@pytest.mark.slow
def test_deepspeed_ranks_share_the_evaluation(data, tmp_path):
    """Two DeepSpeed ranks (the one-process case is the test above): each extracts its share of the
    held-out set, gathered in order; evaluated on schedule, printed once."""
    ranks = 2
    train, held_out = data
    out = tmp_path / "run"
    launch = launch_cmd(f"cpu_{ranks}proc.yaml", "pretrain", "--data", str(train))
    result = run(
        launch, "--output-dir", out, "--eval-data", held_out, "--eval-every", 1, "--global-batch-size", 16
    )
    assert f"on {ranks} process(es) (DistributedType.DEEPSPEED, torch.bfloat16)" in result
    trained, evals = records(out)
    assert [(r["step"], r["epoch"]) for r in evals] == [(10, 0), (20, 1), (30, 2)]
    assert len(trained) == 30 and all("eval/linear_top1" not in r for r in evals)
    # with 2 ranks each extracts half of the set (classes 0-7, then 8-15): gathered out of order, every
    # query would sit among the wrong photo's features
    assert all(r["eval/knn_top1"] > 4 * CHANCE for r in evals), evals
    assert tensorboard_steps(out, "eval/knn_top1") == [10, 20, 30]
    assert result.count("eval at epoch") == 3  # printed once, by the main process


def test_bad_eval_data_is_refused_in_one_line(data, tmp_path):
    from tests.test_probe import unlabelled_beton

    train, held_out = data
    out = tmp_path / "out"
    bogus = tmp_path / "bogus.beton"
    bogus.write_bytes(b"\xff\xd8\xff\xe0 a jpeg, not a beton" * 10)
    for extra, needles in [
        (["--eval-data", bogus], ["--eval-data", "not an FFCV .beton file"]),
        (["--eval-data", tmp_path / "missing.beton"], ["--eval-data", "no such file"]),
        (["--eval-data", unlabelled_beton(tmp_path / "x.beton")], ["--eval-data", "no 'label' field"]),
        (["--eval-data", held_out, "--eval-k", "500"], ["--eval-k 500", "larger than the feature bank (128"]),
        (["--eval-data", held_out, "--eval-every", "-1"], ["--eval-every -1", "at least 0"]),
    ]:
        result = run_main("pretrain", "--data", str(train), "--output-dir", str(out), *map(str, extra))
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("mae-trainer: error: ") and result.stderr.count("\n") == 1, (
            result.stderr
        )
        assert all(needle in result.stderr for needle in needles), result.stderr
        assert not out.exists()
