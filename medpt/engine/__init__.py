"""The small Dassl-compatible engine: registries, config, data, optimisation, trainers."""
from .config import ConfigError, build_config, get_cfg_default
from .data import DataManager, DatasetBase, Datum, ImageReadError, build_transform
from .evaluator import Classification, build_evaluator
from .optim import build_lr_scheduler, build_optimizer
from .registry import DATASET_REGISTRY, EVALUATOR_REGISTRY, TRAINER_REGISTRY, Registry
from .trainer import SimpleTrainer, TrainerBase, TrainerX, set_random_seed

__all__ = [
    "ConfigError", "build_config", "get_cfg_default", "DataManager", "DatasetBase", "Datum", "ImageReadError",
    "build_transform", "Classification", "build_evaluator", "build_lr_scheduler", "build_optimizer",
    "DATASET_REGISTRY", "EVALUATOR_REGISTRY", "TRAINER_REGISTRY", "Registry", "SimpleTrainer", "TrainerBase",
    "TrainerX", "set_random_seed",
]
