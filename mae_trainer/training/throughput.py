"""Achieved model FLOP/s of a metrics window and, on a known GPU, the model FLOPs utilisation (MFU).

The caller gives the engine each micro-step's model FLOPs per image (pre-training:
``modeling/flops.py``); the window's total over its images and wall time gives:

- ``gflops_per_image``: training (forward + backward) GFLOPs per image, averaged over the window's images;
- ``tflops_per_rank``: achieved TFLOP/s per rank, ``gflops_per_image × images_per_s / ranks / 1000``;
- ``mfu``: ``tflops_per_rank`` ÷ the card's dense BF16 peak, on CUDA devices named in the table below
  (whatever the run's dtype); any other device or card gets no ``mfu``.
"""

from __future__ import annotations

import re

import torch

# Dense (no sparsity) BF16 tensor-core peak per GPU in TFLOP/s, from NVIDIA's data sheets; the first
# pattern that matches torch.cuda.get_device_name() wins.
BF16_DENSE_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bA100\b", 312),  # SXM4 and PCIe
    (r"\bH100\b.*\bPCIe\b", 756),
    (r"\bH100\b.*\bNVL\b", 835),
    (r"\bH100\b", 989),  # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    (r"\bH200\b.*\bNVL\b", 835),
    (r"\bH200\b", 989),  # SXM
    (r"\bB200\b", 2250),
    (r"\bL40S\b", 362),
    (r"\bL4\b", 121),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The card's dense BF16 peak (TFLOP/s) from :data:`BF16_DENSE_PEAK_TFLOPS`; None when unknown."""
    for pattern, peak in BF16_DENSE_PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return peak
    return None


def window_throughput(flops: float, images: int, seconds: float, ranks: int, device: torch.device) -> dict:
    """``gflops_per_image``, ``tflops_per_rank`` and, on a known CUDA card, ``mfu`` for a window in which
    ``ranks`` ranks together trained ``images`` images costing ``flops`` model FLOPs in ``seconds``."""
    rates = {"gflops_per_image": flops / images / 1e9, "tflops_per_rank": flops / seconds / ranks / 1e12}
    if device.type == "cuda":
        peak = peak_bf16_tflops(torch.cuda.get_device_name(device))
        if peak is not None:
            rates["mfu"] = rates["tflops_per_rank"] / peak
    return rates
