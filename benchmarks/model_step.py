"""Training-step throughput: our MAE vs transformers' ViTMAEForPreTraining (attn_implementation="sdpa").

Forward + backward + AdamW step, fp32, identical config, batch and masks, both models in the same process,
timed in alternation so machine noise hits both alike. Peak memory: each model's step runs in a fresh child
process, which reports how far a steady-state step raises its resident set (VmHWM after resetting it through
/proc/self/clear_refs, minus VmRSS before the step). One JSON line per case.

    .venv/bin/python benchmarks/model_step.py [--cases s16-224,s16-160,b16-224,b16-160] [--batch 16]
        [--threads 2] [--steps 4] [--compile none|ours|both]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from mae_trainer import MAEConfig, MAEForPreTraining
from mae_trainer.modeling.convert import to_vit_mae

CASES = {
    "s16-224": ("small", 224),
    "s16-160": ("small", 160),
    "b16-224": ("base", 224),
    "b16-160": ("base", 160),
}


def build(kind: str, preset: str, resolution: int, compile_model: str):
    torch.manual_seed(0)
    ours = MAEForPreTraining(MAEConfig.from_preset(preset, image_size=resolution)).train()
    if kind == "ours":
        model = ours
    else:
        model = to_vit_mae(ours)
        model.set_attn_implementation("sdpa")
        model.train()
    if compile_model == "both" or (compile_model == "ours" and kind == "ours"):
        model = torch.compile(model)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)


def step(model, optimizer, x, noise) -> None:
    loss = model(x, noise=noise).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def inputs(batch: int, resolution: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, resolution, resolution, generator=gen)
    return x, torch.rand(batch, (resolution // 16) ** 2, generator=gen)


def peak_rss_child(kind: str, case: str, batch: int, threads: int, compile_model: str) -> float:
    """MiB of resident memory the step adds on top of the built model and inputs, in a fresh process."""
    cmd = [
        sys.executable,
        __file__,
        "--memory-child",
        kind,
        "--cases",
        case,
        "--batch",
        str(batch),
        "--threads",
        str(threads),
        "--compile",
        compile_model,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_child(kind: str, case: str, batch: int, compile_model: str) -> None:
    preset, resolution = CASES[case]
    model, optimizer = build(kind, preset, resolution, compile_model)
    x, noise = inputs(batch, resolution)
    step(model, optimizer, x, noise)  # optimizer state now exists; measure a steady-state step
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    before = _status_kib("VmRSS")
    step(model, optimizer, x, noise)
    print((_status_kib("VmHWM") - before) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per model (after 2 warm-up steps)")
    parser.add_argument(
        "--compile",
        default="none",
        choices=["none", "ours", "both"],
        help="torch.compile our model only, or both models",
    )
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args.memory_child, args.cases, args.batch, args.compile)

    for case in args.cases.split(","):
        preset, resolution = CASES[case]
        models = {kind: build(kind, preset, resolution, args.compile) for kind in ("ours", "hf")}
        x, noise = inputs(args.batch, resolution)
        for kind in models:
            for _ in range(2):
                step(*models[kind], x, noise)
        seconds = {"ours": 0.0, "hf": 0.0}
        for _ in range(args.steps):
            for kind in ("ours", "hf"):
                start = time.perf_counter()
                step(*models[kind], x, noise)
                seconds[kind] += time.perf_counter() - start
        rate = {kind: args.batch * args.steps / s for kind, s in seconds.items()}
        del models
        memory = {
            kind: peak_rss_child(kind, case, args.batch, args.threads, args.compile)
            for kind in ("ours", "hf")
        }
        print(
            json.dumps(
                {
                    "benchmark": "model_step",
                    "case": case,
                    "batch": args.batch,
                    "threads": args.threads,
                    "compile": args.compile,
                    "dtype": "fp32",
                    "baseline": "transformers.ViTMAEForPreTraining (sdpa)",
                    "ours_img_per_s": round(rate["ours"], 2),
                    "baseline_img_per_s": round(rate["hf"], 2),
                    "ratio": round(rate["ours"] / rate["hf"], 3),
                    "ours_step_peak_mib": round(memory["ours"], 1),
                    "baseline_step_peak_mib": round(memory["hf"], 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
