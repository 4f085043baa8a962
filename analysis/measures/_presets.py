"""Registration metadata that several measures declare alike, as keyword sets for
``register_measure(name, ..., **PRESET)``.

A measure's own keywords (its range, params, reference, formula, cost, variant) stay at its
registration; only what is the same for a family is declared here, once.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ROTATION_INVARIANT", "REPRESENTATIONAL", "ON_LABELS", "ON_PROBS", "SIMILARITY",
           "DISTANCE"]

#: Centred geometry up to rotation and scale: what most representational measures ignore.
ROTATION_INVARIANT = ("orthogonal", "isotropic_scale", "translation", "permutation")

#: A symmetric measure over two models' (N, D) features.
REPRESENTATIONAL: dict[str, Any] = dict(kind="representational", input="features",
                                        symmetric=True)

#: A symmetric measure over predicted labels (N,), blind to how the classes are numbered.
ON_LABELS: dict[str, Any] = dict(kind="functional", input="labels", symmetric=True,
                                 invariances=("class_relabel",))

#: A symmetric measure over class probabilities (N, C), blind to how the classes are numbered.
ON_PROBS: dict[str, Any] = dict(kind="functional", input="probs", symmetric=True,
                                invariances=("class_relabel",))

#: Higher = more similar; a model compared with itself scores 1.
SIMILARITY: dict[str, Any] = dict(higher_is_more_similar=True, self_value=1.0)

#: Lower = more similar; a model compared with itself scores 0.
DISTANCE: dict[str, Any] = dict(higher_is_more_similar=False, self_value=0.0)
