"""Device selection shared by every model: ``auto`` picks a GPU when one is present."""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a :class:`torch.device`, checking it exists."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but no CUDA GPU is available (use 'auto' or 'cpu')")
        index = int(spec.split(":", 1)[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device("cuda", index)
    raise ConfigError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision to autocast to on this device (bf16 where supported, else fp16), None on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
