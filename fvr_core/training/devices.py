"""Where and how a model runs: the device, CPU threads, mixed precision and memory layout a
TrainConfig asks for. Shared by training, estimates and benchmarks."""

from __future__ import annotations

import os

import torch

from fvr_core.config import TrainConfig


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device that is missing is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but no CUDA GPU is available: use device=auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device=mps was asked for but Apple's MPS is not available: use device=auto or cpu")
    return torch.device(name)


def configure_threads(threads: int, share: int = 1) -> int:
    """Use `threads` CPU threads for torch (0 = this process's share of the cores, when `share`
    trainers run side by side); returns the number set."""
    n = threads or max(1, (os.cpu_count() or 1) // max(1, share))
    torch.set_num_threads(n)
    return n


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 where mixed precision is on (auto: CUDA only: CPUs here have no fast bf16), else None."""
    on = config.mixed_precision == "on" or (config.mixed_precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if on else None


def use_channels_last(config: TrainConfig, device: torch.device) -> bool:
    """Whether convolutions run channels-last (auto: on CUDA and CPU, where it was measured faster)."""
    return config.channels_last == "on" or (config.channels_last == "auto" and device.type in ("cuda", "cpu"))
