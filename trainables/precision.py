"""How a run computes on its device: numeric precision, memory format, torch.compile.

The three rules, declared once (``TrainConfig.precision``, ``.memory_format``, ``.compile``):

- ``precision``: ``auto`` = bf16 autocast on CUDA, fp32 on the CPU; ``bf16`` autocasts on any
  device (on the CPU it is slow, but it is how the attack-strength test runs without a GPU);
  ``fp32`` never autocasts. bf16 has float32's exponent range, so no loss scaling is needed.
  Autocast covers training (the PGD attack, forward and loss) and the per-epoch evaluation; the
  final evaluation (``final/*``, the numbers a sweep reports) always runs in fp32.
- ``memory_format``: ``auto`` = channels_last for convolutional models on CUDA (cuDNN's fast
  NHWC kernels, and what tensor cores want), contiguous otherwise.
- ``compile``: ``none`` or a ``torch.compile`` mode; the compiled module shares the model's
  parameters, and checkpoints are written from the model itself (unchanged state-dict keys).

On the CPU with the defaults (``auto`` / ``auto`` / ``none``) nothing changes, so resume stays
bit-identical there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from trainables.config import COMPILE_MODES, MEMORY_FORMATS, PRECISIONS
from trainables.errors import ConfigError

__all__ = ["resolve_precision", "resolve_memory_format", "autocast", "prepare_model",
           "to_format"]


def resolve_precision(requested: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for a requested precision on ``device``."""
    if requested == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if requested in ("fp32", "bf16"):
        return requested
    raise ConfigError(f"precision={requested!r} is not allowed; allowed: {', '.join(PRECISIONS)}")


def resolve_memory_format(requested: str, model: nn.Module, device: torch.device) -> str:
    """``channels_last`` or ``contiguous`` for a requested format, model and device."""
    if requested == "auto":
        conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
        return "channels_last" if conv and device.type == "cuda" else "contiguous"
    if requested in ("contiguous", "channels_last"):
        return requested
    raise ConfigError(f"memory_format={requested!r} is not allowed; allowed: "
                      f"{', '.join(MEMORY_FORMATS)}")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 autocast on ``device`` for a resolved precision of ``bf16``; nothing for fp32."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=torch.bfloat16):
        yield


def to_format(x: torch.Tensor, memory_format: str) -> torch.Tensor:
    """An image batch (B, C, H, W) in the resolved memory format."""
    if memory_format == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def prepare_model(model: nn.Module, *, memory_format: str,
                  compile_mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Put ``model`` in the memory format (in place) and return what the loop calls: the model,
    or its ``torch.compile`` wrapper (same parameters; checkpoint the model itself)."""
    if memory_format == "channels_last":
        model.to(memory_format=torch.channels_last)
    if compile_mode == "none":
        return model
    if compile_mode not in COMPILE_MODES:
        raise ConfigError(f"compile={compile_mode!r} is not allowed; allowed: "
                          f"{', '.join(COMPILE_MODES)}")
    return torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
