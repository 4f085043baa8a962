"""The device rule, declared once: ``auto`` = the first CUDA device when there is one, else CPU.

Training (``TrainConfig.device``: ``auto``, ``cpu`` or ``cuda``), feature extraction, attacks,
inversion and probes all ask ``pick_device`` instead of testing ``torch.cuda.is_available()``
themselves.
"""

from __future__ import annotations

import torch

from trainables.errors import ConfigError

__all__ = ["pick_device"]


def pick_device(requested: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` for a requested name.

    Args:
        requested: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (or a ``torch.device``).

    Raises:
        ConfigError: an unknown name, or a CUDA device this machine does not have.
    """
    if isinstance(requested, torch.device):
        requested = str(requested)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda" or (isinstance(requested, str) and requested.startswith("cuda:")
                               and requested[5:].isdigit()):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(requested[5:]) if ":" in requested else 0
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise ConfigError(f"device={requested!r} but this machine has {have}; allowed here: "
                              f"auto, cpu" + (f", cuda, cuda:0..cuda:{count - 1}" if count else ""))
        return torch.device(requested)
    raise ConfigError(f"device={requested!r} is not allowed; allowed: auto, cpu, cuda, cuda:N")
