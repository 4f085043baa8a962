"""The reproduction's data and settings: ``ReproConfig`` (what runs, how the statistics are
drawn), ``ModelInfo`` / ``StudyData`` (the sweep's arrays, no models, no MLflow), the verdict
record ``TargetResult`` and the names of the eight targets (SPEC §8). The verdict words are
``analysis.reproduction.stats``'s (SPEC §10).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.engine.spec import MeasureSpec
from analysis.reproduction.predictions import SIMILARITY_MEASURES, SUBGROUP_MEASURES
from analysis.reproduction.probes import ProbeConfig, ProbeResult
from analysis.reproduction.stats import FAILS, HOLDS, INCONCLUSIVE, LEVEL, PARTIAL, UNTESTABLE
from trainables.errors import ConfigError

__all__ = ["ReproConfig", "ModelInfo", "StudyData", "TargetResult", "HOLDS", "FAILS",
           "INCONCLUSIVE", "UNTESTABLE", "PARTIAL", "TITLES", "REP_MEASURES",
           "INVERSION_NOT_DISCRIMINATIVE"]

# SPEC §9: inversion does not discriminate on these datasets; its results are never evidence.
INVERSION_NOT_DISCRIMINATIVE = {
    "digits": "SPEC §9: on the embedded digits data image inversion is not discriminative (standard "
              "models' inversions already look like the target digit and transfer to other models "
              "as well as robust models' do, also when upsampled), so inverted-image similarity "
              "says nothing about the hypothesis here. Run a CIFAR-10 or ImageNet-100 sweep "
              "(`make cluster-submit SPEC=sweeps/cifar10_l2.yaml`, then `make reproduce`) to test it."
}

TITLES = {
    1: "Accuracy-robustness trade-off (sanity)",
    2: "Regular-data similarity is already high (Jones's confound)",
    3: "Inverted-image similarity rises with epsilon",
    4: "Prediction agreement does not converge with epsilon",
    5: "Agreement stays between the Fort reference curves",
    6: "Disagreement is not explained by representational dissimilarity",
    7: "Retraining the linear head raises agreement (held-out)",
    8: "Sensitivity: the orderings of targets 3 and 4 do not flip",
}

#: The representational measures the targets compute on clean and inverted inputs (the values
#: ``pairs.parquet`` may already hold for them are reused).
REP_MEASURES: tuple[MeasureSpec, ...] = SIMILARITY_MEASURES


@dataclass(frozen=True)
class ReproConfig:
    """What the reproduction runs and how its statistics are drawn.

    The predictions (directions, margins, primary measures) are not settings: they are declared
    in ``analysis.reproduction.predictions`` before any data is seen.

    Attributes:
        seed: seeds permutations and attacks.
        level: interval level of every estimate (0.95).
        n_permutations: membership permutations per subgroup measure and pair (target 6).
        subgroup_measures: measures on the agree/disagree subsets (target 6); the report names
            the RTD setting used.
        k_values: k-NN Jaccard k for the sensitivity check (k >= N - 1 is skipped and said so).
        inversion_iterations: iterations of the main inversion (SPEC: 1,000).
        inversion_iterations_alt: the sensitivity run (SPEC: 2,000); None skips it.
        inversion_targets: targets per model (None = the whole eval set).
        inversion_check_targets, inversion_check_iterations: targets per model and iterations
            where inversion cannot be tested on the dataset (SPEC §9, e.g. digits) and
            ``inversion_targets`` is None: the run is then only a check that the optimiser
            converges, so a small batch and a short run are enough (1,000 iterations on 64
            digits images cost 1-9 s per model on one idle CPU core).
        probes: probe settings (target 7).
        attack_steps, attack_restarts: PGD for robust accuracy at the largest epsilon (target 1).
    """

    seed: int = 0
    level: float = LEVEL
    n_permutations: int = 100
    subgroup_measures: tuple[MeasureSpec, ...] = SUBGROUP_MEASURES
    k_values: tuple[int, ...] = (10, 100, 500)
    inversion_iterations: int = 1000
    inversion_iterations_alt: int | None = 2000
    inversion_targets: int | None = None
    inversion_check_targets: int = 32
    inversion_check_iterations: int = 200
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    attack_steps: int = 20
    attack_restarts: int = 1

    def __post_init__(self) -> None:
        if not 0.5 <= self.level < 1:
            raise ConfigError(f"level must be in [0.5, 1), got {self.level!r}")
        if self.n_permutations < 0:
            raise ConfigError(f"n_permutations must be >= 0, got {self.n_permutations!r}")
        for name in ("inversion_check_targets", "inversion_check_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class ModelInfo:
    """One model of the study.

    Attributes:
        id: the model's key in every per-model mapping of ``StudyData`` and in the figures;
            ``run_reproduction`` uses the model's unique label (``ModelRef.label``), so the
            report names models readably.
        label: the human label (equal to ``id`` in ``run_reproduction``).
        arch, eps, seed: architecture, training epsilon, seed.
    """

    id: str
    label: str
    arch: str
    eps: float
    seed: int


@dataclass
class StudyData:
    """Everything the targets need, as arrays (no models, no MLflow).

    Attributes:
        dataset, num_classes: the dataset.
        models: the models (one dataset, one threat model).
        clean: id -> {"features" (N, D), "logits" (N, C), "labels" (N,)} on the clean eval set.
        robust_acc: id -> robust accuracy at the largest training eps (same attack for all).
        inverted: row id -> {col id -> (T, D_col) features on row's inverted images}; None if
            inversion was not run. ``inverted_alt`` is the same for the sensitivity run.
        inversion_summary: row id -> convergence summary (median / p90 / frac below threshold).
        probes: "eps=<e>" -> ProbeResult of that epsilon's backbones.
        known: pair values computed before, ``(where, spec_key(...), id_a, id_b) -> value`` with
            ``where`` in {"clean", "inverted", "inverted_alt"}; matrices take an entry from here
            instead of recomputing it (a symmetric measure on clean inputs in either order).
        computed: the pair values the targets computed, keyed like ``known`` (a value, or the
            one-line reason it could not be computed), so the sensitivity variants of target 8
            reuse the main targets' values.
    """

    dataset: str
    num_classes: int
    models: list[ModelInfo]
    clean: dict[str, dict[str, np.ndarray]]
    robust_acc: dict[str, float] = field(default_factory=dict)
    inverted: dict[str, dict[str, np.ndarray]] | None = None
    inverted_alt: dict[str, dict[str, np.ndarray]] | None = None
    inversion_summary: dict[str, dict[str, float]] = field(default_factory=dict)
    probes: dict[str, ProbeResult] = field(default_factory=dict)
    known: dict[tuple[str, str, str, str], float] = field(default_factory=dict)
    computed: dict[tuple[str, str, str, str], float | str] = field(default_factory=dict,
                                                                   repr=False)


@dataclass
class TargetResult:
    """One SPEC §8 target: verdict, why, what was predicted, the number it rests on, and the
    figures behind it (``reproduction.json`` carries every field).

    Attributes:
        number, title: the target.
        status: holds / does not hold / inconclusive / cannot be tested on this data /
            partially tested (target 8).
        reason: one or two sentences.
        prediction: the declared prediction (``Declared.to_dict()``).
        key: the one number the verdict rests on: ``{"measure", "kind", **Estimate.to_dict()}``
            (None where nothing could be estimated).
        measures: every measure and pair kind with its own verdict:
            ``{"measure", "kind", "status", "estimate"}``.
        variants: target 8's sensitivity variants with their verdicts and flips.
        trend: target 4's agreement at every eps: ``{"eps", "measure", "kind", "estimate"}``.
        figures: free-form details.
    """

    number: int
    title: str
    status: str
    reason: str
    prediction: dict[str, Any] | None = None
    key: dict[str, Any] | None = None
    measures: list[dict[str, Any]] = field(default_factory=list)
    variants: list[dict[str, Any]] = field(default_factory=list)
    trend: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
