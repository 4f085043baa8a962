"""The paper's experiments on a finished sweep and a verdict on SPEC §8's eight targets.

- ``study``: ``ReproConfig``, ``ModelInfo``, ``StudyData``, ``TargetResult`` and the targets'
  names; ``stats``: intervals at the right level and three-way verdicts (SPEC §10);
  ``predictions``: what each target predicts, declared before any data is seen; ``verdict``:
  estimates -> a target's verdict and its reason;
- ``matrices``: pair values of the study's models as ``PairSet``s; ``targets`` (1 and
  ``evaluate_targets``), ``targets_similarity`` (2, 3, 6), ``targets_agreement`` (4, 5, 7),
  ``targets_sensitivity`` (8);
- ``probes``: linear-head retraining (target 7); ``subgroups``: agree/disagree subsets (target 6);
- ``run``: ``run_reproduction``, the whole run on a sweep, every (dataset, threat model) group;
  ``writer``: ``reproduction.{md,json}``.
"""

from __future__ import annotations

from analysis.reproduction.predictions import PREDICTIONS, Declared
from analysis.reproduction.probes import (
    ProbeConfig,
    ProbeResult,
    agreement_matrix,
    fort_agreement,
    run_probes,
    train_probe,
)
from analysis.reproduction.run import run_reproduction
from analysis.reproduction.stats import Estimate, PairSet, Prediction, decide, estimate
from analysis.reproduction.study import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    INVERSION_NOT_DISCRIMINATIVE,
    PARTIAL,
    REP_MEASURES,
    TITLES,
    UNTESTABLE,
    ModelInfo,
    ReproConfig,
    StudyData,
    TargetResult,
)
from analysis.reproduction.subgroups import (
    SubgroupResult,
    min_samples,
    results_frame,
    split_agree,
    subgroup_similarity,
)
from analysis.reproduction.targets import evaluate_targets
from analysis.reproduction.writer import write_report

__all__ = [
    "ReproConfig", "ModelInfo", "StudyData", "TargetResult", "HOLDS", "FAILS", "INCONCLUSIVE",
    "UNTESTABLE", "PARTIAL", "TITLES", "REP_MEASURES", "INVERSION_NOT_DISCRIMINATIVE",
    "PREDICTIONS", "Declared", "Estimate", "PairSet", "Prediction", "decide", "estimate",
    "evaluate_targets", "ProbeConfig", "ProbeResult", "train_probe", "agreement_matrix",
    "fort_agreement", "run_probes", "SubgroupResult", "split_agree", "min_samples",
    "subgroup_similarity", "results_frame", "run_reproduction", "write_report",
]
