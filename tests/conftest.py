"""Shared fixtures: the tiny open_clip CLIP (random init, seeded) and small configs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medpt.clip import TINY_CLIP, load_clip
from medpt.engine import build_config

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: opts that put a run on the tiny CLIP (32 px input).
TINY_OPTS = ["MODEL.BACKBONE.NAME", TINY_CLIP, "MODEL.BACKBONE.PRETRAINED", "",
             "MODEL.BACKBONE.ALLOW_RANDOM_INIT", "True", "INPUT.SIZE", "(32, 32)",
             "DATALOADER.NUM_WORKERS", "0", "VERBOSE", "False",
             # tests see exact (uncached-equivalent) training unless they ask for the view bank
             "MODEL.FEATURE_CACHE.NUM_VIEWS", "0", "MODEL.FEATURE_CACHE.VIEW_SEED", "-1"]


@pytest.fixture(autouse=True, scope="session")
def _isolated_feature_cache(tmp_path_factory):
    """Tests never write to the user's feature cache (~/.cache/medpt/features)."""
    import os

    old = os.environ.get("MEDPT_FEATURE_CACHE")
    os.environ["MEDPT_FEATURE_CACHE"] = str(tmp_path_factory.mktemp("feature_cache"))
    yield
    if old is None:
        os.environ.pop("MEDPT_FEATURE_CACHE", None)
    else:
        os.environ["MEDPT_FEATURE_CACHE"] = old


@pytest.fixture(autouse=True)
def _threads():
    """One intra-op thread: the tiny CLIP's ops are microseconds long, and with two threads every
    op waits on an OpenMP barrier that stalls for a scheduler time slice whenever the other core
    is busy (seen: 0.7 ms vs 215 ms per tiny forward)."""
    torch.set_num_threads(1)
    yield


@pytest.fixture
def tiny_clip():
    """A fresh tiny CLIP backbone (seeded random init), frozen, fp32."""
    return load_clip(TINY_CLIP, "", allow_random_init=True, init_seed=0)


def tiny_cfg(trainer: str, dataset: str = "pneumonia_sample", *, output_dir, opts=(), protocol="demo", seed=1):
    """A frozen config for ``trainer`` on the tiny CLIP."""
    return build_config(trainer, dataset, protocol=protocol, seed=seed, output_dir=str(output_dir),
                        opts=TINY_OPTS + list(opts))


@pytest.fixture(scope="session")
def vit_b16_meta():
    """OpenAI-shaped ViT-B/16 CLIP on the meta device (shapes only, no memory, no weights).

    Build with ``open_clip.create_model(..., device="meta")`` inside ``torch.device("meta")``.
    Returns ``(model, tokenizer)``.
    """
    import open_clip

    with torch.device("meta"):
        model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None, device="meta")
    return model, open_clip.get_tokenizer("ViT-B-16-quickgelu")
