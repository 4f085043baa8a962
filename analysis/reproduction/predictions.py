"""What each SPEC §8 target predicts, declared before any data is seen (SPEC §10).

One entry per target: the SPEC text it tests (quoted), the quantity the verdict rests on (in
words, with its conditions and pair kind), the primary measure with its direction and margin,
the measures reported beside it (each with its own direction), and the rule that turns the
intervals into a verdict. The targets read their predictions from here, and the report prints
this table, so what was predicted and what was measured can be read side by side.

Pair kinds: ``cross`` = pairs of different architectures (the headline: the hypothesis is about
different architectures converging); ``intra`` = the same architecture across seeds (the
baseline, reported beside the headline, never pooled into it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from analysis.engine.spec import MeasureSpec
from analysis.reproduction.stats import Prediction

__all__ = ["Declared", "PREDICTIONS", "SIMILARITY_MEASURES", "SUBGROUP_MEASURES",
           "AGREEMENT_MEASURES", "SUBGROUP_CLOSE", "declared"]

#: Inverted-image similarity measures of targets 2 and 3 (debiased linear CKA first: primary).
SIMILARITY_MEASURES: tuple[MeasureSpec, ...] = (
    MeasureSpec("linear_cka_debiased"), MeasureSpec("linear_cka"), MeasureSpec("procrustes_sim"),
    MeasureSpec("knn_jaccard", {"k": 10}))

#: Target 6's measures on the agree/disagree subsets. RTD is a distance: the target reads -RTD
#: (SPEC §8 "-RTD"). Its setting is cheaper than RTD's default (the paper's 10 x 500) because
#: the permutation test recomputes it on every permutation of every pair: 2 subsamples of 64
#: points (a subset smaller than 64 rows is used whole).
SUBGROUP_MEASURES: tuple[MeasureSpec, ...] = (
    *SIMILARITY_MEASURES[:3], MeasureSpec("rtd", {"n_subsamples": 2, "subsample_size": 64}),
    SIMILARITY_MEASURES[3])

#: Target 4's functional measures: agreement (primary), JSDSim, error-corrected normalised
#: disagreement (the accuracy-controlled version).
AGREEMENT_MEASURES: tuple[str, ...] = ("agreement", "jsd_sim", "normalized_disagreement")

#: Target 6's margin: the largest size-adjusted drop (agree - disagree similarity minus the
#: permutation null's mean, in the measure's units) that still counts as "close".
SUBGROUP_CLOSE = 0.1


@dataclass(frozen=True)
class Declared:
    """One target's declared prediction.

    Attributes:
        number: SPEC §8 target number.
        spec: the SPEC §8 text the target tests (quoted).
        quantity: the quantity the verdict rests on, in words.
        primary: label of the primary measure (the one the verdict rests on).
        predictions: measure label -> its Prediction (the primary's first); a measure absent
            here is not judged.
        rule: how the intervals become a verdict.
    """

    number: int
    spec: str
    quantity: str
    primary: str
    predictions: dict[str, Prediction] = field(default_factory=dict)
    rule: str = ""

    @property
    def prediction(self) -> Prediction | None:
        return self.predictions.get(self.primary)

    def to_dict(self) -> dict:
        p = self.prediction
        return {"quantity": self.quantity, "direction": p.direction if p else None,
                "margin": p.margin if p else None, "spec": self.spec, "rule": self.rule,
                "primary": self.primary,
                "measures": {k: {"direction": v.direction, "margin": v.margin}
                             for k, v in self.predictions.items()}}


def _all(labels: tuple[str, ...], direction: int, margin: float = 0.0,
         quantity: str = "") -> dict[str, Prediction]:
    return {lab: Prediction(f"{quantity} ({lab})", direction, margin) for lab in labels}


_SIM = tuple(s.label for s in SIMILARITY_MEASURES)
_SUB = tuple(("-rtd" if s.name == "rtd" else s.label) for s in SUBGROUP_MEASURES)

PREDICTIONS: dict[int, Declared] = {d.number: d for d in (
    Declared(1, "As eps grows, clean accuracy falls and robust accuracy at eps_train rises, "
                "monotonically in eps for every architecture.",
             "per architecture, seed-paired change of clean accuracy and of robust accuracy at "
             "eps_max between consecutive training eps, and from eps_0 to eps_max",
             "clean_acc",
             {"clean_acc": Prediction("clean acc(eps_max) - clean acc(eps_0)", -1),
              "robust_acc": Prediction("robust acc(eps_max) - robust acc(eps_0)", +1)},
             "holds: no step against the prediction outside the seed noise, and for every "
             "architecture both end-to-end changes lie wholly on the predicted side; does not "
             "hold: some step's seed interval lies wholly on the wrong side (clean accuracy "
             "rises, or robust accuracy falls, significantly); otherwise inconclusive"),
    Declared(2, "On clean test images, mean off-diagonal CKA among eps=0 models is well above "
                "the inverted-image CKA among eps=0 models.",
             "clean-image minus inverted-image similarity among eps_0 models (the same pairs "
             "in both conditions; inverted pairs ordered)",
             _SIM[0], _all(_SIM[:2], +1, quantity="clean - inverted"),
             "the primary measure's cross-architecture interval against 0"),
    Declared(3, "Mean inverted CKA, ProcrustesSim and k-NN Jaccard (k=10) among eps=max models "
                "> among eps=0 models.",
             "inverted-image similarity at eps_max minus at eps_0 (paired cells, ordered pairs)",
             _SIM[0], _all(_SIM, +1, quantity="eps_max - eps_0"),
             "the primary measure's cross-architecture interval against 0; the other measures "
             "are judged alike beside it"),
    Declared(4, "Mean pairwise agreement among robust models is not higher than among standard "
                "models; expect it to be lower. JSDSim likewise does not approach 1. "
                "Error-corrected normalized disagreement among robust models is not lower.",
             "agreement at eps_max minus at eps_0 (paired cells)", "agreement",
             {"agreement": Prediction("agreement eps_max - eps_0", -1),
              "jsd_sim": Prediction("jsd_sim eps_max - eps_0", -1),
              "normalized_disagreement": Prediction("normalized_disagreement eps_max - eps_0",
                                                    +1)},
             "holds when the whole interval of (robust - standard) agreement is below 0, does "
             "not hold when it is above 0, inconclusive otherwise; JSDSim and the normalised "
             "disagreement are judged alike beside it"),
    Declared(5, "For each pair, agreement lies between the independent-errors value and the "
                "minimum-disagreement value computed from the two clean accuracies.",
             "relative position r = (agreement - independent-errors agreement) / (maximum "
             "agreement - independent-errors agreement), mean per eps group (0 and 1 = the "
             "two curves)", "relative_position",
             {"relative_position": Prediction("r", +1, 0.0),
              "relative_position<=1": Prediction("r", -1, 1.0)},
             "holds when every eps group's interval lies inside [0, 1]; does not hold when some "
             "group's interval lies wholly below 0 or wholly above 1; otherwise inconclusive"),
    Declared(6, "Representational similarity on the disagree subset stays high or close to the "
                "agree subset.",
             f"at eps_max: size-adjusted drop (agree - disagree similarity minus the permutation "
             f"null's mean) per measure, against the margin {SUBGROUP_CLOSE}", _SUB[0],
             _all(_SUB, -1, SUBGROUP_CLOSE, quantity="size-adjusted drop"),
             f"holds when the primary measure's whole interval lies below {SUBGROUP_CLOSE}, "
             f"does not hold when it lies above; -RTD is in RTD's units, not [0, 1]"),
    Declared(7, "Mean cross-architecture agreement of the probes on held-out data > mean "
                "agreement of the original heads.",
             "at eps_max: probe agreement minus original-head agreement on held-out inputs "
             "(the same pairs)", "probe - head agreement",
             {"probe - head agreement": Prediction("probe - head agreement", +1)},
             "the cross-architecture interval against 0"),
    Declared(8, "The ordering in targets 3 and 4 should not flip when k in {10, 100, 500}; "
                "centering is on or off; inversion runs 1,000 vs 2,000 iterations; another "
                "seed is used.",
             "each variant's verdict on targets 3 and 4, per measure, against the main verdict "
             "of the same target and measure", "no flip", {},
             "a flip is a variant whose verdict opposes the main one (holds vs does not hold); "
             "any flip: does not hold; no flip but some variants cannot run: partially tested; "
             "no main verdict decisive: inconclusive; otherwise holds"),
)}


def declared(number: int) -> Declared:
    """The declared prediction of target ``number``."""
    return PREDICTIONS[number]
