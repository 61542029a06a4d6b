"""yacs configuration with Dassl's key names, and the merge order every run goes through.

Source: ``KaiyangZhou/Dassl.pytorch:dassl/config/defaults.py`` for the key names and defaults,
``KaiyangZhou/CoOp:train.py`` (``setup_cfg``/``extend_cfg``) for the merge order.

Merge order (later wins)::

    defaults (this file)
    -> the trainer's own defaults, declared beside the trainer (``cfg.TRAINER.<KEY>``)
    -> dataset yaml          (configs/datasets/<dataset>.yaml)
    -> trainer yaml          (configs/trainers/<Trainer>/<name>.yaml)
    -> protocol yaml         (configs/protocols/<protocol>.yaml; a command-line choice)
    -> command-line values   (--root, --output-dir, --seed, --backbone, --weights)
    -> trailing KEY VALUE opts
    -> freeze

Keys added beyond Dassl: ``PROTOCOL``, ``DATASET.SPLIT_FILE``,
``MODEL.BACKBONE.{PRETRAINED, ALLOW_RANDOM_INIT, INIT_SEED}``,
``MODEL.FEATURE_CACHE.{ENABLED, DIR, NUM_VIEWS, VIEW_SEED}``.
An unknown key anywhere raises :class:`ConfigError` naming the file (or the command-line
option) and the closest known keys.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from yacs.config import CfgNode as CN

#: CLIP's image normalisation (OpenAI), used by every method in the suite.
CLIP_PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)

#: Where the shipped yaml files live (inside the package, so a non-editable install has them).
CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration file or option is wrong; the message names it and says how to fix it."""


def get_cfg_default() -> CN:
    """Dassl's default config tree (the keys this suite uses), plus the suite's additions.

    Returns:
        An unfrozen :class:`yacs.config.CfgNode`.
    """
    _C = CN()
    _C.VERSION = 1
    _C.OUTPUT_DIR = "./output"
    _C.RESUME = ""
    _C.SEED = -1
    _C.USE_CUDA = True
    _C.VERBOSE = True
    # Suite: "paper" | "official" | "demo" | "custom". "paper" never runs on random weights.
    _C.PROTOCOL = "paper"

    _C.INPUT = CN()
    _C.INPUT.SIZE = (224, 224)
    _C.INPUT.INTERPOLATION = "bicubic"
    _C.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
    _C.INPUT.NO_TRANSFORM = False
    _C.INPUT.PIXEL_MEAN = CLIP_PIXEL_MEAN
    _C.INPUT.PIXEL_STD = CLIP_PIXEL_STD
    _C.INPUT.RRCROP_SCALE = (0.08, 1.0)

    _C.DATASET = CN()
    _C.DATASET.ROOT = ""
    _C.DATASET.NAME = ""
    _C.DATASET.NUM_SHOTS = -1
    # Suite: fraction of the labelled training data to keep (paper data-efficiency study: 0.1, 0.3).
    _C.DATASET.LABEL_RATIO = 1.0
    _C.DATASET.SUBSAMPLE_CLASSES = "all"
    # A user's own split file (JSON, CoOp format); empty = the reader's default split.
    _C.DATASET.SPLIT_FILE = ""

    _C.DATALOADER = CN()
    _C.DATALOADER.NUM_WORKERS = 4
    _C.DATALOADER.TRAIN_X = CN()
    _C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
    _C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
    _C.DATALOADER.TEST = CN()
    _C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
    _C.DATALOADER.TEST.BATCH_SIZE = 100

    _C.MODEL = CN()
    _C.MODEL.INIT_WEIGHTS = ""
    _C.MODEL.BACKBONE = CN()
    # Any open_clip model name. OpenAI's ViT-B/16 uses QuickGELU, hence the -quickgelu config.
    _C.MODEL.BACKBONE.NAME = "ViT-B-16-quickgelu"
    # An open_clip pretrained tag ("openai"), a local checkpoint path, or "" for random init.
    _C.MODEL.BACKBONE.PRETRAINED = "openai"
    # Only the demo protocol sets this: fall back to a seeded random-init backbone, loudly.
    _C.MODEL.BACKBONE.ALLOW_RANDOM_INIT = False
    _C.MODEL.BACKBONE.INIT_SEED = 0
    # Suite: shared cache of frozen, unprompted image features (medpt/clip/feature_cache.py),
    # used by trainers built on medpt/trainers/_frozen.py. DIR "" = $MEDPT_FEATURE_CACHE or
    # ~/.cache/medpt/features. NUM_VIEWS 0: random-augmented training images are encoded live
    # (exact protocol; test/val and deterministic training features are still cached);
    # V > 0: a bank of V augmented views per training image, one drawn per epoch (a documented
    # protocol deviation). VIEW_SEED -1: the run's SEED (a fixed value shares banks across seeds).
    _C.MODEL.FEATURE_CACHE = CN()
    _C.MODEL.FEATURE_CACHE.ENABLED = True
    _C.MODEL.FEATURE_CACHE.DIR = ""
    _C.MODEL.FEATURE_CACHE.NUM_VIEWS = 0
    _C.MODEL.FEATURE_CACHE.VIEW_SEED = -1

    _C.OPTIM = CN()
    _C.OPTIM.NAME = "sgd"
    _C.OPTIM.LR = 0.0003
    _C.OPTIM.WEIGHT_DECAY = 5e-4
    _C.OPTIM.MOMENTUM = 0.9
    _C.OPTIM.SGD_DAMPNING = 0.0
    _C.OPTIM.SGD_NESTEROV = False
    _C.OPTIM.RMSPROP_ALPHA = 0.99
    _C.OPTIM.ADAM_BETA1 = 0.9
    _C.OPTIM.ADAM_BETA2 = 0.999
    _C.OPTIM.EPS = 1e-8
    _C.OPTIM.LR_SCHEDULER = "single_step"
    _C.OPTIM.STEPSIZE = (-1,)
    _C.OPTIM.GAMMA = 0.1
    _C.OPTIM.MAX_EPOCH = 10
    _C.OPTIM.WARMUP_EPOCH = -1
    _C.OPTIM.WARMUP_TYPE = "linear"
    _C.OPTIM.WARMUP_CONS_LR = 1e-5
    _C.OPTIM.WARMUP_MIN_LR = 1e-5
    _C.OPTIM.WARMUP_RECOUNT = True

    _C.TRAIN = CN()
    # Dassl's default is 0 (only the last epoch); the suite checkpoints every epoch so that a
    # killed run resumes. Only the latest checkpoint is kept.
    _C.TRAIN.CHECKPOINT_FREQ = 1
    _C.TRAIN.PRINT_FREQ = 10

    _C.TEST = CN()
    _C.TEST.EVALUATOR = "Classification"
    _C.TEST.PER_CLASS_RESULT = True
    _C.TEST.COMPUTE_CMAT = True
    _C.TEST.NO_TEST = False
    _C.TEST.SPLIT = "test"
    _C.TEST.FINAL_MODEL = "last_step"

    _C.TRAINER = CN()
    _C.TRAINER.NAME = ""
    return _C


def _all_keys(node: CN, prefix: str = "") -> List[str]:
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, CN):
            keys.extend(_all_keys(v, full + "."))
    return keys


def _explain(cfg: CN, err: Exception, source: str) -> ConfigError:
    msg = str(err).strip("'\"")
    if "Non-existent config key" in msg or "Non-existent key" in msg:
        key = msg.split(":", 1)[1].strip()
        close = difflib.get_close_matches(key, _all_keys(cfg), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return ConfigError(
            f"{source}: unknown config key '{key}'.{hint} Keys of a trainer live under "
            f"TRAINER.<NAME> and exist only when that trainer is selected."
        )
    return ConfigError(f"{source}: {msg}")


def merge_file(cfg: CN, path: Path | str) -> None:
    """Merge a yaml file into ``cfg``.

    Raises:
        FileNotFoundError: the file does not exist (the path is in the message).
        ConfigError: an unknown key or a value of the wrong type; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found: {path}")
    try:
        cfg.merge_from_file(str(path))
    except (KeyError, ValueError, AssertionError) as err:
        raise _explain(cfg, err, f"config file {path}") from None


def merge_opts(cfg: CN, opts: Sequence[str], source: str = "command-line opts") -> None:
    """Merge trailing ``KEY VALUE`` pairs into ``cfg``.

    Raises:
        ConfigError: odd number of items, unknown key or wrong type.
    """
    opts = list(opts or [])
    if len(opts) % 2:
        raise ConfigError(f"{source}: expected KEY VALUE pairs, got an odd number of items: {opts}")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, AssertionError) as err:
        raise _explain(cfg, err, source) from None


def find_dataset_config(name: str) -> Optional[Path]:
    """``configs/datasets/<name>.yaml`` if it exists (``name`` lower-cased), else ``None``."""
    p = CONFIG_ROOT / "datasets" / f"{name.lower()}.yaml"
    return p if p.is_file() else None


def find_trainer_config(trainer: str, variant: str = "vit_b16") -> Optional[Path]:
    """``configs/trainers/<Trainer>/<variant>.yaml`` (folder name case-insensitive), else ``None``."""
    base = CONFIG_ROOT / "trainers"
    if base.is_dir():
        for d in base.iterdir():
            if d.is_dir() and d.name.lower() == trainer.lower():
                p = d / f"{variant}.yaml"
                return p if p.is_file() else None
    return None


def find_protocol_config(protocol: str) -> Path:
    """``configs/protocols/<protocol>.yaml``.

    Raises:
        ConfigError: no such protocol; lists the shipped ones.
    """
    p = CONFIG_ROOT / "protocols" / f"{protocol}.yaml"
    if not p.is_file():
        known = sorted(x.stem for x in (CONFIG_ROOT / "protocols").glob("*.yaml"))
        raise ConfigError(f"Unknown protocol '{protocol}'. Known protocols: {', '.join(known)}.")
    return p


def build_config(
    trainer: str,
    dataset: Optional[str] = None,
    *,
    protocol: Optional[str] = None,
    trainer_config: Optional[str | Path] = None,
    dataset_config: Optional[str | Path] = None,
    root: Optional[str] = None,
    output_dir: Optional[str] = None,
    seed: Optional[int] = None,
    backbone: Optional[str] = None,
    weights: Optional[str] = None,
    opts: Iterable[str] = (),
    freeze: bool = True,
) -> CN:
    """Build a run's config in the documented merge order.

    Args:
        trainer: registered trainer name (case-insensitive), e.g. ``"coop"``.
        dataset: registered dataset name; its ``configs/datasets/<name>.yaml`` is merged if shipped.
        protocol: ``"paper"``, ``"official"``, ``"demo"`` ...; ``None`` merges no protocol file.
        trainer_config: a yaml path, or a variant name under ``configs/trainers/<Trainer>/``
            (default ``vit_b16`` when it exists).
        dataset_config: a yaml path overriding the shipped dataset yaml.
        root, output_dir, seed, backbone, weights: command-line values.
        opts: trailing ``KEY VALUE`` pairs.
        freeze: freeze the result.

    Returns:
        The resolved :class:`CfgNode`.

    Raises:
        KeyError: unknown trainer or dataset (with close matches).
        ConfigError / FileNotFoundError: see :func:`merge_file`, :func:`merge_opts`.
    """
    from .registry import DATASET_REGISTRY, TRAINER_REGISTRY
    from .. import trainers as _trainers  # noqa: F401  (registers trainers)
    from .. import datasets as _datasets  # noqa: F401  (registers datasets)

    tcls = TRAINER_REGISTRY.get(trainer)
    cfg = get_cfg_default()
    cfg.TRAINER.NAME = TRAINER_REGISTRY.canonical(trainer)
    key = getattr(tcls, "CONFIG_KEY", None)
    if key:
        cfg.TRAINER[key] = tcls.config_defaults()

    if dataset is not None:
        DATASET_REGISTRY.get(dataset)
        cfg.DATASET.NAME = DATASET_REGISTRY.canonical(dataset)
        dpath = Path(dataset_config) if dataset_config else find_dataset_config(cfg.DATASET.NAME)
        if dpath is not None:
            merge_file(cfg, dpath)
            cfg.DATASET.NAME = DATASET_REGISTRY.canonical(dataset)

    if trainer_config is not None and (str(trainer_config).endswith((".yaml", ".yml")) or Path(str(trainer_config)).is_file()):
        merge_file(cfg, trainer_config)
    else:
        variant = str(trainer_config) if trainer_config else "vit_b16"
        tpath = find_trainer_config(cfg.TRAINER.NAME, variant)
        if tpath is None and trainer_config:
            raise FileNotFoundError(
                f"No trainer config '{variant}' for {cfg.TRAINER.NAME} under {CONFIG_ROOT / 'trainers'}"
            )
        if tpath is not None:
            merge_file(cfg, tpath)

    if protocol:
        merge_file(cfg, find_protocol_config(protocol))
        cfg.PROTOCOL = protocol

    if root is not None:
        cfg.DATASET.ROOT = str(root)
    if output_dir is not None:
        cfg.OUTPUT_DIR = str(output_dir)
    if seed is not None:
        cfg.SEED = int(seed)
    if backbone is not None:
        cfg.MODEL.BACKBONE.NAME = backbone
    if weights is not None:
        cfg.MODEL.BACKBONE.PRETRAINED = weights

    merge_opts(cfg, list(opts))
    if cfg.PROTOCOL == "paper" and cfg.MODEL.BACKBONE.ALLOW_RANDOM_INIT:
        raise ConfigError(
            "MODEL.BACKBONE.ALLOW_RANDOM_INIT is True under the 'paper' protocol: paper results are "
            "never computed on random weights. Use --protocol demo for a plumbing run."
        )
    if freeze:
        cfg.freeze()
    return cfg
