"""TCP: textual-based class-aware prompt tuning (class tokens from a textual knowledge embedding).

Source: Yao et al., "TCP: Textual-based Class-aware Prompt tuning for Visual-Language Model",
CVPR 2024 §3; ``htyao89/Textual-based_Class-aware_prompt_tuning:trainers/tcp.py``,
``trainers/clip_text/model.py`` (the layer-8 replacement), ``configs/trainers/TCP/vit_b16_ep100_ctxv1.yaml``.

Forward:

1. class knowledge ``w_c`` = normalised zero-shot CLIP text feature of the natural template
   (``TEMPLATE``, default the dataset reader's ``templates[0]``), fixed;
2. Textual Knowledge Embedding (TKE, the official ``meta_net``): Linear(E -> E/4, bias) ->
   QuickGELU -> Linear(E/4 -> N_CTX * D, bias); ``q_c = reshape(TKE(w_c), [N_CTX, D])``;
3. prompt ``[SOS, ctx_1..ctx_M, name_c, <rest of the template>, EOT]`` from the "X" template;
4. text encoder: blocks ``0 .. L-1`` as usual; right before block ``L = CLASS_TOKEN_LAYER`` (8 of
   12) the hidden states at positions ``1..M`` are replaced by ``q_c`` (weight 1.0: full
   replacement); remaining blocks; EOT -> ln_final -> projection; normalise;
5. logits ``exp(logit_scale) * f_hat @ t_hat^T``.

Loss: ``CE + W * (1 - mean_c cos(t_hat_c, w_c))`` with W = 8 (hard-coded in the official code).
Trainable: ``ctx`` (4 x 512) + TKE (65,664 + 264,192) = 331,904 at ViT-B/16.

The "X" template: the official code keeps a second per-dataset dict (``"X X X X {}, a type of
pet."`` for ``"a photo of a {}, a type of pet."``, ``"X X X X {}."`` for ``"a photo of a {}."``);
here it is derived from the natural template: ``N_CTX`` "X" words, then the class name, then
whatever follows ``{}`` in the natural template. This reproduces the official pairs of the
generic and pet/flower/food sets.

Deliberate differences from the official code:

* ``CTX_INIT`` is a phrase as in CoOp (default "" = N(0, 0.02^2), the shipped config); a phrase
  initialises the context vectors from its token embeddings (official: any truthy value forces
  "a photo of a");
* the "X" template is derived (above) instead of read from a per-dataset dict; templates come
  from the dataset reader;
* ``w_c`` uses the run's own frozen CLIP (official: a second CLIP copy; same values);
  ``CLASS_TOKEN_LAYER`` and ``W`` are config keys (official: hard-coded 8 and 8.0); a text tower
  without a block after ``CLASS_TOKEN_LAYER`` uses the same relative depth, with a warning;
* fp32 master weights; the official README raises Adam's eps to 1e-3 because of fp16
  parameters: kept (``OPTIM.EPS 1e-3`` in the yaml) so the optimiser behaves as published;
* class tokens and text features are computed once per test pass (they do not depend on the
  image); text passes stop at the longest EOT; image features may come from the shared cache.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from ..clip import TextEncoder, clean_classname
from ..engine.registry import TRAINER_REGISTRY
from ._common import template_text_features
from ._frozen import FrozenClassTextCacheMixin, FrozenImageEncoderTrainer
from .kgcoop import knowledge_loss


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (CLIP's activation; TKE's nonlinearity)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def x_template(template: str, n_ctx: int) -> str:
    """TCP's prompt template: ``n_ctx`` "X" words, ``{}``, then what follows ``{}`` in ``template``.

    >>> x_template("a photo of a {}, a type of pet.", 4)
    'X X X X {}, a type of pet.'
    """
    return " ".join(["X"] * n_ctx) + " {}" + template.split("{}", 1)[1]


class TCPPromptLearner(nn.Module):
    """Context vectors ``ctx`` ``[M, D]``, the TKE ``meta_net`` and the fixed class knowledge.

    Args:
        clip_model: open_clip CLIP (frozen).
        tokenizer: its tokenizer.
        classnames: ``C`` class names.
        knowledge: ``[C, E]`` class knowledge ``w`` (normalised here).
        template: the natural template (one ``{}``).
        n_ctx: M.
        ctx_init: "" (random N(0, 0.02^2)) or a phrase of M tokens.

    Raises:
        ValueError: a phrase whose token count is not ``n_ctx``, or a prompt longer than the context.
    """

    def __init__(self, clip_model: nn.Module, tokenizer, classnames: Sequence[str], knowledge: torch.Tensor,
                 template: str, n_ctx: int = 4, ctx_init: str = ""):
        super().__init__()
        emb = clip_model.token_embedding
        dim = emb.weight.shape[1]
        vis_dim = int(getattr(clip_model.visual, "output_dim", knowledge.shape[1]))
        ctx_init = (ctx_init or "").replace("_", " ").strip()
        if ctx_init:
            tok = tokenizer([ctx_init])
            m = int(tok.argmax(dim=-1)[0]) - 1
            if m != n_ctx:
                raise ValueError(f"TRAINER.TCP.CTX_INIT {ctx_init!r} has {m} tokens but N_CTX is {n_ctx}")
            with torch.no_grad():
                ctx = emb(tok)[0, 1:1 + n_ctx].clone().float()
        else:
            ctx = torch.empty(n_ctx, dim)
            nn.init.normal_(ctx, std=0.02)
        self.ctx = nn.Parameter(ctx)
        self.meta_net = nn.Sequential(OrderedDict([("linear1", nn.Linear(vis_dim, vis_dim // 4)), ("relu", QuickGELU()),
                                                   ("linear2", nn.Linear(vis_dim // 4, n_ctx * dim))]))
        self.register_buffer("text_features", F.normalize(knowledge.float(), dim=-1))
        self.n_ctx, self.n_cls, self.dim = n_ctx, len(classnames), dim
        xt = x_template(template, n_ctx)
        self.prompt_texts: List[str] = [xt.format(clean_classname(c)) for c in classnames]
        tokenized = tokenizer(self.prompt_texts)
        if bool((tokenized[:, -1] != 0).any()):
            raise ValueError(f"A TCP prompt is longer than the text context: {self.prompt_texts}")
        with torch.no_grad():
            embedding = emb(tokenized).float()
        self.register_buffer("token_prefix", embedding[:, :1].clone())
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:].clone())
        self.register_buffer("tokenized_prompts", tokenized)
        self.register_buffer("eot_idx", tokenized.argmax(dim=-1))

    def class_tokens(self) -> torch.Tensor:
        """``[C, M, D]`` class-aware tokens ``q = reshape(TKE(w))``."""
        return self.meta_net(self.text_features).reshape(self.n_cls, self.n_ctx, self.dim)

    def forward(self) -> torch.Tensor:
        """``[C, 77, D]`` prompt embeddings ``[SOS, ctx, suffix]``."""
        ctx = self.ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


def resolve_class_token_layer(layer: int, n_layers: int) -> int:
    """``layer`` if the text tower has a block after it; otherwise the same relative depth
    (``round(n_layers * 8 / 12)``, within ``[1, n_layers - 1]``) with a warning, so that a run on
    a shallower text tower (e.g. the tiny test CLIP) still works.

    Raises:
        ValueError: the tower has fewer than 2 blocks, or ``layer < 1``.
    """
    if n_layers < 2 or layer < 1:
        raise ValueError(f"TRAINER.TCP.CLASS_TOKEN_LAYER must be in [1, {n_layers - 1}] for a "
                         f"{n_layers}-layer text tower, got {layer}")
    if layer < n_layers:
        return layer
    scaled = min(max(1, round(n_layers * 8 / 12)), n_layers - 1)
    warnings.warn(f"TRAINER.TCP.CLASS_TOKEN_LAYER {layer} does not exist in a {n_layers}-layer text tower; "
                  f"using layer {scaled} (the official 8-of-12 relative depth)", UserWarning, stacklevel=2)
    return scaled


class TCPCLIP(nn.Module):
    """Frozen CLIP with TCP's prompt learner (the official ``CustomCLIP``).

    Args:
        class_token_layer: the block before which the class tokens replace positions 1..M
            (8 for ViT-B/16; must be in ``[1, n_layers - 1]``).

    Raises:
        ValueError: ``class_token_layer`` out of range for the text tower (names the key).
    """

    def __init__(self, clip_model: nn.Module, tokenizer, classnames, knowledge: torch.Tensor, template: str,
                 n_ctx: int = 4, ctx_init: str = "", class_token_layer: int = 8):
        super().__init__()
        self.clip = clip_model
        n_layers = len(clip_model.transformer.resblocks)
        if not 1 <= class_token_layer < n_layers:
            raise ValueError(f"TRAINER.TCP.CLASS_TOKEN_LAYER must be in [1, {n_layers - 1}] for a "
                             f"{n_layers}-layer text tower, got {class_token_layer}")
        self.class_token_layer = class_token_layer
        self.prompt_learner = TCPPromptLearner(clip_model, tokenizer, classnames, knowledge, template, n_ctx, ctx_init)
        self.text_encoder = TextEncoder(clip_model)

    def text_features(self) -> torch.Tensor:
        """``[C, E]`` normalised class text features."""
        pl = self.prompt_learner
        deep = [None] * (self.class_token_layer - 1) + [pl.class_tokens()]
        t = self.text_encoder(pl(), pl.eot_idx, deep_prompts=deep, deep_start=1)
        return F.normalize(t, dim=-1)

    def forward_features(self, image_features: torch.Tensor, text_features=None) -> torch.Tensor:
        """``[B, E]`` unnormalised image features -> ``[B, C]`` logits."""
        t = self.text_features() if text_features is None else text_features
        return self.clip.logit_scale.exp() * F.normalize(image_features.float(), dim=-1) @ t.t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C]`` logits."""
        with torch.no_grad():
            feats = self.clip.encode_image(images).float()
        return self.forward_features(feats)


@TRAINER_REGISTRY.register("TCP")
class TCP(FrozenClassTextCacheMixin, FrozenImageEncoderTrainer):
    """TCP trainer. Config ``TRAINER.TCP``: N_CTX, CTX_INIT, W, CLASS_TOKEN_LAYER, TEMPLATE, PREC."""

    CONFIG_KEY = "TCP"

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.N_CTX = 4
        c.CTX_INIT = ""  # the shipped config: CTX_INIT False -> random N(0, 0.02^2)
        c.W = 8.0  # hard-coded in trainers/tcp.py (CustomCLIP.forward)
        c.CLASS_TOKEN_LAYER = 8  # hard-coded in trainers/clip_text/model.py
        c.TEMPLATE = ""  # "" = the dataset reader's templates[0]
        c.PREC = "fp32"
        return c

    def check_cfg(self, cfg) -> None:
        self.check_prec(cfg)
        c = cfg.TRAINER.TCP
        if c.N_CTX < 1:
            raise ValueError(f"TRAINER.TCP.N_CTX must be >= 1, got {c.N_CTX}")

    def build_model(self) -> None:
        c = self.method_cfg
        bb = self.get_backbone()
        self.template, knowledge = template_text_features(self, c.TEMPLATE)
        self.class_token_layer = resolve_class_token_layer(int(c.CLASS_TOKEN_LAYER),
                                                           len(bb.model.transformer.resblocks))
        self.model = TCPCLIP(bb.model, bb.tokenizer, self.classnames, knowledge, self.template, n_ctx=c.N_CTX,
                             ctx_init=c.CTX_INIT, class_token_layer=self.class_token_layer).to(self.device)
        optim, sched = self.build_optim_sched(self.model.prompt_learner)
        self.register_model("prompt_learner", self.model.prompt_learner, optim, sched)

    def forward_backward(self, batch) -> Dict[str, float]:
        feats, labels = self.parse_batch_train(batch)
        with self.autocast():
            text = self.model.text_features()
            logits = self.model.forward_features(feats, text_features=text)
        loss = F.cross_entropy(logits.float(), labels) + self.method_cfg.W * knowledge_loss(
            text.float(), self.model.prompt_learner.text_features)
        return self.step_and_report(logits, labels, loss)
