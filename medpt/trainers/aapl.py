"""AAPL: Adding Attributes to Prompt Learning (Kim et al., CVPR-W 2024), batched.

Source: ``Gahyeonkim09/AAPL:trainers/AAPL.py``, ``configs/trainers/AAPL/vit_b16_c4_ep10_batch1.yaml``;
docs/methods.md "Methods B" §1.

Model (CoCoOp with an adversarial triplet on "attribute deltas"):

1. ``f = normalize(CLIP_image(x))`` (frozen, unprompted);
2. meta token ``pi = meta_net(f)``; meta-net ``Linear(E, E/16) -> ReLU -> Linear(E/16, D)``;
3. prompt of class ``c`` for image ``b``: ``[SOS][attr_j + pi_b, j=1..4][class c][.][EOS]``;
   ``logits[b, c] = exp(logit_scale) * f_b . normalize(t_{b,c})``;
4. training only: a partner image ``x2`` of another class (uniform over the other classes, then
   uniform over that class's training images, training transform); two distinct augmentation
   types A, B out of 14 (applied to the normalised tensors, as the official code); deltas
   ``d1A = meta(A x) - meta(x)``, ``d1B``, ``d2A``, ``d2B`` likewise; triplet with squared distance
   and margin 0.2: ``L_adtri = Ltri(d1A, d2A, d1B) + Ltri(d2B, d1B, d2A)``;
   ``loss = ALPHA * L_adtri + BETA * CE`` (0.2, 1.0).

Trainable: ``learnable_attr`` [4, 512] + meta-net (512*32+32 + 32*512+512) = 35,360 at ViT-B/16,
independent of the class count.

Deliberate differences from the official code:

* **batched**: the official code handles one image per step (it squeezes the batch dimension).
  Here the per-image prompts of the whole batch, ``[B * C, L, D]``, go through the text encoder
  in ONE pass (no Python loop over images); every sample gets its own partner image; the two
  augmentation types are drawn once per batch and each augmentation is applied to the whole
  batch (random parameters such as the jitter factors, blur sigma and erased box are shared by
  the batch; with batch size 1 this is the official behaviour);
* the attribute vectors have the text width D and the meta-net outputs D (official: the visual
  output dim, equal to D for ViT-B/16 only);
* the crop augmentation crops ``(top 30, left 30)`` at the input size instead of a hard-coded 224;
  the Sobel filter runs in torch (reflect-101 borders like OpenCV's default) instead of OpenCV on
  the CPU;
* fp32 master weights (official: fp16), one frozen CLIP shared with the prompt learner (official:
  a second copy of the same weights); text passes stop at the longest EOT;
* with the shared feature cache serving training views (a deterministic pipeline, or
  ``MODEL.FEATURE_CACHE.NUM_VIEWS`` > 0: the documented bank-of-views deviation), the clean image
  and its partner come from the bank with their frozen features, so each step encodes only the
  4 distorted views (4B images instead of 6B); by default every view is encoded live.
"""
from __future__ import annotations

import random
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torch import nn
from yacs.config import CfgNode as CN

from ..clip import PromptLearner, TextEncoder
from ..engine.data import DatasetWrapper
from ..engine.registry import TRAINER_REGISTRY
from ..engine.trainer import TrainerX
from ._frozen import TeacherFeatureBankMixin

#: the 14 augmentation types of the official code, in its order.
AUGMENT_TYPES = ("color_jitter_red", "color_jitter_green", "color_jitter_blue", "grayscale", "gaussian_noise",
                 "gaussian_blur", "horizontal_flip", "vertical_flip", "rotation_90", "rotation_180", "rotation_270",
                 "crop", "cutout", "sobel_filter")

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Per-channel Sobel gradient magnitude ``sqrt(gx^2 + gy^2)`` (3x3, reflect-101 borders).

    ``[N, C, H, W] -> [N, C, H, W]``."""
    c = x.shape[1]
    kx = _SOBEL_X.to(x)
    k = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(c, 1, 1, 1)  # [2C, 1, 3, 3]
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k, groups=c).view(x.shape[0], c, 2, *x.shape[2:])
    return g.pow(2).sum(2).sqrt()


def distort(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Apply one of :data:`AUGMENT_TYPES` to a batch of normalised images ``[N, 3, H, W]``.

    Parameters follow the official ``DistortImage``: jitter presets red (brightness 1.5, hue 0.2),
    green (saturation 1.5), blue (hue 0.5), all with contrast 1.0 (and saturation 1.0 for red/blue);
    Gaussian noise std 1; blur kernel 3; crop at (30, 30); cutout = random erasing of half the area
    with value 0.

    Raises:
        ValueError: unknown ``kind``.
    """
    h, w = x.shape[-2:]
    if kind == "color_jitter_red":
        return T.ColorJitter(brightness=1.5, contrast=1.0, saturation=1.0, hue=0.2)(x)
    if kind == "color_jitter_green":
        return T.ColorJitter(brightness=1.0, contrast=1.0, saturation=1.5, hue=0)(x)
    if kind == "color_jitter_blue":
        return T.ColorJitter(brightness=1.0, contrast=1.0, saturation=1.0, hue=0.5)(x)
    if kind == "grayscale":
        return TF.rgb_to_grayscale(x, num_output_channels=3)
    if kind == "gaussian_noise":
        return x + torch.randn_like(x)
    if kind == "gaussian_blur":
        return T.GaussianBlur(kernel_size=3)(x)
    if kind == "horizontal_flip":
        return TF.hflip(x)
    if kind == "vertical_flip":
        return TF.vflip(x)
    if kind.startswith("rotation_"):
        return TF.rotate(x, float(kind.split("_")[1]))
    if kind == "crop":
        return TF.crop(x, 30, 30, h, w)
    if kind == "cutout":
        return T.RandomErasing(p=1.0, scale=(0.5, 0.5), ratio=(0.3, 3.3), value=0)(x)
    if kind == "sobel_filter":
        return sobel_magnitude(x)
    raise ValueError(f"unknown AAPL augmentation '{kind}'; known: {AUGMENT_TYPES}")


def triplet(anchor: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """Mean over the batch of ``max(||a-p||^2 - ||a-n||^2 + margin, 0)``; inputs ``[B, D]``."""
    return F.relu((anchor - pos).pow(2).sum(-1) - (anchor - neg).pow(2).sum(-1) + margin).mean()


class AAPLLearner(nn.Module):
    """AAPL's trainable part plus its frozen prompt buffers.

    Args:
        clip_model: open_clip CLIP (frozen; gives token embeddings).
        tokenizer: its tokenizer.
        classnames: ``C`` class names.
        n_attr: number of attribute vectors (4).
        attr_init: initialisation phrase or ``""`` (N(0, 0.02^2)).

    Attributes:
        prompt_learner: a :class:`medpt.clip.PromptLearner` whose ``ctx`` ``[M, D]`` is ``learnable_attr``.
        meta_net: ``Linear(E, E // 16) -> ReLU -> Linear(E // 16, D)``.
    """

    def __init__(self, clip_model: nn.Module, tokenizer, classnames, n_attr: int = 4, attr_init: str = ""):
        super().__init__()
        self.prompt_learner = PromptLearner(clip_model, tokenizer, classnames, n_ctx=n_attr, ctx_init=attr_init)
        ctx_dim = self.prompt_learner.ctx.shape[-1]
        vis_dim = int(clip_model.text_projection.shape[1]) if not isinstance(clip_model.text_projection, nn.Linear) \
            else clip_model.text_projection.out_features
        self.meta_net = nn.Sequential(nn.Linear(vis_dim, vis_dim // 16), nn.ReLU(inplace=True),
                                      nn.Linear(vis_dim // 16, ctx_dim))

    def prompts(self, meta: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` meta tokens -> ``[B * C, L, D]`` prompt embeddings (image-major)."""
        pl = self.prompt_learner
        b, c = meta.shape[0], pl.n_cls
        ctx = pl.ctx.unsqueeze(0) + meta.unsqueeze(1)  # [B, M, D]
        ctx = ctx.unsqueeze(1).expand(b, c, -1, -1)
        prefix = pl.token_prefix.unsqueeze(0).expand(b, -1, -1, -1)
        suffix = pl.token_suffix.unsqueeze(0).expand(b, -1, -1, -1)
        return torch.cat([prefix, ctx, suffix], dim=2).reshape(b * c, -1, ctx.shape[-1])


class AAPLCLIP(nn.Module):
    """Frozen CLIP with AAPL's instance-conditional attribute prompts."""

    def __init__(self, clip_model: nn.Module, tokenizer, classnames, n_attr: int = 4, attr_init: str = ""):
        super().__init__()
        self.clip = clip_model
        self.learner = AAPLLearner(clip_model, tokenizer, classnames, n_attr, attr_init)
        self.text_encoder = TextEncoder(clip_model)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, E]`` normalised frozen image features."""
        return F.normalize(self.clip.encode_image(images).float(), dim=-1)

    def logits_from_features(self, f: torch.Tensor):
        """``[B, E]`` normalised image features -> (``[B, C]`` logits, ``[B, D]`` meta tokens)."""
        meta = self.learner.meta_net(f)
        b, c = f.shape[0], self.learner.prompt_learner.n_cls
        eot = self.learner.prompt_learner.eot_idx.repeat(b)
        groups = torch.arange(b, device=eot.device).repeat_interleave(c)  # shared [SOS][attr + pi_b] per image
        t = F.normalize(self.text_encoder(self.learner.prompts(meta), eot, shared_prefix=True,
                                                                  prefix_groups=groups),
                        dim=-1).view(b, c, -1)
        logits = self.clip.logit_scale.exp() * torch.einsum("be,bce->bc", f, t)
        return logits, meta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C]`` logits."""
        return self.logits_from_features(self.image_features(images))[0]


@TRAINER_REGISTRY.register("AAPL")
class AAPL(TeacherFeatureBankMixin, TrainerX):
    """AAPL trainer. Config ``TRAINER.AAPL``: N_ATTR, ATTR_INIT, ALPHA, BETA, MARGIN, PREC."""

    CONFIG_KEY = "AAPL"

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.N_ATTR = 4
        c.ATTR_INIT = ""
        c.ALPHA = 0.2  # weight of the adversarial triplet loss
        c.BETA = 1.0  # weight of the cross-entropy
        c.MARGIN = 0.2  # triplet margin (the official code ignores its config key and uses 0.2)
        c.PREC = "fp32"
        return c

    def check_cfg(self, cfg) -> None:
        self.check_prec(cfg)

    def build_model(self) -> None:
        c = self.method_cfg
        if self.num_classes < 2:
            raise ValueError("AAPL needs at least 2 classes (its partner image comes from another class)")
        bb = self.get_backbone()
        self.model = AAPLCLIP(bb.model, bb.tokenizer, self.classnames, c.N_ATTR, c.ATTR_INIT).to(self.device)
        optim, sched = self.build_optim_sched(self.model.learner)
        self.register_model("prompt_learner", self.model.learner, optim, sched)
        train = self.dm.dataset.train_x
        self._pair_data = DatasetWrapper(self.dm.dataset, train, self.dm.tfm_train)
        self._by_label: Dict[int, List[int]] = {}
        for i, d in enumerate(train):
            self._by_label.setdefault(d.label, []).append(i)

    def sample_partners(self, labels: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """One training image of another class per label (official ``GetImagePair``).

        Returns:
            ``(images [B, 3, H, W], features [B, E] or None)``: with the teacher bank attached
            (see :class:`~medpt.trainers._frozen.TeacherFeatureBankMixin`) each partner is a
            random view from the bank and comes with its frozen feature; otherwise it is freshly
            augmented by the training transform and the features are ``None``.

        Raises:
            ValueError: no other class has training images.
        """
        bank = self.teacher_bank
        imgs, feats = [], []
        for y in labels.tolist():
            others = [k for k in self._by_label if k != y]
            if not others:
                raise ValueError(f"AAPL: no training image of a class other than {y}")
            k = random.choice(others)
            j = random.choice(self._by_label[k])
            if bank is None:
                imgs.append(self._pair_data[j]["img"])
            else:
                item = bank.item_with_feature(j, bank.bank.random_view())
                imgs.append(item["img"])
                feats.append(item["teacher_feat"])
        f = torch.stack(feats).to(self.device).float() if feats else None
        return torch.stack(imgs).to(self.device), f

    def forward_backward(self, batch) -> Dict[str, float]:
        c = self.method_cfg
        images, labels = self.parse_batch_train(batch)
        images2, feats2 = self.sample_partners(labels)
        aug_a, aug_b = random.sample(AUGMENT_TYPES, 2)
        b = images.shape[0]
        with self.autocast():
            if "teacher_feat" in batch and feats2 is not None:
                # clean views from the shared feature cache: only the 4 distorted views are encoded
                f = self.model.image_features(torch.cat([distort(images, aug_a), distort(images, aug_b),
                                                         distort(images2, aug_a), distort(images2, aug_b)]))
                f1 = F.normalize(self.teacher_features(batch, images), dim=-1)
                feats = torch.cat([f1, f[:2 * b], F.normalize(feats2, dim=-1), f[2 * b:]])
            else:
                views = torch.cat([images, distort(images, aug_a), distort(images, aug_b),
                                   images2, distort(images2, aug_a), distort(images2, aug_b)])
                feats = self.model.image_features(views)  # one frozen image pass, [6B, E]
            logits, meta1 = self.model.logits_from_features(feats[:b])
            m = self.model.learner.meta_net(feats[b:]).view(5, b, -1)
            d1a, d1b = m[0] - meta1, m[1] - meta1
            d2a, d2b = m[3] - m[2], m[4] - m[2]
            adtri = triplet(d1a, d2a, d1b, c.MARGIN) + triplet(d2b, d1b, d2a, c.MARGIN)
        ce = F.cross_entropy(logits.float(), labels)
        loss = c.ALPHA * adtri.float() + c.BETA * ce
        self.model_backward_and_update(loss)
        return {"loss": loss.item(), "ce": ce.item(), "adtri": adtri.item(),
                "acc": self.batch_accuracy(logits, labels)}
