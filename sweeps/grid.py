"""The grid's value types: an architecture (name + width), a threat model's epsilons, one cell.

`sweeps.spec.SweepSpec.cells()` expands the grid into `Cell`s; a cell's `key` names its trial
(Tune trial name, MLflow run name and tag ``unisweep.cell``).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainables.tracking import arch_label, format_eps

__all__ = ["ArchSpec", "ThreatSpec", "Cell"]


@dataclass(frozen=True)
class ArchSpec:
    name: str  # key of trainables.models.MODELS
    width: float = 1.0  # channel multiplier

    @property
    def label(self) -> str:
        """``resnet18`` at width 1, else ``resnet18-w0.125``."""
        return arch_label(self.name, self.width)


@dataclass(frozen=True)
class ThreatSpec:
    threat_model: str  # l2 | linf
    epsilons: tuple[float, ...]  # [0, 1] pixel scale


@dataclass(frozen=True)
class Cell:
    """One grid cell = one Tune trial of the grid phase."""

    arch: ArchSpec
    threat_model: str
    eps: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.arch.label}_{self.threat_model}_eps{format_eps(self.eps)}_seed{self.seed}"
