"""What one trial does: data, models, attacks, training, checkpoints (no Ray beyond the trial glue).

Public names are re-exported lazily (PEP 562), so `import trainables.errors` stays cheap and
`python -m trainables.train` does not import its own module twice.
"""

from __future__ import annotations

import importlib

from trainables.errors import CheckpointError, ConfigError, DataError, UserError

_EXPORTS = {
    "DatasetBundle": "data", "TensorImageDataset": "data", "load_dataset": "data",
    "generate_shapes": "shapes",
    "MODELS": "models", "ModelEntry": "models", "UniModel": "models", "build_model": "models",
    "register_model": "models",
    "pgd": "attacks", "fgsm_rs": "attacks", "robust_accuracy": "attacks",
    "save_checkpoint": "checkpoints", "load_checkpoint": "checkpoints",
    "load_train_state": "checkpoints",
    "TrainConfig": "config", "DATASETS": "config",
    "TrainResult": "train", "train_model": "train",
    "run_trial": "trial",
}

__all__ = ["UserError", "ConfigError", "DataError", "CheckpointError", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"trainables.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'trainables' has no attribute {name!r}")
