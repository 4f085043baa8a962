"""Random state of a training run: every generator seeded from one seed, and saved or restored
as a whole so that a resumed run continues bit-identically (on CPU)."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything", "rng_state", "set_rng_state"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch, numpy and python from ``seed``; return the run's own generator (shuffling,
    augmentation, attack starts)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    return torch.Generator().manual_seed(seed)


def rng_state(gen: torch.Generator) -> dict:
    """Every generator's state, as tensors and plain values (safetensors + JSON, no pickle)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, pystate, pygauss = random.getstate()
    return {"torch": torch.get_rng_state(), "generator": gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                      "has_gauss": has_gauss, "gauss": gauss},
            "python": {"version": version, "state": list(pystate), "gauss": pygauss}}


def set_rng_state(s: dict, gen: torch.Generator) -> None:
    """Restore what `rng_state` saved (``gen`` is the run's own generator)."""
    torch.set_rng_state(s["torch"])
    gen.set_state(s["generator"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
