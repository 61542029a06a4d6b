"""CLIP backbones through open_clip: pretrained tags, local checkpoints, and loud random init.

What ``MODEL.BACKBONE.PRETRAINED`` may be:

* an open_clip pretrained tag (``"openai"``, the default, with ``NAME: ViT-B-16-quickgelu``:
  OpenAI's ViT-B/16 as every method's official code uses);
* a path to a local checkpoint: an open_clip/OpenAI ``.pt``/``.pth``/``.bin`` state dict, an
  OpenAI JIT archive, or a ``.safetensors`` file (loaded strictly by open_clip);
* ``""`` / ``"none"`` / ``"random"``: a seeded random initialisation, allowed only with
  ``MODEL.BACKBONE.ALLOW_RANDOM_INIT`` (the ``demo`` protocol).

When a tag cannot be downloaded (no network) the ``paper`` protocol stops with
:class:`WeightsUnavailableError`; with ``ALLOW_RANDOM_INIT`` the backbone is built from seed
``MODEL.BACKBONE.INIT_SEED`` and :data:`RANDOM_INIT_WARNING` is printed and recorded.

Every parameter of the returned model is frozen (``requires_grad=False``) and it is in eval
mode; methods unfreeze what they train.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import open_clip
import torch
from torch import nn

log = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)

#: The tiny CLIP used by the tests (same classes as ViT-B/16: 2 layers, width 64, 32 px input).
TINY_CLIP = "medpt-tiny-clip"

RANDOM_INIT_WARNING = (
    "RANDOM-INIT BACKBONE: this run uses a seeded random initialisation of the CLIP backbone, "
    "not pretrained weights. Its numbers measure the plumbing only and say nothing about any "
    "method. Pass --weights /path/to/checkpoint (or run where open_clip can download them) "
    "for real results."
)

_RANDOM_NAMES = {"", "none", "random", "random-init"}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for and could not be loaded."""


@dataclass
class ClipBackbone:
    """A loaded CLIP model and what identifies it.

    Attributes:
        model: the open_clip ``CLIP`` module (fp32, eval, frozen).
        tokenizer: open_clip tokenizer: ``list[str] -> LongTensor [N, context_length]``.
        name: open_clip model name.
        weights_id: ``"<tag>"``, ``"file:<name>:sha256=<first 16 hex>"`` or
            ``"random-init:seed=<s>"``.
        pretrained: False for a random initialisation.
        warnings: messages to carry into run records and tables.
    """

    model: nn.Module
    tokenizer: Callable
    name: str
    weights_id: str
    pretrained: bool
    warnings: list = field(default_factory=list)

    @property
    def embed_dim(self) -> int:
        """Joint embedding width (512 for ViT-B/16)."""
        return int(self.model.text_projection.shape[1]) if not isinstance(
            self.model.text_projection, nn.Linear) else int(self.model.text_projection.out_features)

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)


def _file_id(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"file:{path.name}:sha256={h.hexdigest()[:16]}"


def _finish(model: nn.Module) -> nn.Module:
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


_CACHE: dict = {}


def load_clip(name: str = "ViT-B-16-quickgelu", pretrained: str = "openai", *,
              allow_random_init: bool = False, init_seed: int = 0, device: str | torch.device = "cpu",
              cache: bool = True) -> ClipBackbone:
    """Load an open_clip model.

    Args:
        name: any open_clip model name (``open_clip.list_models()``), or :data:`TINY_CLIP`.
        pretrained: a tag, a local checkpoint path, or ``""`` for random init (see module doc).
        allow_random_init: fall back to a seeded random init when the weights cannot be had.
        init_seed: seed of the random initialisation.
        device: where to put the model.
        cache: keep one loaded copy in memory and hand out deep copies (a grid of runs in one
            process builds the backbone once).

    Returns:
        A :class:`ClipBackbone`.

    Raises:
        KeyError: unknown model name (lists close open_clip names).
        FileNotFoundError: ``pretrained`` looks like a path and no file is there. Never falls
            back to random weights, even when ``allow_random_init`` is set.
        WeightsUnavailableError: a tag could not be loaded and random init is not allowed, or
            random init was asked for explicitly without ``allow_random_init``.
    """
    if name.startswith(("hf-hub:", "local-dir:")):
        return _load_schema(name, device)
    if name not in open_clip.list_models():
        import difflib

        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        raise KeyError(f"Unknown open_clip model '{name}'. Close names: {close}. "
                       "See open_clip.list_models().")
    pretrained = (pretrained or "").strip()
    key = (name, pretrained, allow_random_init, init_seed)
    if cache and key in _CACHE:
        b = _CACHE[key]
        out = ClipBackbone(copy.deepcopy(b.model).to(device), b.tokenizer, b.name, b.weights_id,
                           b.pretrained, list(b.warnings))
        if not out.pretrained:
            _warn_loudly()
        return out

    tokenizer = open_clip.get_tokenizer(name)
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained.lower() in _RANDOM_NAMES:
        if not allow_random_init:
            raise WeightsUnavailableError(
                f"MODEL.BACKBONE.PRETRAINED is empty (random init) but random weights are not allowed "
                f"under this protocol. Give a pretrained tag or checkpoint path, or use --protocol demo.")
        bb = _random_backbone(name, tokenizer, init_seed, reason="random init requested")
    elif pretrained not in tags:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"Backbone weights file not found: {path}. Set MODEL.BACKBONE.PRETRAINED (or --weights) "
                f"to an existing open_clip/OpenAI checkpoint for model '{name}', or to one of its "
                f"open_clip tags: {tags or '(none)'}.")
        try:
            model = open_clip.create_model(name, pretrained=str(path))
        except Exception as err:
            raise WeightsUnavailableError(
                f"Could not load checkpoint {path} into open_clip model '{name}': {err}") from err
        bb = ClipBackbone(_finish(model), tokenizer, name, _file_id(path), True)
    else:
        try:
            with _hub_offline_if_unreachable():
                model = open_clip.create_model(name, pretrained=pretrained)
            bb = ClipBackbone(_finish(model), tokenizer, name, pretrained, True)
        except Exception as err:
            if not allow_random_init:
                raise WeightsUnavailableError(
                    f"Pretrained weights '{pretrained}' for '{name}' could not be loaded ({err}). "
                    f"This protocol never runs on random weights. Download the checkpoint on a machine "
                    f"with network access and pass its path with --weights PATH "
                    f"(MODEL.BACKBONE.PRETRAINED), or use --protocol demo for a plumbing run."
                ) from err
            bb = _random_backbone(name, tokenizer, init_seed, reason=f"'{pretrained}' unavailable: {err}")
    if cache:
        _CACHE.clear()
        _CACHE[key] = bb
        bb = ClipBackbone(copy.deepcopy(bb.model), bb.tokenizer, bb.name, bb.weights_id, bb.pretrained,
                          list(bb.warnings))
    bb.model.to(device)
    return bb


@contextlib.contextmanager
def _hub_offline_if_unreachable(host: str = "huggingface.co"):
    """Put huggingface_hub in offline mode while ``host`` does not resolve, so a missing network
    fails at once (cached files still load) instead of after a minute of retries."""
    try:
        import huggingface_hub.constants as hub
    except ImportError:  # pragma: no cover - open_clip depends on it
        yield
        return
    if hub.HF_HUB_OFFLINE:
        yield
        return
    try:
        socket.getaddrinfo(host, 443)
        reachable = True
    except OSError:
        reachable = False
    if reachable:
        yield
        return
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = False


def _load_schema(name: str, device) -> ClipBackbone:
    """An open_clip model named with a schema (``hf-hub:org/repo``, ``local-dir:/path``): config
    and weights come together, so there is no random-init fallback (e.g. BiomedCLIP,
    ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``).

    Raises:
        WeightsUnavailableError: the model cannot be loaded (offline, missing folder).
    """
    try:
        with _hub_offline_if_unreachable():
            model = open_clip.create_model(name)
            tokenizer = open_clip.get_tokenizer(name)
    except Exception as err:
        raise WeightsUnavailableError(
            f"Could not load '{name}' ({err}). A hf-hub: model needs network access or a populated "
            f"Hugging Face cache; a local-dir: model needs open_clip_config.json and weights in the folder."
        ) from err
    return ClipBackbone(_finish(model).to(device), tokenizer, name, name, True)


def _warn_loudly(reason: str = "") -> None:
    bar = "!" * 100
    why = f"\n(reason: {reason})" if reason else ""
    print(f"\n{bar}\n{RANDOM_INIT_WARNING}{why}\n{bar}\n", file=sys.stderr, flush=True)


def _random_backbone(name: str, tokenizer, seed: int, reason: str) -> ClipBackbone:
    log.debug("random init because %s", reason)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = open_clip.create_model(name, pretrained=None)
    finally:
        torch.random.set_rng_state(state)
    _warn_loudly(reason.splitlines()[0][:300])
    return ClipBackbone(_finish(model), tokenizer, name, f"random-init:seed={seed}", False,
                        [RANDOM_INIT_WARNING])


def build_backbone(cfg, device: str | torch.device = "cpu") -> ClipBackbone:
    """:func:`load_clip` from ``cfg.MODEL.BACKBONE``."""
    b = cfg.MODEL.BACKBONE
    return load_clip(b.NAME, b.PRETRAINED, allow_random_init=b.ALLOW_RANDOM_INIT,
                     init_seed=b.INIT_SEED, device=device)
