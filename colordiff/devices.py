"""Device and dtype names shared by the CLI, the training scripts and the benchmarks."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def accelerator_available() -> bool:
    """A CUDA or XPU device is present (without one, accelerate must be told it runs on the CPU)."""
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def mixed_precision_dtype(mixed_precision: str) -> torch.dtype:
    """accelerate's mixed_precision name (no | fp16 | bf16) -> the dtype frozen parts run in."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for wall-clock timing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
