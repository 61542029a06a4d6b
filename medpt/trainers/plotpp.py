"""PLOT++: M visual prompt copies matched to N text prompts by entropic optimal transport.

Source: Chen et al., "PLOT: Prompt Learning with Optimal Transport for Vision-Language Models",
ICLR 2023 (PLOT++ is the ViT version); ``CHENGY12/PLOT:plot-pp/trainers/plotpp.py``,
``plot-pp/clip/model.py``, ``plot-pp/configs/trainers/PLOTPP/vit.yaml``,
``plot-pp/scripts/main_visiononly.sh`` and ``main_joint.sh``.

Model (through :mod:`medpt.clip.prompted`):

* text: N = 4 prompts per class, ``[SOS] ctx_n name . [EOT]`` with ``ctx`` ``[N, 4, 512]``
  initialised from 4 four-word templates (the official generic set "a photo of a", "this is a
  photo", "this is picture of", "one picture of a"), giving ``t[n, c]``;
* vision: the image is encoded M = 4 times, copy m with its own 2 shallow prompts
  ``ctx_vision[m]`` ``[2, 768]`` (N(0, 0.02^2)) appended before ``ln_pre``, giving ``f[m, b]``;
* ``sim[b, c]`` = the ``M x N`` cosines; Sinkhorn (no gradient) on ``K = exp(-(1 - sim)/0.1)``
  with uniform marginals ``1/M``, ``1/N``: at most 100 iterations, stop when the mean change of
  the row scaling is below 0.01; ``T = diag(r) K diag(c)``;
* ``logits_OT[b, c] = s * sum_{m,n} T * sim``; with ``TRADE_OFF`` add
  ``s * normalize(mean_m f) . normalize(mean_n t)`` (means of unnormalised features);
  loss: cross-entropy; the same forward at test.
* Two stages (README + scripts): stage 1 "vision" trains only ``ctx_vision`` with TRADE_OFF on
  (6,144 parameters at ViT-B/16), stage 2 "joint" starts from stage 1 and trains both with
  TRADE_OFF off (8,192 + 6,144 = 14,336), each ``OPTIM.MAX_EPOCH`` epochs with its own optimiser
  and schedule. ``MODEL_UPD: two_stage`` (default) runs both in one run (2 x MAX_EPOCH epochs,
  a fresh optimiser and schedule at the switch); ``vision`` / ``joint`` run one stage as the
  official scripts do (``PRETRAIN_DIR`` loads a stage-1 output folder for ``joint``).

Deliberate differences from the official code:

* fp32 master weights; ``PREC: amp`` = bf16 autocast on CUDA, fp32 on CPU (official fp16; its amp
  branch is broken); Sinkhorn always runs in fp32 and a NaN plan raises ``FloatingPointError``
  (the official forward returns ``None`` and training crashes later);
* the two stages can run in one run (``two_stage``), with checkpoints/resume across the switch;
* templates come from ``TEMPLATES`` (default: the official generic four) instead of a dict keyed
  by dataset name (KeyError for any other dataset); every template must have the same BPE token
  count, which is the context length (the official code counts words of the first template);
* the image tokens are computed once and repeated M times (the official code concatenates the
  prompt copies inside its encoder: same values);
* class text features are computed once per test pass.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from ..clip import clean_classname
from ..clip.prompted import PromptedTextEncoder, PromptedVisionEncoder
from ..engine.registry import TRAINER_REGISTRY
from ..engine.trainer import ClassTextCacheMixin, TrainerX

#: official generic four-word templates (``template_dict`` for Caltech101 / SUN397).
PLOT_TEMPLATES = ("a photo of a", "this is a photo", "this is picture of", "one picture of a")


def sinkhorn(kernel: torch.Tensor, u: torch.Tensor, v: torch.Tensor, max_iter: int = 100,
             thresh: float = 1e-2) -> torch.Tensor:
    """Entropic OT plan by Sinkhorn scaling (PLOT's ``Sinkhorn``).

    Args:
        kernel: ``[P, M, N]`` Gibbs kernel ``exp(-cost / eps)``.
        u: ``[P, M]`` row marginals. v: ``[P, N]`` column marginals.
        max_iter: iteration cap. thresh: stop when ``mean |r - r_prev| < thresh``.

    Returns:
        ``[P, M, N]`` plan ``T = diag(r) K diag(c)``; its column sums equal ``v`` exactly after
        the last column update, its row sums approach ``u`` as ``thresh`` shrinks.
    """
    r = torch.ones_like(u)
    c = torch.ones_like(v)
    for _ in range(max_iter):
        r0 = r
        r = u / (kernel @ c.unsqueeze(-1)).squeeze(-1)
        c = v / (kernel.transpose(1, 2) @ r.unsqueeze(-1)).squeeze(-1)
        if (r - r0).abs().mean().item() < thresh:
            break
    return r.unsqueeze(-1) * kernel * c.unsqueeze(-2)


class PLOTPrompts(nn.Module):
    """PLOT++'s trainable tensors and text layout.

    Attributes:
        ctx: ``[N, n_ctx, D]`` text contexts (template token embeddings).
        ctx_vision: ``[M, n_ctx_v, W]`` visual prompt copies, N(0, 0.02^2).
        token_prefix ``[N*C, 1, D]``, token_suffix ``[N*C, L - 1 - n_ctx, D]``, eot_idx ``[N*C]``:
            frozen buffers, n-major (row ``n * C + c``).

    Raises:
        ValueError: fewer templates than N, or templates of different token counts.
    """

    def __init__(self, clip_model, tokenizer, classnames, templates: Sequence[str] = PLOT_TEMPLATES, n: int = 4,
                 m: int = 4, n_ctx_vision: int = 2):
        super().__init__()
        templates = [t.replace("_", " ").strip() for t in templates]
        if len(templates) < n:
            raise ValueError(f"TRAINER.PLOTPP.TEMPLATES has {len(templates)} templates, N = {n} are needed")
        templates = templates[:n]
        lens = [int(tokenizer([t]).argmax(-1)[0]) - 1 for t in templates]
        if len(set(lens)) != 1:
            raise ValueError(f"TRAINER.PLOTPP.TEMPLATES must all have the same token count, got {dict(zip(templates, lens))}")
        n_ctx = lens[0]
        emb = clip_model.token_embedding
        dev = emb.weight.device
        with torch.no_grad():
            ctx = torch.stack([emb(tokenizer([t]).to(dev))[0, 1:1 + n_ctx].float() for t in templates])
        self.ctx = nn.Parameter(ctx)
        width = clip_model.visual.class_embedding.shape[-1]
        cv = torch.empty(m, n_ctx_vision, width)
        nn.init.normal_(cv, std=0.02)
        self.ctx_vision = nn.Parameter(cv)
        names = [clean_classname(c) for c in classnames]
        ids = torch.cat([tokenizer([f"{t} {nm}." for nm in names]) for t in templates]).to(dev)
        with torch.no_grad():
            e = emb(ids).float()
        self.register_buffer("token_prefix", e[:, :1].clone())
        self.register_buffer("token_suffix", e[:, 1 + n_ctx:].clone())
        self.register_buffer("eot_idx", ids.argmax(-1))
        self.n, self.m, self.n_cls, self.n_ctx = n, m, len(names), n_ctx

    def forward(self) -> torch.Tensor:
        """``[N*C, L, D]`` prompt embeddings (n-major)."""
        ctx = self.ctx.repeat_interleave(self.n_cls, dim=0)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


class PLOTPPCLIP(nn.Module):
    """Frozen CLIP with PLOT++'s prompts and OT head.

    Args:
        clip_model, tokenizer, classnames: backbone, tokenizer, ``C`` class names.
        templates, n, m, n_ctx_vision: see :class:`PLOTPrompts`.
        eps, max_iter, thresh: Sinkhorn options. trade_off: add the pooled-feature logits.
    """

    def __init__(self, clip_model, tokenizer, classnames, templates=PLOT_TEMPLATES, n=4, m=4, n_ctx_vision=2,
                 eps=0.1, max_iter=100, thresh=1e-2, trade_off=False):
        super().__init__()
        self.clip = clip_model
        self.prompt_learner = PLOTPrompts(clip_model, tokenizer, classnames, templates, n, m, n_ctx_vision)
        self.text_encoder = PromptedTextEncoder(clip_model)
        self.image_encoder = PromptedVisionEncoder(clip_model)
        self.eps, self.max_iter, self.thresh, self.trade_off = eps, max_iter, thresh, trade_off

    def text_features(self) -> torch.Tensor:
        """``[N, C, E]`` unnormalised text features."""
        pl = self.prompt_learner
        t = self.text_encoder(pl(), pl.eot_idx).float()
        return t.view(pl.n, pl.n_cls, -1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[M, B, E]`` unnormalised features of the M prompted copies."""
        pl = self.prompt_learner
        b = images.shape[0]
        f = self.image_encoder(images, prompts=pl.ctx_vision.repeat_interleave(b, dim=0)).float()
        return f.view(pl.m, b, -1)

    def forward(self, images: torch.Tensor, text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C]`` logits (OT score, plus pooled logits with trade-off)."""
        t = self.text_features() if text_features is None else text_features
        f = self.image_features(images)
        m, b, _ = f.shape
        n, c, _ = t.shape
        f_pool, t_pool = F.normalize(f.mean(0), dim=-1), F.normalize(t.mean(0), dim=-1)
        fn, tn = F.normalize(f, dim=-1), F.normalize(t, dim=-1)
        sim = torch.einsum("mbd,ncd->bcmn", fn, tn).reshape(b * c, m, n)
        with torch.no_grad():
            kernel = torch.exp(-(1.0 - sim.float()) / self.eps)
            u = torch.full((b * c, m), 1.0 / m, device=sim.device)
            v = torch.full((b * c, n), 1.0 / n, device=sim.device)
            plan = sinkhorn(kernel, u, v, self.max_iter, self.thresh)
        if torch.isnan(plan).any():
            raise FloatingPointError("PLOT++ Sinkhorn produced NaN (raise TRAINER.PLOTPP.EPS)")
        scale = self.clip.logit_scale.exp()
        logits = scale * (plan * sim).sum(dim=(1, 2)).view(b, c)
        if self.trade_off:
            logits = logits + scale * f_pool @ t_pool.t()
        return logits


@TRAINER_REGISTRY.register("PLOTPP", aliases=("PLOT++",))
class PLOTPP(ClassTextCacheMixin, TrainerX):
    """PLOT++ trainer. Config ``TRAINER.PLOTPP``: N, M, N_CTX_V, TEMPLATES, MODEL_UPD, TRADE_OFF,
    PRETRAIN_DIR, EPS, MAX_ITER, THRESH, PREC."""

    CONFIG_KEY = "PLOTPP"

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.N = 4
        c.M = 4
        c.N_CTX_V = 2
        c.TEMPLATES = PLOT_TEMPLATES
        c.MODEL_UPD = "two_stage"  # "two_stage" | "vision" (stage 1) | "joint" (stage 2)
        c.TRADE_OFF = False  # used by "vision"/"joint" runs; two_stage: True in stage 1, False in stage 2
        c.PRETRAIN_DIR = ""  # "joint": output folder of a "vision" run to start from
        c.EPS = 0.1
        c.MAX_ITER = 100
        c.THRESH = 0.01
        c.PREC = "fp32"
        return c

    def check_cfg(self, cfg) -> None:
        self.check_prec(cfg)
        c = cfg.TRAINER.PLOTPP
        if c.MODEL_UPD not in ("two_stage", "vision", "joint"):
            raise ValueError(f"TRAINER.PLOTPP.MODEL_UPD must be two_stage, vision or joint, got '{c.MODEL_UPD}'")

    @classmethod
    def planned_epochs(cls, cfg) -> int:
        """``two_stage`` trains both stages, ``OPTIM.MAX_EPOCH`` epochs each."""
        return int(cfg.OPTIM.MAX_EPOCH) * (2 if cfg.TRAINER.PLOTPP.MODEL_UPD == "two_stage" else 1)

    def build_model(self) -> None:
        c = self.method_cfg
        bb = self.get_backbone()
        self.model = PLOTPPCLIP(bb.model, bb.tokenizer, self.classnames, list(c.TEMPLATES), c.N, c.M, c.N_CTX_V,
                                c.EPS, c.MAX_ITER, c.THRESH, trade_off=c.TRADE_OFF).to(self.device)
        pl = self.model.prompt_learner
        self.stage_epochs = self.cfg.OPTIM.MAX_EPOCH
        self.max_epoch = self.planned_epochs(self.cfg)
        if c.PRETRAIN_DIR:
            self._load_pretrained(Path(c.PRETRAIN_DIR))
        self.stage = 2 if c.MODEL_UPD == "joint" else 1
        pl.ctx.requires_grad_(self.stage == 2)
        if c.MODEL_UPD == "two_stage":
            self.model.trade_off = True
        optim, sched = self.build_optim_sched([p for p in pl.parameters() if p.requires_grad])
        self.register_model("prompt_learner", pl, optim, sched)

    def _load_pretrained(self, directory: Path) -> None:
        ptr = directory / "prompt_learner" / "checkpoint"
        if not ptr.is_file():
            raise FileNotFoundError(f"TRAINER.PLOTPP.PRETRAIN_DIR: no prompt_learner checkpoint under {directory}")
        state = torch.load(directory / "prompt_learner" / ptr.read_text().strip(), map_location="cpu",
                           weights_only=False)["state_dict"]
        state = {k: v for k, v in state.items() if k in ("ctx", "ctx_vision")}
        self.model.prompt_learner.load_state_dict(state, strict=False)

    def switch_to_stage2(self) -> None:
        """Start the joint stage: train ``ctx`` and ``ctx_vision`` with a fresh optimiser and
        schedule, trade-off off."""
        pl = self.model.prompt_learner
        pl.ctx.requires_grad_(True)
        self.model.trade_off = False
        optim, sched = self.build_optim_sched(list(pl.parameters()))
        self._optims["prompt_learner"], self._scheds["prompt_learner"] = optim, sched
        self.stage = 2

    def before_epoch(self) -> None:
        if self.method_cfg.MODEL_UPD == "two_stage" and self.stage == 1 and self.epoch >= self.stage_epochs:
            self.switch_to_stage2()

    def resume_model_if_exist(self, directory) -> int:
        ptr = Path(directory) / "prompt_learner" / "checkpoint"
        if self.method_cfg.MODEL_UPD == "two_stage" and ptr.is_file():
            done = int(ptr.read_text().strip().rsplit("-", 1)[1])
            if done > self.stage_epochs and self.stage == 1:
                self.switch_to_stage2()
        return super().resume_model_if_exist(directory)

    def forward_backward(self, batch) -> Dict[str, float]:
        images, labels = self.parse_batch_train(batch)
        with self.autocast():
            logits = self.model(images)
        return self.step_and_report(logits, labels)
