"""CoPrompt: MaPLe prompts + residual adapters, kept consistent with frozen CLIP.

Source: Roy & Etemad, "Consistency-guided Prompt Learning for Vision-Language Models", ICLR 2024;
``ShuvenduRoy/CoPrompt:trainers/coprompt.py``, ``configs/trainers/coprompt.yaml``,
``clip/model.py`` (MaPLe blocks), ``train.py``. Spec: docs/methods.md "CoPrompt".

This module also holds the MaPLe-style prompt pieces shared with DCPL (:mod:`.dcpl`):
:class:`MaPLePrompts` (``ctx`` ``[n_ctx, D]`` from the first ``n_ctx`` tokens of ``CTX_INIT``,
``depth - 1`` deep text prompts, one :class:`medpt.clip.prompted.PromptCoupler` linear per prompt
layer mapping text prompts to vision prompts) and :class:`MaPLeCLIP` (the prompted towers of
:mod:`medpt.clip.prompted`; no encoder code is duplicated here).

Text layout (``N_CTX`` 2, ``CTX_INIT`` "a photo of a"): ``[SOS][ctx1][ctx2] of a <class> . [EOT]``;
before text blocks ``1 .. depth - 1`` positions ``1..2`` are replaced by the deep text prompts.
Vision: ``coupler_0(ctx)`` (2 tokens ``[2, 768]``) appended after the patch tokens; before blocks
``1 .. depth - 1`` they are replaced by ``coupler_i(deep_text_i)``.

CoPrompt forward: ``F = 0.1 A_img(F) + 0.9 F``, ``T = 0.2 A_txt(T) + 0.8 T`` (adapters
``Linear(512, 128, no bias) -> ReLU -> Linear(128, 512, no bias) -> ReLU``), both normalised,
logits ``s F T^T`` (``s`` = the backbone's ``exp(logit_scale)``). Training loss
``CE + W * L_cons`` with ``L_cons = (1 - mean_c cos(T_c, T^_c)) + (1 - mean_b cos(F_b, F^_b))``:
``T^`` the frozen-CLIP features of one randomly drawn LLM description per class (the same draw
index ``k`` for every class, per step), ``F^`` the frozen-CLIP features of a second, independently
augmented view of each image. ``DISTILL: "mse"`` uses the mean squared error instead.

Trainable at ViT-B/16 (depth 9, 2 ctx): MaPLe 3,555,072 + two adapters 2 x 131,072 = 3,817,216,
independent of the class count. ``PROMPT_DEPTH`` 12: 5,002,240. ``USE_ADAPTERS False`` +
``PROMPT_DEPTH`` 12: 4,740,096 (the CILMP paper's "4.7M", see ``vit_b16_cilmp.yaml``).

Deliberate differences from the official code:

* fp32 master weights; ``PREC: amp`` = bf16 autocast on CUDA (official: fp16 CLIP and prompts);
* descriptions come from :mod:`medpt.knowledge` (``class_knowledge``; official: GPT-3 JSON files
  looked up by a per-dataset table that raises KeyError for new datasets); when classes have
  different counts (e.g. a generic fallback next to a file) all are cut to the smallest count;
* the second view is made in the trainer by reading the image again and applying the same random
  training transform (official: Dassl's ``K_TRANSFORMS 2``); with the shared feature cache and
  ``MODEL.FEATURE_CACHE.NUM_VIEWS`` > 0 (the documented bank-of-views deviation) the teacher's
  features of the second view are a random view from a bank of that transform's views, encoded
  once, instead of a fresh view encoded at every step. ``AUGMENT "randaugment"`` (default,
  as the official ``["randaugment", "normalize"]``) uses torchvision's ``RandAugment(2, 10)`` after
  a resize + centre crop for both views; ``"config"`` uses the config's ``INPUT.TRANSFORMS``;
* the unused hand-template text features of the official file are not computed;
* ``PROMPT_DEPTH 0`` (no prompts at all, ablation; the official code asserts depth >= 1) and
  ``USE_ADAPTERS`` (ablation switch) are additions;
* the per-dataset override table of the official ``trainers/constants.py`` (depth 9/12, 2/4 ctx,
  weight 0.1-8.0) is not reproduced: the yaml values apply to every dataset.
"""
from __future__ import annotations

import random
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from ..clip import clean_classname
from ..clip.prompted import PromptCoupler, PromptedTextEncoder, PromptedVisionEncoder, make_deep_prompts
from ..engine.registry import TRAINER_REGISTRY
from ..engine.trainer import ClassTextCacheMixin, TrainerX
from ..clip.feature_cache import is_random_transform
from ._frozen import FeatureBankMixin


def class_texts(dataset_id: str, classnames: Sequence[str], kind: str, path: str = "") -> list:
    """Per-class knowledge (label order) from :func:`medpt.knowledge.class_knowledge` (the one place
    these trainers depend on the knowledge package; ``kind``: ``descriptions`` / ``concepts``)."""
    from ..knowledge import class_knowledge

    return class_knowledge(dataset_id, classnames, kind, path=path or None)


# -- MaPLe pieces (shared with DCPL) ------------------------------------------------------------
class MaPLePrompts(nn.Module):
    """MaPLe's trainable prompts.

    Args:
        clip_model: open_clip CLIP (frozen; its token embedding gives the init and fixed tokens).
        tokenizer: its tokenizer (``list[str] -> [N, 77]``).
        classnames: ``C`` class names.
        n_ctx: learnable text tokens (2).
        ctx_init: init phrase; its first ``n_ctx`` tokens become ``ctx`` and the rest of the phrase
            stays fixed text (``"a photo of a"`` -> learn "a photo", keep "of a"). Empty, or fewer
            tokens than ``n_ctx``: N(0, 0.02^2) init and ``n_ctx`` placeholder words.
        depth: prompt layers (1 = input layer only); 0 = no prompt at all (plain CLIP on the fixed
            text ``"<ctx_init> <class>."``, unprompted vision).

    Attributes:
        ctx: ``[n_ctx, D]`` (absent when ``depth == 0``); ``text_deep``: ``depth - 1`` x ``[n_ctx, D]``;
        coupler: :class:`PromptCoupler` with ``depth`` ``Linear(D, W)``; buffers ``token_prefix``
        ``[C, 1, D]``, ``token_suffix`` ``[C, 77 - 1 - n_ctx, D]``, ``eot_idx`` ``[C]``.

    Raises:
        ValueError: ``depth < 0``, ``n_ctx < 1``, or a prompt longer than the context.
    """

    def __init__(self, clip_model: nn.Module, tokenizer, classnames: Sequence[str], n_ctx: int = 2,
                 ctx_init: str = "a photo of a", depth: int = 9):
        super().__init__()
        if depth < 0 or n_ctx < 1:
            raise ValueError(f"MaPLe prompts need PROMPT_DEPTH >= 0 and N_CTX >= 1, got {depth}, {n_ctx}")
        emb = clip_model.token_embedding
        dim = emb.weight.shape[1]
        width = clip_model.visual.class_embedding.shape[-1]
        ctx_init = (ctx_init or "").replace("_", " ").strip()
        init = None
        if ctx_init:
            tok = tokenizer([ctx_init])
            if int(tok.argmax(dim=-1)[0]) - 1 >= n_ctx:
                with torch.no_grad():
                    init = emb(tok)[0, 1:1 + n_ctx].clone().float()
        if init is None:
            init = torch.empty(n_ctx, dim, device=emb.weight.device)
            nn.init.normal_(init, std=0.02)
            prefix_text = " ".join(["X"] * n_ctx)
        else:
            prefix_text = ctx_init
        self.depth, self.n_ctx, self.n_cls = depth, n_ctx, len(classnames)
        if depth >= 1:
            self.ctx = nn.Parameter(init)
            self.text_deep = make_deep_prompts(depth, n_ctx, dim)
            self.coupler = PromptCoupler(depth, dim, width)
        else:
            self.register_buffer("ctx", init)
            self.text_deep = nn.ParameterList()
            self.coupler = None
        prompts = [f"{prefix_text} {clean_classname(c)}." for c in classnames]
        tokenized = tokenizer(prompts)
        if bool((tokenized[:, -1] != 0).any()):
            raise ValueError(f"A prompt is longer than the text context ({tokenized.shape[1]} tokens): {prompts}")
        tokenized = tokenized.to(emb.weight.device)
        with torch.no_grad():
            e = emb(tokenized).float()
        self.register_buffer("token_prefix", e[:, :1].clone())
        self.register_buffer("token_suffix", e[:, 1 + n_ctx:].clone())
        self.register_buffer("tokenized_prompts", tokenized)
        self.register_buffer("eot_idx", tokenized.argmax(dim=-1))
        self.prompt_texts = prompts

    def forward(self, ctx_shift: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Text prompt embeddings.

        Args:
            ctx_shift: optional ``[B, D]`` per-sample shift added to every ctx token (DCPL).

        Returns:
            ``[C, L, D]``, or ``[B * C, L, D]`` (sample-major: row ``b * C + c``) with a shift.
        """
        c = self.n_cls
        if ctx_shift is None:
            ctx = self.ctx.unsqueeze(0).expand(c, -1, -1)
            return torch.cat([self.token_prefix, ctx.to(self.token_prefix.dtype), self.token_suffix], dim=1)
        b = ctx_shift.shape[0]
        ctx = (self.ctx.unsqueeze(0) + ctx_shift.unsqueeze(1))  # [B, n, D]
        ctx = ctx.unsqueeze(1).expand(b, c, -1, -1).reshape(b * c, self.n_ctx, -1)
        pre = self.token_prefix.repeat(b, 1, 1)
        suf = self.token_suffix.repeat(b, 1, 1)
        return torch.cat([pre, ctx.to(pre.dtype), suf], dim=1)

    def eot(self, repeats: int = 1) -> torch.Tensor:
        """``[repeats * C]`` EOT positions (sample-major)."""
        return self.eot_idx.repeat(repeats)

    def vision_prompts(self):
        """``(shallow [n_ctx, W], deep list of depth - 1 tensors [n_ctx, W])``; ``(None, [])`` at depth 0.

        The shallow vision prompt is coupled from the *unshifted* ``ctx`` (as in MaPLe and DCPL)."""
        if self.coupler is None:
            return None, []
        out = self.coupler([self.ctx] + list(self.text_deep))
        return out[0], out[1:]


def maple_param_count(d_text: int, w_vision: int, n_ctx: int = 2, depth: int = 9) -> int:
    """Closed form of :class:`MaPLePrompts`' trainable count: ``depth * (n_ctx * D + D * W + W)``
    (3,555,072 at ViT-B/16, 2 ctx, depth 9; 4,740,096 at depth 12)."""
    return depth * (n_ctx * d_text + d_text * w_vision + w_vision)


class MaPLeCLIP(nn.Module):
    """Frozen CLIP towers driven by :class:`MaPLePrompts` (shared by CoPrompt and DCPL).

    Args:
        clip_model, tokenizer, classnames: the frozen backbone, its tokenizer, ``C`` class names.
        n_ctx, ctx_init, depth: see :class:`MaPLePrompts`.
    """

    def __init__(self, clip_model: nn.Module, tokenizer, classnames: Sequence[str], n_ctx: int = 2,
                 ctx_init: str = "a photo of a", depth: int = 9):
        super().__init__()
        self.clip = clip_model
        self.prompt_learner = MaPLePrompts(clip_model, tokenizer, classnames, n_ctx=n_ctx, ctx_init=ctx_init,
                                           depth=depth)
        self.text_encoder = PromptedTextEncoder(clip_model)
        self.image_encoder = PromptedVisionEncoder(clip_model)

    @property
    def logit_scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` of the backbone (100 for OpenAI weights)."""
        return self.clip.logit_scale.exp()

    def text_raw(self, ctx_shift: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[C, E]`` (or ``[B * C, E]`` with a ``[B, D]`` shift) unnormalised text features."""
        pl = self.prompt_learner
        reps = 1 if ctx_shift is None else ctx_shift.shape[0]
        return self.text_encoder(pl(ctx_shift), pl.eot(reps), deep_prompts=list(pl.text_deep)).float()

    def image_raw(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, E]`` unnormalised prompted image features."""
        shallow, deep = self.prompt_learner.vision_prompts()
        return self.image_encoder(images, prompts=shallow, deep_prompts=deep).float()


# -- CoPrompt ----------------------------------------------------------------------------------
class Adapter(nn.Module):
    """CoPrompt/CLIP-Adapter bottleneck ``Linear(c, c // r, no bias) -> ReLU -> Linear(c // r, c,
    no bias) -> ReLU`` (``[..., c] -> [..., c]``; 131,072 parameters for c = 512, r = 4)."""

    def __init__(self, c_in: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(c_in, c_in // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(c_in // reduction, c_in, bias=False), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def consistency_loss(text: torch.Tensor, text_teacher: torch.Tensor, image: torch.Tensor,
                     image_teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """CoPrompt's consistency term (scalar).

    Args:
        text, text_teacher: ``[C, E]`` student / frozen class text features (normalised).
        image, image_teacher: ``[B, E]`` student / frozen image features (normalised).
        kind: ``"cosine"``: ``(1 - mean cos(text)) + (1 - mean cos(image))``; ``"mse"``: sum of the
            two mean squared errors.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "cosine":
        return (1 - F.cosine_similarity(text, text_teacher, dim=-1).mean()) + \
            (1 - F.cosine_similarity(image, image_teacher, dim=-1).mean())
    if kind == "mse":
        return F.mse_loss(text, text_teacher) + F.mse_loss(image, image_teacher)
    raise ValueError(f"TRAINER.COPROMPT.DISTILL must be 'cosine' or 'mse', got '{kind}'")


class CoPromptCLIP(MaPLeCLIP):
    """MaPLe + residual adapters (CoPrompt's ``CustomCLIP``).

    Args:
        use_adapters: build the two adapters (False: ablation, the ratios are ignored).
        image_ratio, text_ratio: residual mixing ``r * A(x) + (1 - r) * x`` (0.1 / 0.2).
        **kw: :class:`MaPLeCLIP` options.
    """

    def __init__(self, clip_model, tokenizer, classnames, use_adapters: bool = True, image_ratio: float = 0.1,
                 text_ratio: float = 0.2, **kw):
        super().__init__(clip_model, tokenizer, classnames, **kw)
        e = clip_model.text_projection.shape[1]
        self.adapter_image = Adapter(e, 4) if use_adapters else None
        self.adapter_text = Adapter(e, 4) if use_adapters else None
        self.image_ratio, self.text_ratio = image_ratio, text_ratio

    def text_features(self) -> torch.Tensor:
        """``[C, E]`` normalised adapted text features."""
        t = self.text_raw()
        if self.adapter_text is not None:
            t = self.text_ratio * self.adapter_text(t) + (1 - self.text_ratio) * t
        return F.normalize(t, dim=-1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, E]`` normalised adapted image features."""
        f = self.image_raw(images)
        if self.adapter_image is not None:
            f = self.image_ratio * self.adapter_image(f) + (1 - self.image_ratio) * f
        return F.normalize(f, dim=-1)

    def forward(self, images: torch.Tensor, text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C]`` logits."""
        t = self.text_features() if text_features is None else text_features
        return self.logit_scale * self.image_features(images) @ t.t()


def randaugment_transform(cfg):
    """CoPrompt's training pipeline (Dassl ``["randaugment", "normalize"]``): resize the short side
    to ``INPUT.SIZE``, centre-crop, torchvision ``RandAugment(num_ops=2, magnitude=10)``, to tensor,
    CLIP normalisation. Returns a PIL -> ``[3, H, W]`` callable."""
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    interp = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
              "nearest": InterpolationMode.NEAREST}[cfg.INPUT.INTERPOLATION]
    size = tuple(cfg.INPUT.SIZE)
    return T.Compose([T.Resize(max(size), interpolation=interp), T.CenterCrop(size), T.RandAugment(2, 10),
                      T.ToTensor(), T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)])


@TRAINER_REGISTRY.register("CoPrompt")
class CoPrompt(FeatureBankMixin, ClassTextCacheMixin, TrainerX):
    """CoPrompt trainer. Config ``TRAINER.COPROMPT``: N_CTX, CTX_INIT, PROMPT_DEPTH, USE_ADAPTERS,
    IMAGE_ADAPTER_RATIO, TEXT_ADAPTER_RATIO, W (consistency weight), DISTILL, AUGMENT,
    DESCRIPTION_FILE, PREC."""

    CONFIG_KEY = "COPROMPT"

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.N_CTX = 2
        c.CTX_INIT = "a photo of a"
        c.PROMPT_DEPTH = 9
        c.USE_ADAPTERS = True
        c.IMAGE_ADAPTER_RATIO = 0.1
        c.TEXT_ADAPTER_RATIO = 0.2
        c.W = 1.0
        c.DISTILL = "cosine"  # "cosine" | "mse"
        c.AUGMENT = "randaugment"  # "randaugment" (official) | "config" (INPUT.TRANSFORMS)
        c.DESCRIPTION_FILE = ""  # explicit knowledge JSON (default: the dataset's shipped file)
        c.PREC = "fp32"
        return c

    def check_cfg(self, cfg) -> None:
        self.check_prec(cfg)
        c = cfg.TRAINER.COPROMPT
        if c.DISTILL not in ("cosine", "mse"):
            raise ValueError(f"TRAINER.COPROMPT.DISTILL must be 'cosine' or 'mse', got '{c.DISTILL}'")
        if c.AUGMENT not in ("randaugment", "config"):
            raise ValueError(f"TRAINER.COPROMPT.AUGMENT must be 'randaugment' or 'config', got '{c.AUGMENT}'")

    def build_model(self) -> None:
        c = self.method_cfg
        bb = self.get_backbone()
        self.model = CoPromptCLIP(bb.model, bb.tokenizer, self.classnames, use_adapters=c.USE_ADAPTERS,
                                  image_ratio=c.IMAGE_ADAPTER_RATIO, text_ratio=c.TEXT_ADAPTER_RATIO,
                                  n_ctx=c.N_CTX, ctx_init=c.CTX_INIT, depth=c.PROMPT_DEPTH).to(self.device)
        m = self.model
        self.learnable = nn.ModuleDict({k: v for k, v in (("prompt_learner", m.prompt_learner),
                                                          ("adapter_image", m.adapter_image),
                                                          ("adapter_text", m.adapter_text)) if v is not None})
        optim, sched = self.build_optim_sched(self.learnable)
        self.register_model("coprompt", self.learnable, optim, sched)
        self.desc_feats = self._description_bank(bb)  # [K, C, E] normalised
        self.view_transform = randaugment_transform(self.cfg) if c.AUGMENT == "randaugment" else self.dm.tfm_train
        if c.AUGMENT == "randaugment" and self.train_loader_x is not None:
            self.train_loader_x.dataset.transform = self.view_transform

    @torch.no_grad()
    def _description_bank(self, bb) -> torch.Tensor:
        desc = class_texts(self.cfg.DATASET.NAME, self.classnames, "descriptions", self.method_cfg.DESCRIPTION_FILE)
        k = min(len(d) for d in desc)
        enc = self.model.text_encoder
        feats = [F.normalize(enc.encode_ids(bb.tokenizer(list(d[:k])).to(self.device)), dim=-1) for d in desc]
        return torch.stack(feats, dim=1)  # [K, C, E]

    def second_view(self, batch) -> torch.Tensor:
        """``[B, 3, H, W]``: each image of the batch read again through the random training transform."""
        ds = self.dm.dataset
        return torch.stack([self.view_transform(ds.read_image(p)) for p in batch["impath"]]).to(self.device)

    def uses_cached_training(self) -> bool:
        """Whether the teacher's second views come from the shared cache: a bank of
        ``NUM_VIEWS`` > 0 views of the view transform (RandAugment is always random), or one view
        when ``AUGMENT "config"`` has a deterministic pipeline (exact)."""
        if not self.cache_enabled:
            return False
        if self.method_cfg.AUGMENT == "config" and not is_random_transform(self.cfg):
            return True
        return int(self.cache_cfg.NUM_VIEWS) > 0

    def train(self, resume: bool = False) -> None:
        """As the base ``train``, with the bank of second views built first when the cache applies."""
        if self.method_cfg.W and self.uses_cached_training() and getattr(self, "view_bank", None) is None:
            t0 = time.time()
            self.view_bank = self.build_view_bank()
            self.note_view_bank(self.view_bank, "the teacher's second views",
                                random_views=True if self.method_cfg.AUGMENT == "randaugment" else None)
            self.timings["feature_cache_s"] = self.timings.get("feature_cache_s", 0.0) + time.time() - t0
        super().train(resume)

    def build_view_bank(self, use_cache: Optional[bool] = None):
        """The :class:`~medpt.clip.feature_cache.FeatureBank` of second views: the RandAugment
        pipeline's own entries (keyed by its ``repr``, so a change of the pipeline misses), or the
        config's training pipeline with ``AUGMENT "config"``."""
        if self.method_cfg.AUGMENT == "randaugment":
            return self.feature_bank("train", use_cache=use_cache, transform=self.view_transform,
                                     transform_name="coprompt:" + repr(self.view_transform))
        return self.feature_bank("train", use_cache=use_cache)

    def teacher_image_features(self, batch) -> torch.Tensor:
        """``[B, E]`` unnormalised frozen features of a second, independently augmented view of each
        image: a random view from the bank (:attr:`view_bank`) when built, else read, augmented and
        encoded now."""
        bank = getattr(self, "view_bank", None)
        if bank is None:
            return self.encode_images(self.second_view(batch))
        idx = batch["index"].tolist()
        views = [bank.random_view() for _ in idx]
        return bank.features[views, idx].to(self.device).float()

    def forward_backward(self, batch) -> Dict[str, float]:
        images, labels = self.parse_batch_train(batch)
        c = self.method_cfg
        m = self.model
        with self.autocast():
            text = m.text_features()
            img = m.image_features(images)
            logits = (m.logit_scale * img @ text.t()).float()
            loss = F.cross_entropy(logits, labels)
            if c.W:
                teach_img = F.normalize(self.teacher_image_features(batch), dim=-1)
                k = random.randrange(self.desc_feats.shape[0])
                loss = loss + c.W * consistency_loss(text.float(), self.desc_feats[k], img.float(), teach_img,
                                                     c.DISTILL)
        return self.step_and_report(logits, labels, loss)
