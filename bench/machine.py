"""What a benchmark's figures belong to: the machine, and its GPU's copy bandwidth."""

from __future__ import annotations

import os
import time

from helpers.env import cpu_name, default_threads


def machine_summary() -> dict:
    """CPU model, cores and RAM: what a timing belongs to."""
    import psutil

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "ram_GiB": round(psutil.virtual_memory().total / 2**30, 1),
        "threads": default_threads(),
    }


def gpu_copy_bandwidth(mib: int = 1024, repeats: int = 5) -> float:
    """Bytes/s of a device-to-device copy on the current CUDA GPU (read + write counted), the GPU's
    counterpart of helpers.timing.copy_bandwidth."""
    import torch

    src = torch.ones(mib * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * src.numel() / best
