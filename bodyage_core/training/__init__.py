"""Training of age networks: losses, augmentation, splits, datasets, the trainer and runs."""

from bodyage_core.training.augment import AugmentConfig, augment_batch
from bodyage_core.training.data import (
    AgeDataset,
    InputSpec,
    SubjectRecord,
    records_from_arrays,
    records_from_workspace,
)
from bodyage_core.training.events import EventEmitter, Events
from bodyage_core.training.losses import LOSSES, TargetScaler, get_loss, meanvar_loss
from bodyage_core.training.splits import make_folds, random_split, split_indices
from bodyage_core.training.trainer import (
    TrainConfig,
    Trainer,
    TrainState,
    predict_arrays,
    resolve_device,
    seed_everything,
)

__all__ = [
    "LOSSES", "AgeDataset", "AugmentConfig", "EventEmitter", "Events", "InputSpec",
    "SubjectRecord", "TargetScaler", "TrainConfig", "TrainState", "Trainer", "augment_batch",
    "get_loss", "make_folds", "meanvar_loss", "predict_arrays", "random_split",
    "records_from_arrays", "records_from_workspace", "resolve_device", "seed_everything",
    "split_indices",
]
