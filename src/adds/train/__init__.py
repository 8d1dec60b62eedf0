"""Training ADDS heads: typed run configs, the trainer, EMA and torchrun/DDP plumbing (``adds train``).

The library itself (``adds.model``, ``adds.towers``, ...) imports nothing from here; this package is what the
``adds train`` command and users' own training scripts use::

    from adds.train import load_config, run_training
    result = run_training(load_config("configs/coco_vitl14_224.yaml", ["data.train.root=/data/coco"]))
"""

from adds.train.checkpoint import TrainingStateError
from adds.train.config import (
    DataConfig,
    EMAConfig,
    OptimConfig,
    SLSConfig,
    TrainConfig,
    load_config,
    paper_learning_rate,
)
from adds.train.loop import Trainer, TrainResult
from adds.train.run import run_training

__all__ = [
    "DataConfig",
    "EMAConfig",
    "OptimConfig",
    "SLSConfig",
    "TrainConfig",
    "Trainer",
    "TrainResult",
    "TrainingStateError",
    "load_config",
    "paper_learning_rate",
    "run_training",
]
