"""Training: ``train(dataset_dir, model, ...)`` → a run folder with metrics and checkpoints."""

from intentrec.training.config import TrainerConfig
from intentrec.training.run import RunDir, TrainedRun, evaluate_run, load_run
from intentrec.training.trainer import PAPER_MODE_SELECTION, TrainResult, train

__all__ = [
    "PAPER_MODE_SELECTION",
    "RunDir",
    "TrainResult",
    "TrainedRun",
    "evaluate_run",
    "TrainerConfig",
    "load_run",
    "train",
]
