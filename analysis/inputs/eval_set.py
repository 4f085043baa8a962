"""The eval set: each dataset's fixed evaluation subset, drawn as the sweep's trials drew it, and
the check that refuses a model evaluated on other inputs.

Every model of an analysis sees the same N inputs in the same order: the subset
``trainables.data`` selects with ``eval_indices`` and fingerprints with ``eval_hash``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from analysis.inputs.base import EvalSet
from analysis.inputs.discovery import ModelRef
from trainables.errors import DataError

__all__ = ["load_eval_set", "load_eval_sets", "check_data_hash"]


def load_eval_set(dataset: str, *, root: str | None = None, seed: int = 0,
                  eval_size: int | None = None, image_size: int | None = None,
                  n_train: int | None = None, n_test: int | None = None) -> EvalSet:
    """Load a dataset's fixed evaluation subset through ``trainables.data.load_dataset``
    (``n_train`` / ``n_test``: the set sizes of a generated dataset, kept in the options only
    when given, so that the sets reloading the dataset draw the same ones)."""
    from trainables.data import load_dataset  # torch: only when data is loaded

    options = {"root": root, "seed": seed, "eval_size": eval_size, "image_size": image_size}
    options.update({k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None})
    bundle = load_dataset(dataset, **options)
    X, y = bundle.eval_tensors()
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    y = np.ascontiguousarray(np.asarray(y, dtype=np.int64))
    return EvalSet(dataset, X, y, np.asarray(bundle.eval_indices, dtype=np.int64),
                   str(bundle.eval_hash), int(bundle.num_classes), options)


def load_eval_sets(models: Sequence[ModelRef], *, data_root: str | None = None,
                   eval_size: int | None = None, data_seed: int | None = None
                   ) -> dict[str, EvalSet]:
    """Each dataset's eval set, drawn with the options its trials used (``ModelRef.data``).

    The options come from the trial runs (MLflow params, else ``meta.json``), so a user passes
    nothing; ``data_root`` / ``eval_size`` / ``data_seed`` override them and so choose one eval
    set where a dataset's models were evaluated on several (models on the others are then
    refused one by one, ``check_data_hash``).

    Raises:
        DataError: a dataset's models were evaluated on different eval sets and no override
            chose one, or the eval set drawn matches none of the models (names the hashes and
            the flags to pass).
    """
    overridden = data_root is not None or eval_size is not None or data_seed is not None
    bases = {}
    for dataset in sorted({m.dataset for m in models}):
        group = [m for m in models if m.dataset == dataset]
        counts = Counter(m.data_hash for m in group)
        if len(counts) > 1 and not overridden:
            raise DataError(
                f"the {dataset} models of this analysis were evaluated on {len(counts)} "
                f"different eval sets ({_describe(group, counts)}); their features are not "
                f"comparable: pass --eval-size/--data-seed/--data-root to choose one (the models "
                f"evaluated on the others are then skipped)")
        expected = counts.most_common(1)[0][0]
        first = next(m for m in group if m.data_hash == expected)
        opts = dict(first.data)
        root = data_root or opts.get("root")
        size = eval_size if eval_size is not None else opts.get("eval_size")
        seed = data_seed if data_seed is not None else opts.get("eval_seed", 0)
        base = load_eval_set(dataset, root=root, eval_size=size, seed=seed,
                             image_size=opts.get("image_size") if dataset == "imagefolder" else None,
                             n_train=opts.get("n_train"), n_test=opts.get("n_test"))
        if base.hash not in counts:
            raise DataError(
                f"the {dataset} eval set (root={root}, eval_size={size}, seed={seed}) has hash "
                f"{base.hash[:16]}..., but the sweep's models were evaluated on "
                f"{_describe(group, counts)}; pass --data-root/--eval-size/--data-seed matching "
                f"the sweep"
            )
        bases[dataset] = base
    return bases


def _describe(group: Sequence[ModelRef], counts: Counter) -> str:
    """``eval_size=60 eval_seed=0 (hash 0123abcd...): 2 models, ...`` for a dataset's models."""
    parts = []
    for digest, n in counts.most_common():
        data = next(m.data for m in group if m.data_hash == digest)
        parts.append(f"eval_size={data.get('eval_size')} eval_seed={data.get('eval_seed', 0)} "
                     f"(hash {digest[:12] or '<none>'}...): {n} model{'s' if n > 1 else ''}")
    return ", ".join(parts)


def check_data_hash(ref: ModelRef, base: EvalSet) -> None:
    """Refuse a model evaluated on other inputs than ``base`` (meta.json ``data_hash``).

    Raises:
        DataError: naming the model, its data hash and the expected one.
    """
    if ref.data_hash != base.hash:
        raise DataError(
            f"model {ref.label} (run {ref.run_id}) was evaluated on inputs with data_hash "
            f"{ref.data_hash[:16] or '<none>'}..., but the {base.dataset} eval set of this "
            f"analysis has hash {base.hash[:16]}...; its features would not be comparable, so it "
            f"is refused (retrain it on the same eval set or pass matching --data-seed/--eval-size)"
        )
