"""The prepared GPU check (issue 14, item 6): one run on one GPU card, one JSON line per case, every line
naming the card, the torch/CUDA versions and its ratio against a baseline measured in the same run.

Cases:

- ``model_step`` (one line per stage and compile mode): MAE-B/16 training steps (forward, backward, ZeRO
  optimizer step, through the trainer's ``Engine.micro_step`` as ``pretrain`` runs them) under accelerate +
  DeepSpeed ZeRO-1 BF16 (``accelerate_configs/1gpu.yaml`` → ``ds_configs/zero1_bf16.json``) at the
  authors' stages 160 / 192 / 224 px with mask 0.5 / 0.66 / 0.75, on synthetic uint8 images already on
  the device (normalised in the step, as ``pretrain`` does): the model step, not the data. Images/s, TFLOP/s
  (``mae_trainer.modeling.flops``) and MFU against the card's BF16 peak
  (``mae_trainer.training.throughput``). Ours (``MAEForPreTraining``) against transformers'
  ``ViTMAEForPreTraining`` of the same shapes (hidden 768×12, decoder 512×8, norm_pix_loss, sdpa
  attention; built at 224 px, ``interpolate_pos_encoding=True`` at 160 / 192 as a progressive run with it
  would do). Both sides step with the trainer's optimizer (``accelerator.adamw``: fused AdamW on CUDA). Eager
  first, then both compiled as ``pretrain --compile`` compiles (``accelerator.compile_in_place``:
  ``nn.Module.compile`` in place, ``dynamic=False``): static shapes, **one graph per stage** (a stage lasts
  hundreds of epochs, so a compile per side and stage is paid once, and each stage gets kernels for its own
  shapes; our position table is computed inside the graph under compile, so its cache adds no recompile).
  Compile time is reported apart from the rates: the warm-up steps' time beyond as many steady steps, with
  the graphs compiled and the graph breaks (DeepSpeed's hook around the module calls ``time.time``:
  a break before the model's graph, seen in the smoke run). Each line also has
  ``*_queued_img_per_s``: the same steps queued back to back as ``pretrain`` runs them (no sync between
  steps), and on CUDA
  ``*_host_syncs_per_step`` by package (torch's sync debug mode; the trainer's hot path reads nothing back,
  so ``mae_trainer`` should not appear; DeepSpeed's and torch's own are shown as they are).
- ``loader`` (one line per resolution): ``ProgressiveLoader`` images/s per CPU core at 160 / 192 / 224 px
  with ``crop_decode=True`` (bicubic, the default), ``num_workers`` = the cores this process may use, on a
  real ``.beton`` written with ``write-dataset``'s defaults (500 px, JPEG q90, ``jpg``) from the embedded
  photos cut at ImageNet-like sizes (short side 300–400 px; ``benchmarks/_photos.py``); timed over several
  seconds of whole epochs after a warm-up epoch. Baseline: the same loader with ``crop_decode=False``. On
  CUDA both put the images on the card as ``pretrain`` does (FFCV ``ToDevice`` from pinned buffers).

Structure: this script is the parent; it runs each case in a child process and relays the children's JSON
lines. The model child is ``accelerate launch --config_file accelerate_configs/1gpu.yaml`` of this file, so
the launcher sets up DeepSpeed exactly as for ``pretrain``. Inside it each model gets its own ``Engine`` and
so its own ``Accelerator`` and DeepSpeed engine (an ``Accelerator`` prepares one model under DeepSpeed, and
``accelerator.backward`` goes to the engine it prepared: one per model is the way accelerate allows two);
the accelerator state, process group and DeepSpeed plugin are per process and shared by both, so ours and
transformers' run in the same process on the same card and their timed steps alternate, noise hitting both
alike. The loader runs in a plain child process (no accelerate, nothing else running), so its threads have
the machine. A parent that only launches keeps a time limit over both and can report a child that fails
or overruns in a line of its own.

    .venv/bin/python benchmarks/gpu_check.py            # on a GPU node, ≤ 7.5 min (without CUDA: refuses)
    .venv/bin/python benchmarks/gpu_check.py --smoke    # every code path on the CPU, tiny model, ~3 min

``--cases loader,model_step`` and ``--phases eager,compiled`` choose parts; ``--time-limit`` (450 s) bounds
the whole run: a child still running then is killed and reported in a line, its finished lines kept.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from importlib.metadata import version
from pathlib import Path

START = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
TAG = "gpu_check"
STAGES = ((160, 0.5), (192, 0.66), (224, 0.75))  # DailyMAE's progressive stages
STAGE_EPOCHS = 1000  # the loader's steps schedule puts stage i at epoch i × this
BASELINE_MODEL = (
    "transformers.ViTMAEForPreTraining (sdpa, same shapes and norm_pix_loss, built at 224 px, "
    "interpolate_pos_encoding at 160/192)"
)
CHILD_OPTIONS = (  # what the parent passes on to its children, defaults resolved
    "batch",
    "steps",
    "warmup",
    "loader_batch",
    "loader_seconds",
    "loader_per_photo",
    "phases",
    "preset",
    "compile_backend",
    "accelerate_config",
)
BASELINE_LOADER = "the same ProgressiveLoader with crop_decode=False (whole-image decode, same crops)"


def cores() -> int:
    return len(os.sched_getaffinity(0))


def environment(smoke: bool) -> dict:
    """What every line carries: the card, the versions, the cores, and whether this is the smoke run."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "benchmark": TAG,
        "smoke": smoke,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cores": cores(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        **{name: version(name) for name in ("deepspeed", "accelerate", "transformers")},
    }


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)


# ------------------------------------------------------------------------------------------ model child


def model_child(args: argparse.Namespace) -> None:
    """Ours and transformers' MAE, each under its own accelerate + DeepSpeed engine in this process."""
    import numpy as np  # noqa: F401  (numpy before torch, as pretrain)
    import torch
    from torch._dynamo.utils import counters

    from mae_trainer import MAEConfig
    from mae_trainer.data.normalize import normalize, stats_tensor
    from mae_trainer.modeling.flops import mae_training_flops_per_image
    from mae_trainer.training.accelerator import compile_in_place
    from mae_trainer.training.throughput import peak_bf16_tflops, window_throughput

    config = MAEConfig.from_preset(args.preset, image_size=STAGES[-1][0], mask_ratio=STAGES[-1][1])
    assert config.norm_pix_loss
    phases = args.phases.split(",")
    total_steps = len(phases) * len(STAGES) * (args.warmup + args.steps)  # per side, for the progress bar
    sides = {
        kind: build_side(kind, config, args.batch, Path(args.child_dir), total_steps)
        for kind in ("ours", "baseline")
    }
    setup = time.perf_counter() - START
    device = sides["ours"].engine.device
    cuda = device.type == "cuda"
    mean, std = stats_tensor(config.image_mean, device), stats_tensor(config.image_std, device)
    common = {
        **environment(args.smoke),
        "case": "model_step",
        "model": f"{args.preset} (hidden {config.hidden_size}×{config.num_hidden_layers}, decoder "
        f"{config.decoder_hidden_size}×{config.decoder_num_hidden_layers}, patch {config.patch_size})",
        "launch": f"accelerate launch --config_file accelerate_configs/{args.accelerate_config}",
        "ds_config": "ds_configs/zero1_bf16.json",
        "zero_optimizer": type(sides["ours"].model.optimizer).__name__,
        "param_dtype": str(sides["ours"].dtype).removeprefix("torch."),
        "batch": args.batch,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "input": "synthetic uint8 on the device, normalised in the step",
        "setup_s": round(setup, 1),
        "bf16_peak_tflops": peak_bf16_tflops(torch.cuda.get_device_name(device)) if cuda else None,
    }

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def train_step(side, images, mask) -> None:
        """One training step of ``side`` as ``pretrain`` runs it (lr, normalise on the device, micro-step)."""
        side.engine.set_lr(side.optimizer)
        pixels = normalize(images, mean, std, side.dtype)
        side.engine.micro_step(
            side.model, side.optimizer, side.forward(pixels, mask), images=args.batch, where=TAG
        )

    def step(side, images, mask) -> tuple[float, float | None]:
        """One training step of ``side``, synced: seconds, and on CUDA the GiB it allocated above its
        resting state."""
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            resting = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        train_step(side, images, mask)
        sync()
        seconds = time.perf_counter() - start
        peak = (torch.cuda.max_memory_allocated(device) - resting) / 2**30 if cuda else None
        return seconds, peak

    def queued(side, images, mask, steps: int, count_syncs: bool) -> tuple[float, dict | None]:
        """``steps`` steps queued back to back as ``pretrain`` runs them (no sync between steps, one at
        the end): images/s; with ``count_syncs`` (CUDA), the host syncs per step by the package whose code
        asked for them, from torch's sync debug mode (the trainer's own hot path should show none)."""
        sync()
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if count_syncs:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    train_step(side, images, mask)
            finally:
                if count_syncs:
                    torch.cuda.set_sync_debug_mode(0)
        sync()
        rate = args.batch * steps / (time.perf_counter() - start)
        if not count_syncs:
            return rate, None
        found = collections.Counter(
            sync_source(w.filename) for w in caught if "synchroniz" in str(w.message).lower()
        )
        return rate, {source: round(n / steps, 2) for source, n in sorted(found.items())}

    def graphs() -> tuple[int, dict]:
        return counters["stats"]["unique_graphs"], dict(counters["graph_break"])

    def new_breaks(before: dict, after: dict) -> dict:
        grown = {reason: n - before.get(reason, 0) for reason, n in after.items()}
        return {" ".join(reason.split())[:120]: n for reason, n in grown.items() if n > 0}

    eager_rate = {}
    for phase in phases:
        compiled = phase == "compiled"
        if compiled:
            for side in sides.values():  # the trainer's --compile: the module in place, static shapes
                compile_in_place(side.raw, graphs=len(STAGES), backend=args.compile_backend)
        for resolution, mask in STAGES:
            images = torch.randint(0, 256, (args.batch, 3, resolution, resolution), dtype=torch.uint8)
            images = images.to(device)
            sides["baseline"].raw.config.mask_ratio = mask  # transformers reads the ratio from its config
            warm, new_graphs, breaks = {}, {}, {}
            for kind, side in sides.items():  # compiles (and any recompile) happen here
                before = graphs()
                warm[kind] = [step(side, images, mask)[0] for _ in range(args.warmup)]
                after = graphs()
                new_graphs[kind], breaks[kind] = after[0] - before[0], new_breaks(before[1], after[1])
            seconds = {kind: [] for kind in sides}
            peaks = {kind: [] for kind in sides}
            before = graphs()[0]
            for _ in range(args.steps):  # alternate, so that drift hits both sides alike
                for kind, side in sides.items():
                    took, peak = step(side, images, mask)
                    seconds[kind].append(took)
                    peaks[kind].append(peak)
            compiled_while_timed = graphs()[0] - before
            queued_rate, syncs = {}, {}
            for kind, side in sides.items():
                syncs[kind] = queued(side, images, mask, min(args.steps, 4), cuda)[1] if cuda else None
                queued_rate[kind] = queued(side, images, mask, args.steps, False)[0]
            flops = mae_training_flops_per_image(config, resolution, mask)
            line = {
                **common,
                "resolution": resolution,
                "mask_ratio": mask,
                "compile": (
                    f"pretrain --compile (accelerator.compile_in_place: nn.Module.compile(backend="
                    f"{args.compile_backend!r}, dynamic=False) in place, static shapes, one graph per stage)"
                    if compiled
                    else "off"
                ),
                "gflops_per_image": round(flops / 1e9, 3),
                "baseline": BASELINE_MODEL,
            }
            rates = {}
            for kind in sides:
                total = sum(seconds[kind])
                images_done = args.batch * args.steps
                rates[kind] = images_done / total
                rate = window_throughput(flops * images_done, images_done, total, 1, device)
                steady = statistics.median(seconds[kind])
                line[f"{kind}_img_per_s"] = round(rates[kind], 2)
                line[f"{kind}_step_ms"] = round(steady * 1e3, 2)
                line[f"{kind}_tflops"] = round(rate["tflops_per_rank"], 4)
                line[f"{kind}_mfu"] = round(rate["mfu"], 4) if "mfu" in rate else None
                line[f"{kind}_step_peak_gib"] = round(max(peaks[kind]), 2) if cuda else None
                line[f"{kind}_first_step_s"] = round(warm[kind][0], 2)
                line[f"{kind}_queued_img_per_s"] = round(queued_rate[kind], 2)  # no sync between steps
                line[f"{kind}_host_syncs_per_step"] = syncs[kind]  # by package; CUDA only
                if compiled:  # the warm-up steps' time above steady ones: every compile of the stage
                    line[f"{kind}_compile_s"] = round(sum(warm[kind]) - args.warmup * steady, 2)
                    line[f"{kind}_graphs_compiled"] = new_graphs[kind]
                    line[f"{kind}_graph_breaks"] = breaks[kind]
                    if (resolution, kind) in eager_rate:
                        line[f"{kind}_vs_eager"] = round(rates[kind] / eager_rate[resolution, kind], 3)
                else:
                    eager_rate[resolution, kind] = rates[kind]
            if compiled:  # 0, or the rates above include compiling
                line["graphs_compiled_while_timed"] = compiled_while_timed
            line["ratio"] = round(rates["ours"] / rates["baseline"], 3)
            emit(line)
    for side in sides.values():
        side.engine.finish()


def sync_source(filename: str) -> str:
    """The package whose Python line made a host sync (torch attributes the warning to it)."""
    for package in ("mae_trainer", "deepspeed", "accelerate", "transformers", "timm", "torch"):
        if f"/{package}/" in filename:
            return package
    return "other"


class Side:
    """One model under its own Engine (so its own Accelerator and DeepSpeed engine)."""

    def __init__(self, kind: str, engine, model, raw, optimizer):
        self.kind, self.engine, self.model, self.raw, self.optimizer = kind, engine, model, raw, optimizer
        self.dtype = next(model.parameters()).dtype

    def forward(self, pixels, mask: float):
        if self.kind == "ours":
            return lambda: self.model(pixels, mask_ratio=mask)
        # The mask ratio is raw.config's. Position tables are interpolated only off the built size (the
        # decoder's would be interpolated at any size once asked).
        interpolate = pixels.shape[-1] != self.raw.config.image_size
        return lambda: self.model(pixels, interpolate_pos_encoding=interpolate)


def build_side(kind: str, config, batch: int, work: Path, total_steps: int) -> Side:
    import torch
    from timm.optim import param_groups_weight_decay

    from mae_trainer import MAEForPreTraining
    from mae_trainer.config import TrainingConfig
    from mae_trainer.modeling.convert import vit_mae_config
    from mae_trainer.training.accelerator import adamw, make_accelerator
    from mae_trainer.training.engine import Engine

    training = TrainingConfig(output_dir=work / kind, batch_size=batch)
    accelerator = make_accelerator(training, name=kind, micro_batch=batch)
    torch.manual_seed(0)
    if kind == "ours":
        raw = MAEForPreTraining(config)
        no_decay = raw.no_weight_decay()
    else:
        from transformers import ViTMAEForPreTraining

        raw = ViTMAEForPreTraining(vit_mae_config(config))
        raw.set_attn_implementation("sdpa")
        assert raw.config._attn_implementation == "sdpa"
        no_decay = {"vit.embeddings.cls_token", "decoder.mask_token"}
    raw.train()
    groups = param_groups_weight_decay(raw, 0.05, no_decay)
    optimizer = adamw(groups, 1.5e-4, (0.9, 0.95), accelerator.device)  # the trainer's: fused on CUDA
    model, optimizer = accelerator.prepare(raw, optimizer)
    engine = Engine(
        accelerator, training, name=kind, total_steps=total_steps, peak_lr=1.5e-4, warmup_steps=0, hparams={}
    )
    assert engine.deepspeed, "expected a DeepSpeed engine (launch with an accelerate config)"
    return Side(kind, engine, model, raw, optimizer)


# ------------------------------------------------------------------------------------------ loader child


def loader_child(args: argparse.Namespace) -> None:
    """Loader images/s per core, crop decode against whole-image decode, at each stage's side."""
    import resource

    import numpy as np  # noqa: F401  (numpy before torch, as pretrain)
    import torch
    from _photos import photo_folder

    from mae_trainer.data.resolution import ResolutionSchedule
    from mae_trainer.data.sources import image_folder_source
    from mae_trainer.data.train_loader import ProgressiveLoader
    from mae_trainer.data.write import WriteSettings, write_beton

    work, workers = Path(args.child_dir), cores()
    device = "cuda" if torch.cuda.is_available() else None  # the trainer's GPU path: ToDevice, pinned
    start = time.perf_counter()
    folder = photo_folder(
        work, per_photo=args.loader_per_photo, min_side=300, max_side=400, max_resolution=500
    )
    path = work / "photos.beton"
    summary = write_beton(
        image_folder_source(folder), path, WriteSettings(num_workers=workers), overwrite=True
    )
    prepared = time.perf_counter() - start
    steps = [(i * STAGE_EPOCHS, resolution, mask) for i, (resolution, mask) in enumerate(STAGES)]
    schedule = ResolutionSchedule(
        kind="steps",
        resolution=STAGES[-1][0],
        mask_ratio=STAGES[-1][1],
        batch_size=args.loader_batch,
        steps=steps,
    )
    loaders = {
        crop: ProgressiveLoader(
            path, schedule, num_workers=workers, seed=0, rank=0, world_size=1, crop_decode=crop, device=device
        )
        for crop in (True, False)
    }

    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def measure(loader, first_epoch: int) -> dict:
        """Whole epochs for at least ``--loader-seconds`` (and 2) after a warm-up epoch (numba compiles
        the pipeline in a loader's first)."""
        for _ in loader.epoch(first_epoch):
            pass
        images = batches = 0
        epoch, cpu, wall = first_epoch + 1, cpu_seconds(), time.perf_counter()
        while time.perf_counter() - wall < args.loader_seconds or epoch < first_epoch + 3:
            for batch in loader.epoch(epoch):
                images += batch.images.shape[0]
                batches += 1
            epoch += 1
        rate = images / (time.perf_counter() - wall)
        return {
            "img_per_s": rate,
            "cpu_ms": (cpu_seconds() - cpu) / images * 1e3,
            "batches": batches,
            "epochs": epoch - first_epoch - 1,
        }

    common = {
        **environment(args.smoke),
        "case": "loader",
        "data": f"{summary['count']} embedded-photo crops, short side 300-400 px, written with "
        f"write-dataset's defaults (500 px, jpg q90; {summary['jpeg']} JPEG)",
        "beton_mib": round(summary["bytes"] / 2**20, 1),
        "prepare_s": round(prepared, 1),
        "batch": args.loader_batch,
        "num_workers": workers,
        "interpolation": "bicubic",
        "device": device or "cpu",
        "baseline": BASELINE_LOADER,
    }
    for index, (resolution, _) in enumerate(STAGES):
        found = {crop: measure(loader, index * STAGE_EPOCHS) for crop, loader in loaders.items()}
        ours, base = found[True], found[False]
        emit(
            {
                **common,
                "resolution": resolution,
                "crop_decode": True,
                "img_per_s": round(ours["img_per_s"], 1),
                "img_per_s_per_core": round(ours["img_per_s"] / workers, 1),
                "cpu_ms_per_image": round(ours["cpu_ms"], 3),
                "timed_batches": ours["batches"],
                "timed_epochs": ours["epochs"],
                "baseline_img_per_s": round(base["img_per_s"], 1),
                "baseline_img_per_s_per_core": round(base["img_per_s"] / workers, 1),
                "baseline_cpu_ms_per_image": round(base["cpu_ms"], 3),
                "baseline_timed_batches": base["batches"],
                "ratio": round(ours["img_per_s"] / base["img_per_s"], 3),
            }
        )


# ------------------------------------------------------------------------------------------ parent


def run_child(case: str, command: list[str], timeout: float, env: dict) -> bool:
    """Run one child, relaying its JSON lines as they come; on failure or overrun, one line saying so."""
    with tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
        other = collections.deque(maxlen=20)

        def relay() -> None:
            for line in process.stdout:
                try:
                    found = json.loads(line)
                except ValueError:
                    found = None
                if isinstance(found, dict) and found.get("benchmark") == TAG:
                    print(line, end="", flush=True)
                else:
                    other.append(line.rstrip())

        reader = threading.Thread(target=relay, daemon=True)
        reader.start()
        try:
            code = process.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and the workers it started
            code = None
        process.wait()
        reader.join(5)
        if code == 0:
            return True
        stderr.seek(0)
        tail = stderr.read()[-3000:].splitlines()
        emit(
            {
                "benchmark": TAG,
                "case": case,
                "error": f"ran past the time limit ({timeout:.0f} s)"
                if code is None
                else f"exit status {code}",
                "seconds": round(time.perf_counter() - start, 1),
                "stdout_tail": list(other)[-10:],
                "stderr_tail": tail[-25:],
            }
        )
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="every code path on the CPU: tiny model, 2 steps"
    )
    parser.add_argument("--cases", default="loader,model_step", help="comma-separated: loader, model_step")
    parser.add_argument("--phases", default="eager,compiled", help="model_step phases: eager, compiled")
    parser.add_argument(
        "--batch", type=int, default=None, help="images per model step (default 256; smoke 2)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per side and stage (25; smoke 2)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first, compiles included (3; 2)"
    )
    parser.add_argument("--loader-batch", type=int, default=None, help="loader batch (256; smoke 16)")
    parser.add_argument(
        "--loader-seconds", type=float, default=None, help="timed loader seconds per point (3)"
    )
    parser.add_argument("--loader-per-photo", type=int, default=None, help="crops per photo, 16 photos (128)")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds for the whole check (450)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the data and the run outputs")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--preset", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--compile-backend", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--accelerate-config", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # GPU run / smoke run; the smoke run keeps every path (accelerate + DeepSpeed on cpu_1proc.yaml,
    # torch.compile, the loader) at the smallest size: tiny model, 2 images, 2 steps, compile with
    # aot_eager (dynamo and AOTAutograd without inductor's C++ code generation, minutes on 2 cores).
    defaults = dict(
        batch=(256, 2),
        steps=(25, 2),
        warmup=(3, 2),
        loader_batch=(256, 16),
        loader_seconds=(3.0, 0.5),
        loader_per_photo=(128, 4),
        time_limit=(450.0, 360.0),
        preset=("base", "tiny"),
        compile_backend=("inductor", "aot_eager"),
        accelerate_config=("1gpu.yaml", "cpu_1proc.yaml"),
    )
    for name, (gpu, smoke) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else gpu)
    if args.child == "model":
        return model_child(args)
    if args.child == "loader":
        return loader_child(args)

    import torch

    if not args.smoke and not torch.cuda.is_available():
        print(
            f"gpu_check: error: no CUDA device visible (torch {torch.__version__}); this check measures a "
            "GPU and reports nothing without one (--smoke runs every code path on the CPU)",
            file=sys.stderr,
        )
        sys.exit(2)
    deadline = time.monotonic() + args.time_limit
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    passed = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in CHILD_OPTIONS]
    passed += ["--smoke"] if args.smoke else []
    children = {
        "loader": [sys.executable, __file__, "--child", "loader"],
        "model_step": [
            str(Path(sys.executable).parent / "accelerate"),
            "launch",
            "--config_file",
            str(ROOT / "accelerate_configs" / args.accelerate_config),
            __file__,
            "--child",
            "model",
        ],
    }
    ok = True
    for case in args.cases.split(","):
        folder = work / case
        folder.mkdir(parents=True, exist_ok=True)
        remaining = deadline - time.monotonic()
        if remaining < 5:
            emit({"benchmark": TAG, "case": case, "error": "not run: the time limit was spent"})
            ok = False
            continue
        ok &= run_child(case, [*children[case], f"--child-dir={folder}", *passed], remaining, env)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
