"""The settings of one training run, each declared once, as a field of `TrainConfig`.

A field's declaration (`trainables.settings.setting`) holds its default, what it allows, its doc
line and where a sweep spec sets it (``spec="train.lr"``). Everything else reads it:

- `TrainConfig` validates itself on construction (a `ConfigError` naming the field);
- the spec layer reads and checks the spec's ``dataset:``, ``train:`` and ``eval:`` sections
  (`spec_settings`, used by `sweeps.spec`);
- a trial turns those sections back into TrainConfig arguments (`from_spec_sections`);
- MLflow logs `TrainConfig.to_dict()` as the trial's params;
- ``python -m trainables.train`` has one flag per field;
- the tables of docs/spec-reference.md are generated (``python -m trainables.config FILE``
  rewrites them; tests/test_spec.py fails when they are stale).

Adding a hyperparameter takes its field here and its use in the loop.

Defaults, chosen once for the spec and the command line alike: the SGD recipe of the paper
(SPEC §2.4: lr 0.1, momentum 0.9, weight decay 5e-4, batch 128) with a cosine schedule over
10 epochs, PGD-7 adversarial training with step 2.5 * eps / 7, PGD-20 per-epoch evaluation and a
final PGD-50 x 3 restarts.

Torch-free: architecture names are checked against `trainables.models.MODELS` only when a
config is built, so a spec's other errors are reported without importing torch.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.errors import ConfigError
from trainables.settings import (Setting, check, choice, integer, markdown_table, number, numbers,
                                 path, setting, settings_of)

__all__ = ["TrainConfig", "SETTINGS", "ATTACK_STEP_RULE", "DATASETS", "GENERATED_DATASETS",
           "LOCAL_DATASETS", "MAX_GENERATED_IMAGES", "THREAT_MODELS", "OPTIMIZERS", "SCHEDULES",
           "DEVICES", "STEP_RULES", "PRECISIONS", "MEMORY_FORMATS", "COMPILE_MODES",
           "attack_step_size", "check_set_sizes", "from_spec_sections", "spec_settings",
           "render_reference"]

DATASETS = ("digits", "shapes", "cifar10", "imagefolder")
# Drawn from fixed seeds: `n_train` / `n_test` set their sizes (null: these defaults, SPEC §11).
GENERATED_DATASETS: dict[str, tuple[int, int]] = {"shapes": (8000, 1000)}
LOCAL_DATASETS = ("cifar10", "imagefolder")  # read from `data_root` (nothing is downloaded)
MAX_GENERATED_IMAGES = 1_000_000
THREAT_MODELS = ("l2", "linf")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("none", "step", "cosine")
DEVICES = ("auto", "cpu", "cuda")
STEP_RULES = ("auto", "relative", "absolute")
PRECISIONS = ("auto", "fp32", "bf16")  # the rules: trainables.precision
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
_LINF_EPS = number(0, 1)  # eps (and every extra eval eps) under the linf threat model


def _arch_names() -> list[str]:
    from trainables.models import MODELS  # torch: only when an arch name is checked

    return sorted(MODELS)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on; validated on construction.

    eps is on the [0, 1] pixel scale (eps = 0: standard training). Each field's default, range
    and meaning are declared next to it; docs/spec-reference.md shows them as tables.
    """

    # -- data (the spec's `dataset:` section)
    dataset: str = setting(
        "digits", choice(DATASETS), "which dataset: digits is embedded (scikit-learn), shapes is "
        "generated from fixed seeds (SPEC §11), cifar10 reads the python-pickle layout, "
        "imagefolder `train/` and `val/` class folders", spec="dataset.name", required=True)
    n_train: int | None = setting(
        None, integer(1, MAX_GENERATED_IMAGES, optional=True), "training-set size of a generated "
        f"dataset (`shapes`; null = {GENERATED_DATASETS['shapes'][0]}); must be null for the "
        "others", spec="dataset.n_train")
    n_test: int | None = setting(
        None, integer(1, MAX_GENERATED_IMAGES, optional=True), "test-set size of a generated "
        f"dataset (`shapes`; null = {GENERATED_DATASETS['shapes'][1]}); must be null for the "
        "others", spec="dataset.n_test")
    data_root: str | None = setting(
        None, path(), "the dataset directory, required for `cifar10` (the dir holding "
        "`cifar-10-batches-py/`, or that dir) and `imagefolder`; in a spec it must exist when the "
        "CLI runs (`load_spec(path, check_paths=False)` skips the check)",
        spec="dataset.root", changes_weights=False)
    image_size: int | None = setting(
        None, integer(8, optional=True), "`imagefolder` input size (square; null = 224); fixed "
        "for digits (8) and cifar10 (32)", spec="dataset.image_size")
    # -- the grid cell (the spec's `archs`, `threat_model`, `epsilons`, `seeds`)
    arch: str = setting("cnn", choice(_arch_names), "architecture: a key of "
                        "`trainables.models.MODELS`")
    width: float = setting(1.0, number(0, 16, lo_open=True), "channel multiplier")
    threat_model: str = setting("linf", choice(THREAT_MODELS), "the attack's norm")
    eps: float = setting(0.0, number(0), "radius on the [0, 1] pixel scale (at most 1 for "
                         "linf); 0 trains normally")
    seed: int = setting(0, integer(0, 2**63 - 1), "seeds torch, numpy, python, the data order, "
                        "augmentation and the attack's random starts")
    # -- optimisation (the spec's `train:` section)
    epochs: int = setting(10, integer(1), "training epochs", spec="train.epochs")
    batch_size: int = setting(128, integer(2), "training batch size", spec="train.batch_size",
                              tunable=True)
    optimizer: str = setting("sgd", choice(OPTIMIZERS), "the optimizer", spec="train.optimizer",
                             tunable=True)
    lr: float = setting(0.1, number(0, lo_open=True), "learning rate (at the start of the "
                        "schedule)", spec="train.lr", tunable=True)
    momentum: float = setting(0.9, number(0, 0.999), "SGD momentum", spec="train.momentum",
                              tunable=True)
    weight_decay: float = setting(5e-4, number(0), "L2 weight decay", spec="train.weight_decay",
                                  tunable=True)
    schedule: str = setting("cosine", choice(SCHEDULES), "learning-rate schedule (`cosine` "
                            "anneals to 0 over `epochs`)", spec="train.schedule")
    lr_step_size: int = setting(30, integer(1), "epochs between steps (schedule `step`)",
                                spec="train.lr_step_size")
    lr_gamma: float = setting(0.1, number(0, 1, lo_open=True), "factor per step (schedule "
                              "`step`)", spec="train.lr_gamma", tunable=True)
    attack_steps: int = setting(7, integer(1), "PGD steps of adversarial training (eps = 0 "
                                "trains normally)", spec="train.attack_steps", tunable=True)
    attack_step_size: float | None = setting(
        None, number(0, lo_open=True, optional=True), "the PGD step of adversarial training: a "
        "spec's is read by `attack_step_rule`; a TrainConfig's is absolute (null: 2.5 * eps / "
        "attack_steps)",
        spec="train.attack_step_size", tunable=True)
    checkpoint_every: int | None = setting(
        None, integer(0, optional=True), "log the weights every N epochs to the trial's MLflow "
        "run as `checkpoints/epoch_XXX/` (0 or null: off); the last epoch's are the final "
        "`checkpoint/`, always logged", spec="train.checkpoint_every", changes_weights=False)
    keep_checkpoints: int | None = setting(
        None, integer(1, optional=True), "how many of those epoch checkpoints stay in MLflow: "
        "the newest K (null: all); older ones are deleted where the artifact store can delete",
        spec="train.keep_checkpoints", changes_weights=False)
    # -- compute (the spec's `train:` section; the rules are in trainables.precision)
    precision: str = setting(
        "auto", choice(PRECISIONS), "numeric precision of training and the per-epoch "
        "evaluation: `auto` = bf16 autocast on CUDA, fp32 on the CPU; the final evaluation is "
        "always fp32", spec="train.precision")
    memory_format: str = setting(
        "auto", choice(MEMORY_FORMATS), "image memory layout: `auto` = channels_last for "
        "convolutional models on CUDA, else contiguous", spec="train.memory_format",
        changes_weights=False)
    compile: str = setting(
        "none", choice(COMPILE_MODES), "`torch.compile` mode of the training forward passes "
        "(`none`: eager)", spec="train.compile", changes_weights=False)
    # -- evaluation (the spec's `eval:` section, and the eval subset in `dataset:`)
    eval_attack_steps: int = setting(20, integer(1), "PGD steps of the per-epoch robust "
                                     "accuracy (`eval/robust_acc`)", spec="eval.attack_steps",
                                     changes_weights=False)
    eval_size: int | None = setting(
        None, integer(1, optional=True), "size of the fixed, seeded evaluation subset of the "
        "test split; null = all of it", spec="dataset.eval_size", changes_weights=False)
    eval_seed: int = setting(0, integer(0), "picks that subset (the same for every model of a "
                             "sweep)", spec="dataset.eval_seed", changes_weights=False)
    min_clean_acc: float | None = setting(
        None, number(0, 1, optional=True), "a trial whose final clean accuracy is below this is "
        "tagged under-trained in MLflow (`unisweep.undertrained`) and left out of the analysis, "
        "with the reason; null: no check", spec="eval.min_clean_acc", changes_weights=False)
    final_eval_steps: int = setting(50, integer(1), "PGD steps of the final evaluation "
                                    "(`final/robust_acc`)", spec="eval.final_steps",
                                    changes_weights=False)
    final_eval_restarts: int = setting(3, integer(1), "random restarts of the final evaluation "
                                       "(a sample counts only if it survives all)",
                                       spec="eval.restarts", changes_weights=False)
    extra_eval_eps: tuple[float, ...] = setting(
        (), numbers(0), "more epsilons (same threat model) evaluated at the end: "
        "`final/robust_acc_at_<eps>`", spec="eval.extra_eps", changes_weights=False)
    # -- how to run (a sweep sets num_threads from `resources.cpu`)
    num_threads: int | None = setting(None, integer(1, optional=True), "torch threads (null: "
                                      "torch's default)", changes_weights=False)
    num_workers: int = setting(0, integer(0), "DataLoader worker processes (folder datasets)",
                               spec="dataset.num_workers", changes_weights=False)
    device: str = setting("auto", choice(DEVICES), "`auto`: the first CUDA device if there is "
                          "one, else the CPU", changes_weights=False)

    def __post_init__(self) -> None:
        for name, s in SETTINGS.items():  # normalised types (int -> float, list -> tuple)
            object.__setattr__(self, name, check(name, getattr(self, name), s.rule))
        check_set_sizes(self.dataset, n_train=self.n_train, n_test=self.n_test)
        if self.threat_model == "linf":
            check("eps", self.eps, _LINF_EPS)
            for i, e in enumerate(self.extra_eval_eps):
                check(f"extra_eval_eps[{i}]", e, _LINF_EPS)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a plain dict (YAML/Tune config); unknown keys are errors."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"train config must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - set(SETTINGS))
        if unknown:
            raise ConfigError(f"unknown train config keys {unknown}; allowed: {list(SETTINGS)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples as lists); `from_dict(to_dict())` round-trips."""
        d = dataclasses.asdict(self)
        d["extra_eval_eps"] = list(self.extra_eval_eps)
        return d

    def weights_differ(self, other: Mapping[str, Any]) -> list[str]:
        """The settings that change the trained weights and differ in ``other`` (a `to_dict`)."""
        mine = self.to_dict()
        return sorted(k for k, s in SETTINGS.items()
                      if s.changes_weights and other.get(k) != mine[k])


SETTINGS: dict[str, Setting] = settings_of(TrainConfig)


def check_set_sizes(dataset: str, *, n_train: int | None, n_test: int | None,
                    prefix: str = "") -> None:
    """Set sizes are for generated datasets only: refuse a size given for any other dataset.

    Each size's own range is its declared rule (``integer(1, MAX_GENERATED_IMAGES)``).

    Raises:
        ConfigError: ``<prefix>n_train=100 applies only to generated datasets ['shapes'], ...``.
    """
    if dataset in GENERATED_DATASETS:
        return
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if value is not None:
            raise ConfigError(f"{prefix}{name}={value!r} applies only to generated datasets "
                              f"{list(GENERATED_DATASETS)}, not to dataset {dataset!r}; "
                              f"allowed: null")

# A spec-only setting: how the spec's train.attack_step_size becomes TrainConfig.attack_step_size.
ATTACK_STEP_RULE = Setting(
    "auto", choice(STEP_RULES), "how `attack_step_size` is read: `auto`: step = 2.5 * eps / "
    "attack_steps; `relative`: step = attack_step_size * eps; `absolute`: step = "
    "attack_step_size", spec="train.attack_step_rule")


def spec_settings(section: str) -> dict[str, Setting]:
    """Spec key -> `Setting` of one spec section (``dataset``, ``train``, ``eval``)."""
    out = {s.spec.split(".", 1)[1]: s for s in (*SETTINGS.values(), ATTACK_STEP_RULE)
           if s.spec is not None and s.spec.split(".", 1)[0] == section}
    if not out:
        raise ValueError(f"no settings in spec section {section!r}")
    return out


def attack_step_size(rule: str, size: float | None, eps: float) -> float | None:
    """The absolute PGD step (None: `auto`) for the spec's ``attack_step_rule`` and size."""
    if rule == "auto" or eps == 0:
        return None
    if rule == "relative":
        return float(size) * eps
    if rule == "absolute":
        return float(size)
    raise ConfigError(f"train.attack_step_rule={rule!r} is not allowed; allowed: "
                      f"{', '.join(STEP_RULES)}")


def from_spec_sections(sections: Mapping[str, Mapping[str, Any]], *, eps: float) -> dict[str, Any]:
    """`TrainConfig` arguments from a spec's validated sections, for a cell at ``eps``.

    Args:
        sections: ``{"dataset": {...}, "train": {...}, "eval": {...}}``, spec key -> value (as
            `sweeps.spec.SweepSpec.to_dict` writes them).
        eps: the cell's epsilon (``train.attack_step_rule`` may scale the step by it).

    Returns:
        Every setting that a spec section sets; the grid cell's own fields (arch, width,
        threat_model, eps, seed) and num_threads are the caller's to add.

    Raises:
        ConfigError: a section holds a key no setting declares.
    """
    for section, values in sections.items():
        unknown = sorted(set(values) - set(spec_settings(section)))
        if unknown:
            raise ConfigError(f"unknown {section} keys {unknown}; allowed: "
                              f"{sorted(spec_settings(section))}")
    out = {}
    for name, s in SETTINGS.items():
        if s.spec is not None:
            section, key = s.spec.split(".", 1)
            # A trial config stored by an older unisweep lacks settings declared since: a new
            # setting's default keeps the old behaviour, so resuming such a sweep takes it.
            given = sections.get(section, {})
            out[name] = given[key] if key in given or s.required else s.default
    rule = sections.get("train", {}).get("attack_step_rule", ATTACK_STEP_RULE.default)
    out["attack_step_size"] = attack_step_size(rule, out["attack_step_size"], eps)
    return out


_BLOCK = re.compile(r"(<!-- settings: (\w+) -->\n).*?(<!-- /settings -->)", re.S)


def render_reference(text: str) -> str:
    """``text`` with each ``<!-- settings: SECTION -->`` ... ``<!-- /settings -->`` block of
    docs/spec-reference.md replaced by that section's table, generated from the declarations."""
    return _BLOCK.sub(lambda m: f"{m[1]}{markdown_table(spec_settings(m[2]))}\n{m[3]}", text)


if __name__ == "__main__":  # python -m trainables.config docs/spec-reference.md
    for name in sys.argv[1:]:
        doc = Path(name)
        doc.write_text(render_reference(doc.read_text()))
