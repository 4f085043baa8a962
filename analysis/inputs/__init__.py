"""What the analysis runs every model on: the sweep's models and their inputs.

- ``discovery``: the sweep's finished models as ``ModelRef`` records, found in MLflow;
  ``load_model`` rebuilds one from its checkpoint; ``epochs``: the models at chosen training
  epochs (the checkpoints logged during training);
- ``base``: the contracts ``EvalSet`` and ``InputSet``; ``eval_set``: loading each dataset's fixed
  evaluation subset and refusing models evaluated on other inputs;
- ``sets``: the ``clean``, ``adv``, ``adv_shared`` and ``train_split`` input sets;
  ``inversion``: image inversion and the ``inverted`` input set; ``registry``: the sets by name;
- ``extract``: every model's features, logits and probabilities on every input array, cached.
"""

from __future__ import annotations

from analysis.inputs.base import EvalSet, InputSet, array_hash
from analysis.inputs.discovery import (
    Discovery,
    ModelRef,
    SkippedRun,
    discover_models,
    download_checkpoint,
    load_model,
    models_frame,
    quiet_downloads,
)
from analysis.inputs.epochs import Epochs, at_epochs, parse_epochs
from analysis.inputs.eval_set import check_data_hash, load_eval_set, load_eval_sets
from analysis.inputs.extract import LAYER, ArtifactCache, Block, extract_all, forward_artifacts
from analysis.inputs.inversion import (
    InversionConfig,
    InversionResult,
    InvertedInputs,
    invert,
    invert_on_ray,
    pair_seeds_and_targets,
    representation_loss,
)
from analysis.inputs.registry import (
    INPUT_SETS,
    input_set_class,
    input_set_options,
    make_input_set,
    parse_input_set,
    register_input_set,
)
from analysis.inputs.sets import (
    CleanInputs,
    OwnAdversarialInputs,
    SharedAdversarialInputs,
    TrainSplitInputs,
)

__all__ = [
    # discovery
    "ModelRef", "SkippedRun", "Discovery", "discover_models", "load_model",
    "download_checkpoint", "models_frame", "quiet_downloads", "Epochs", "at_epochs",
    "parse_epochs",
    # eval set and input sets
    "EvalSet", "InputSet", "array_hash", "load_eval_set", "load_eval_sets", "check_data_hash",
    "CleanInputs", "OwnAdversarialInputs", "SharedAdversarialInputs", "TrainSplitInputs",
    "InvertedInputs", "INPUT_SETS", "register_input_set", "input_set_class",
    "input_set_options", "make_input_set", "parse_input_set",
    # inversion
    "InversionConfig", "InversionResult", "pair_seeds_and_targets", "representation_loss",
    "invert", "invert_on_ray",
    # extraction
    "LAYER", "Block", "forward_artifacts", "ArtifactCache", "extract_all",
]
