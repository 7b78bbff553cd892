"""Pick the best available torch device."""

from __future__ import annotations

import torch

from .errors import ConfigError

__all__ = ["conv_layout", "resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device`` as a :class:`torch.device`, or the best available one.

    ``None`` or ``"auto"`` picks CUDA, then Apple MPS, then the CPU.
    """
    if device is not None and str(device) != "auto":
        return _checked(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _checked(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"unknown device {str(device)[:40]!r}: use cpu, cuda, cuda:N or mps"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r}: CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"device {str(device)!r}: MPS is not available here")
    elif dev.type not in ("cpu", "meta"):
        raise ConfigError(f"device {str(device)!r} is not supported: use cpu, cuda or mps")
    return dev


def conv_layout(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move an image batch to ``device`` in the fastest memory layout for convolutions.

    Channels-last (NHWC) input makes oneDNN on CPUs and cuDNN on GPUs pick their NHWC
    kernels, which are faster for these EfficientNets; training steps on a CPU were
    several times slower on NCHW input. Weights keep their layout (and are saved
    contiguous). MPS keeps NCHW.
    """
    x = batch.to(device, non_blocking=True)
    if x.dim() == 4 and device.type in ("cpu", "cuda"):
        x = x.contiguous(memory_format=torch.channels_last)
    return x
