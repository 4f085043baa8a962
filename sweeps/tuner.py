"""What the grid (`sweeps.launch`) and the tuning phase (`sweeps.hpo`) share: the sweep's
tracking handle, the trial config every trial starts from, the trainable with its resources,
Tuner construction (storage, failures, checkpoints, trial names) and the progress callback.

The trial config is plain data; its layout is documented in `trainables.trial`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune import Callback

from sweeps.cli_util import Echo, fmt
from sweeps.grid import ArchSpec, Cell
from sweeps.spec import SweepSpec
from trainables import tracking as tr
from trainables.trial import cell_tuple, run_trial

__all__ = ["SweepHandle", "FaultSwitch", "ProgressCallback", "experiment_path",
           "base_param_space", "cell_of", "trainable_for", "make_tuner"]

CHECKPOINTS_TO_KEEP = 2


@dataclass(frozen=True)
class FaultSwitch:
    """Test-only: make each trial fail once after reporting ``after_epoch``.

    ``mode="raise"`` raises inside the trial; ``mode="exit"`` kills its worker with
    ``os._exit`` (a hard crash). ``marker_dir`` records which trials already failed, so each
    fails exactly once. ``mode="watch"`` never fails: each trial writes its progress (pid,
    epoch, batch) under ``marker_dir`` for a test that kills it from outside. Never set in real
    sweeps.
    """

    after_epoch: int
    marker_dir: str
    mode: str = "exit"


@dataclass
class SweepHandle:
    """The sweep's tracking handles: client, experiment id, parent run id."""

    spec: SweepSpec
    client: Any
    experiment_id: str
    parent_run_id: str

    def tracking_config(self, role: str) -> dict[str, Any]:
        return {"uri": self.spec.tracking.uri, "experiment_id": self.experiment_id,
                "parent_run_id": self.parent_run_id, "sweep": self.spec.name, "role": role}


def experiment_path(spec: SweepSpec, *, suffix: str = "") -> str:
    """Where Tune keeps the experiment state: ``<storage>/<name><suffix>``."""
    return spec.storage.rstrip("/") + "/" + spec.name + suffix


def base_param_space(spec: SweepSpec, handle: SweepHandle, *, role: str) -> dict[str, Any]:
    """The parts of a trial config every trial shares (no grid axes yet)."""
    spec_dict = spec.to_dict()
    return {
        "sweep": spec.name,
        "dataset": spec_dict["dataset"],
        "train": spec_dict["train"],
        "eval": spec_dict["eval"],
        "overrides": {},
        # Torch threads per trial = its CPU share (at least one).
        "num_threads": max(1, int(spec.resources.cpu)),
        "tracking": handle.tracking_config(role),
    }


def cell_of(config: dict[str, Any]) -> Cell:
    """The grid cell a (resolved) trial config stands for."""
    arch, width, threat_model, eps, seed = cell_tuple(config)
    return Cell(ArchSpec(arch, width), threat_model, eps, seed)


def trial_name(trial: Any) -> str:
    """Tune trial name: the grid cell key (plus the trial id for tuning trials)."""
    key = cell_of(trial.config).key
    return key if trial.config["tracking"]["role"] == "trial" else f"hpo:{key}#{trial.trial_id}"


def trial_dirname(trial: Any) -> str:
    return f"{trial.trial_id}"


def trainable_for(spec: SweepSpec) -> Any:
    """`run_trial` with the spec's per-trial resources attached."""
    return tune.with_resources(run_trial, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def make_tuner(spec: SweepSpec, param_space: dict[str, Any], *, name: str, echo: Echo,
               search_alg: Any = None, num_samples: int = 1,
               max_concurrent: int | None = None) -> tune.Tuner:
    """A Tuner over `run_trial` with the spec's storage, failure and checkpoint settings."""
    return tune.Tuner(
        trainable_for(spec),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, num_samples=num_samples,
            max_concurrent_trials=max_concurrent or spec.max_concurrent,
            reuse_actors=True,  # import torch+mlflow costs ~5 s per fresh worker (ENV.md)
            trial_name_creator=trial_name, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=name, storage_path=spec.storage, verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_TO_KEEP),
            callbacks=[ProgressCallback(echo)]),
    )


class ProgressCallback(Callback):
    """One concise line per trial-epoch, plus a line when a trial fails, retries or ends.

    Runs on the driver; picklable (Tune stores it with the experiment for `Tuner.restore`).
    """

    def __init__(self, echo: Echo) -> None:
        self.echo = echo
        self.start = time.monotonic()

    def setup(self, stop: Any = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        self.start = time.monotonic()  # also after Tuner.restore unpickles this callback

    def _prefix(self, trials: list[Any]) -> str:
        done = sum(t.status == "TERMINATED" for t in trials)
        elapsed = time.monotonic() - self.start
        return f"[{elapsed:6.0f}s {done}/{len(trials)} done]"

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict,
                        **info: Any) -> None:
        epochs = trial.config.get("train", {}).get("epochs", "?")
        parts = [f"{self._prefix(trials)} {trial}",
                 f"epoch {fmt(result.get(tr.METRIC_EPOCH), '{:.0f}')}/{epochs}",
                 f"loss {fmt(result.get(tr.METRIC_TRAIN_LOSS), '{:.3f}')}",
                 f"clean {fmt(result.get(tr.METRIC_CLEAN_ACC), '{:.3f}')}",
                 f"robust {fmt(result.get(tr.METRIC_ROBUST_ACC), '{:.3f}')}",
                 f"{fmt(result.get(tr.METRIC_EPOCH_TIME), '{:.1f}')}s"]
        self.echo("  ".join(parts))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.echo(f"{self._prefix(trials)} {trial} FAILED for good after {trial.num_failures} "
                  f"failure(s): {_last_error_line(trial)} (details: {trial.error_file})")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        self.echo(f"{self._prefix(trials)} {trial} failed ({_last_error_line(trial)}); "
                  f"restarting from its last checkpoint (failure {trial.num_failures})")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        self.echo(f"{self._prefix(trials)} {trial} finished")


def _last_error_line(trial: Any) -> str:
    try:
        text = trial.get_error()
    except Exception:  # noqa: BLE001 - best effort, for a progress line only
        return "error"
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "error"
