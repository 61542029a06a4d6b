"""RPO: read-only prompt optimisation on both CLIP towers.

Source: Lee et al., "Read-only Prompt Optimization for Vision-Language Few-shot Learning",
ICCV 2023; ``mlvlab/RPO:trainers/rpo.py``, ``configs/trainers/RPO/main_K24.yaml``.

Model (through :mod:`medpt.clip.prompted`):

* text: ``template.format(name)`` is tokenised (default ``"a photo of a {}."``); the K text
  prompts are written over the padding right after EOT **without** positional embedding and the
  text blocks run under a mask that hides every position after EOT from every query
  (:func:`read_only_text_mask`): the original tokens are unchanged and each prompt reads only
  ``SOS..EOT``. Output ``z_{c,k} = ln_final(h[eot_c + 1 + k]) W_t``.
* vision: the K visual prompts are appended after the patch tokens (no positional embedding)
  before ``ln_pre``; every block masks the prompt columns for every query
  (:func:`read_only_vision_mask`). Output ``y_k = ln_post(h[197 + k]) W_v``.
* logits ``[B, C] = (1/K) sum_k s * y_hat_k z_hat_k^T`` (prompt k pairs only with prompt k);
  loss: cross-entropy.
* Init (official): text prompt rows = token embedding of EOT + 0.1 * u (u Gaussian,
  L2-normalised per row); visual rows = ``class_embedding`` + 0.1 * u'.
* Trainable at ViT-B/16, K = 24: 24 * (512 + 768) = 30,720.

Deliberate differences from the official code:

* fp32 master weights; ``PREC: amp`` = bf16 autocast on CUDA, fp32 on CPU (official fp16);
* class names go through :func:`clean_classname` ("_" -> space) and the template has a ``{}``
  slot, like every other method here; the official code inserts the raw name with
  ``template.replace("_", name)`` (every underscore of the template is replaced);
* the text pass stops at ``max(EOT) + 1 + K`` tokens (exact: later keys are masked for every
  query) and the text embedding is rebuilt functionally each step instead of modified in place;
* both towers run the read-only pass as two streams (:func:`medpt.clip.prompted.read_only_blocks`):
  the original tokens follow frozen CLIP without gradient, and each prompt is a query against
  their keys/values. The masks make this exactly the official masked joint pass (same values up
  to float summation order, tested), but the backward runs through the K prompt tokens only,
  not through all 197 + K image tokens (issue 9: train step 1.24 -> ~0.5 x REF_TRAIN);
* no ``torch.autograd.set_detect_anomaly(True)`` (a large slowdown); the head count of the
  mask comes from the model (hard-coded 8 in the official code);
* class text features are computed once per test pass.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from ..clip import clean_classname
from ..clip.prompted import PromptedTextEncoder, PromptedVisionEncoder
from ..engine.registry import TRAINER_REGISTRY
from ..engine.trainer import ClassTextCacheMixin, TrainerX


class RPOPrompts(nn.Module):
    """RPO's trainable tensors: ``text_prompt`` ``[K, D]`` and ``img_prompt`` ``[K, W]``.

    Args:
        clip_model: open_clip CLIP (token embedding and ``visual.class_embedding`` give the init).
        eot_token_id: id of the end-of-text token (49407 for CLIP's BPE).
        k: number of prompt pairs K.

    Raises:
        ValueError: ``k < 1``.
    """

    def __init__(self, clip_model, eot_token_id: int, k: int = 24):
        super().__init__()
        if k < 1:
            raise ValueError(f"TRAINER.RPO.K must be >= 1, got {k}")
        with torch.no_grad():
            eot = clip_model.token_embedding.weight[eot_token_id].detach().float()
            cls = clip_model.visual.class_embedding.detach().float()
        tn = torch.randn(k, eot.shape[0]).to(eot.device)
        vn = torch.randn(k, cls.shape[0]).to(cls.device)
        self.text_prompt = nn.Parameter(eot.repeat(k, 1) + 0.1 * F.normalize(tn, dim=-1))
        self.img_prompt = nn.Parameter(cls.repeat(k, 1) + 0.1 * F.normalize(vn, dim=-1))
        self.k = k


class RPOCLIP(nn.Module):
    """Frozen CLIP with RPO's read-only prompts.

    Args:
        clip_model, tokenizer, classnames: backbone, tokenizer, ``C`` class names.
        k: prompt pairs. template: a string with one ``{}`` slot.

    Raises:
        ValueError: the template has no ``{}``; a prompt leaves fewer than K free slots.
    """

    def __init__(self, clip_model, tokenizer, classnames, k: int = 24, template: str = "a photo of a {}."):
        super().__init__()
        if "{}" not in template:
            raise ValueError(f"TRAINER.RPO.TEMPLATE must contain '{{}}', got '{template}'")
        self.clip = clip_model
        ids = tokenizer([template.format(clean_classname(c)) for c in classnames])
        eot_id = int(ids.max())
        self.prompt_learner = RPOPrompts(clip_model, eot_id, k)
        self.text_encoder = PromptedTextEncoder(clip_model)
        self.image_encoder = PromptedVisionEncoder(clip_model)
        with torch.no_grad():
            emb = clip_model.token_embedding(ids.to(clip_model.token_embedding.weight.device)).float()
        self.register_buffer("token_embeds", emb, persistent=False)
        self.register_buffer("eot_idx", ids.argmax(-1).to(emb.device), persistent=False)
        longest = int(ids.argmax(-1).max()) + 1
        if longest + k > ids.shape[1]:
            raise ValueError(f"K={k} read-only prompts do not fit after the longest prompt "
                             f"({longest} tokens); lower TRAINER.RPO.K")

    def text_features(self) -> torch.Tensor:
        """``[C, K, E]`` normalised prompt text features."""
        _, ro = self.text_encoder.forward_read_only(self.token_embeds, self.eot_idx,
                                                    self.prompt_learner.text_prompt)
        return F.normalize(ro.float(), dim=-1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, K, E]`` normalised prompt image features."""
        y = self.image_encoder(images, prompts=self.prompt_learner.img_prompt, read_only=True, output="prompts")
        return F.normalize(y.float(), dim=-1)

    def forward(self, images: torch.Tensor, text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C]`` logits averaged over the K prompt pairs."""
        t = self.text_features() if text_features is None else text_features
        y = self.image_features(images)
        return self.clip.logit_scale.exp() * torch.einsum("bke,cke->bc", y, t) / y.shape[1]


@TRAINER_REGISTRY.register("RPO")
class RPO(ClassTextCacheMixin, TrainerX):
    """RPO trainer. Config ``TRAINER.RPO``: K, TEMPLATE, PREC."""

    CONFIG_KEY = "RPO"

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.K = 24
        c.TEMPLATE = "a photo of a {}."  # official cfg.DATASET.PROMPT "a photo of a _." for every set
        c.PREC = "fp32"  # "fp32" | "amp"
        return c

    def check_cfg(self, cfg) -> None:
        self.check_prec(cfg)

    def build_model(self) -> None:
        c = self.method_cfg
        bb = self.get_backbone()
        self.model = RPOCLIP(bb.model, bb.tokenizer, self.classnames, k=c.K, template=c.TEMPLATE).to(self.device)
        optim, sched = self.build_optim_sched(self.model.prompt_learner)
        self.register_model("prompt_learner", self.model.prompt_learner, optim, sched)

    def forward_backward(self, batch) -> Dict[str, float]:
        images, labels = self.parse_batch_train(batch)
        with self.autocast():
            logits = self.model(images)
        return self.step_and_report(logits, labels)
