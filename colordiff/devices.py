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


def end_process_group(status: int) -> int:
    """Ends this process's torch.distributed process group, if it started one, and returns `status`: for the
    `__main__` of every entry point that `accelerate launch` may start several times (colorize, evaluate, caption,
    reproduce, the training scripts).

    In a process that is one of several (torchrun's WORLD_SIZE > 1) it then ends the process itself: Python's exit
    handlers run, the streams are flushed, and os._exit(status) skips the C++ teardown that follows them. That
    teardown can abort a process that has finished all its work, after destroy_process_group and after the exit
    handlers (SIGABRT, "terminate called without an active exception": about 1 in 50 two-process runs on an idle
    2-core machine, 1 in 5 beside a busy process), and torchrun then fails the whole launch. Every file a run
    writes is closed (and renamed into place) by then."""
    import atexit
    import os
    import sys

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        atexit._run_exitfuncs()  # what interpreter exit would run first: logging's shutdown, temp-file cleanup
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status
