"""Models at chosen training epochs: the checkpoints a trial logged during training.

With ``train.checkpoint_every: N`` a trial's MLflow run holds ``checkpoints/epoch_XXX/`` (weights +
``meta.json``) for every N-th epoch before the last, and its final ``checkpoint/`` (the last
epoch). `at_epochs` turns a `Discovery` of the final models into one `ModelRef` per (trial,
epoch): the final checkpoint stands for the last epoch; an earlier epoch's model gets the id
``<run id>_epoch<XXX>`` and the label ``<label>-ep<E>``, so each (trial, epoch) is one item of
the pair table, and models are compared with models of the same epoch only (the analysis
groups them by dataset and epoch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

from analysis.inputs.discovery import Discovery, ModelRef, SkippedRun, read_meta
from trainables import tracking as tr
from trainables.errors import CheckpointError, ConfigError, UserError

__all__ = ["Epochs", "at_epochs", "parse_epochs"]

Epochs = Sequence[int] | Literal["all"]


def parse_epochs(text: str, *, field: str = "--epoch") -> Epochs:
    """``all``, or epochs as ``5`` / ``5,10,15``.

    Raises:
        ConfigError: naming the field, the value and what is allowed.
    """
    if text.strip() == "all":
        return "all"
    try:
        epochs = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        epochs = []
    if not epochs or epochs[0] < 1:
        raise ConfigError(f"{field}={text!r} is not allowed; allowed: an epoch (an integer >= 1),"
                          f" a comma list of them, or all")
    return epochs


def at_epochs(disc: Discovery, epochs: Epochs, *,
              tracking_uri: str | None = None) -> Discovery:
    """The models of ``disc`` at the requested training epochs.

    Args:
        disc: the sweep's final models (`analysis.inputs.discover_models`).
        epochs: epoch numbers, or ``"all"``: every epoch any trial has a checkpoint of.
        tracking_uri: the MLflow store.

    Returns:
        A `Discovery` with one model per (trial, epoch) it has a checkpoint of, sorted by
        (dataset, epoch, eps, arch, seed); trials that lack a requested epoch are skipped with
        that reason.

    Raises:
        UserError: a requested epoch that no trial has (the message lists those available).
    """
    uri = tr.resolve_tracking_uri(tracking_uri)
    client = tr.make_client(uri)
    have = {m.run_id: {*tr.logged_epochs(client, m.run_id), m.epoch} for m in disc.models}
    available = sorted(set().union(*have.values())) if have else []
    wanted = available if epochs == "all" else sorted(set(epochs))
    missing = [e for e in wanted if e not in available]
    if missing or not wanted:
        finals = sorted({m.epoch for m in disc.models})
        raise UserError(
            f"epoch {', '.join(map(str, missing)) or '(none)'} is not available in sweep "
            f"{disc.sweep!r}: its trials have checkpoints of epochs "
            f"{', '.join(map(str, available)) or 'none'} ({', '.join(map(str, finals))} = the "
            f"final ones); allowed: one of those, or all (--epochs all)")
    models: list[ModelRef] = []
    skipped = list(disc.skipped)
    for m in disc.models:
        for e in wanted:
            if e not in have[m.run_id]:
                skipped.append(SkippedRun(m.run_id, m.label, "FINISHED", f"no checkpoint of epoch"
                                          f" {e} (it has {sorted(have[m.run_id])})"))
                continue
            ref = m if e == m.epoch else _epoch_ref(m, e, uri)
            (skipped if isinstance(ref, SkippedRun) else models).append(ref)
    models.sort(key=lambda m: (m.dataset, m.epoch, m.eps, m.arch, m.seed, m.run_id))
    return dataclasses.replace(disc, models=tuple(models), skipped=tuple(skipped))


def _epoch_ref(final: ModelRef, epoch: int, uri: str) -> ModelRef | SkippedRun:
    """The model of ``final``'s trial after ``epoch``: its accuracies are that epoch's."""
    path = tr.epoch_checkpoint_path(epoch)
    label = f"{final.label}-ep{epoch}"
    try:
        meta = read_meta(final.run, uri, path)
    except CheckpointError as exc:
        return SkippedRun(final.run_id, label, "FINISHED", str(exc))
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}

    def acc(name: str) -> float | None:
        return float(metrics[name]) if metrics.get(name) is not None else None

    base = final.checkpoint_uri.rsplit("/", 1)[0]
    return dataclasses.replace(
        final, run_id=f"{final.run}_epoch{epoch:03d}", label=label, epoch=epoch, final=False,
        mlflow_run_id=final.run, checkpoint_path=path, checkpoint_uri=f"{base}/{path}",
        clean_acc=acc(tr.METRIC_CLEAN_ACC), robust_acc=acc(tr.METRIC_ROBUST_ACC),
        data_hash=str(meta.get("data_hash", final.data_hash)))
