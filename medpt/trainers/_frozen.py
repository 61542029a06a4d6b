"""Shared base for trainers whose image encoder is frozen and unprompted.

Such a method only needs ``encode_image(x)`` of each image; its head (prompted text tower,
adapter, linear classifier ...) works on those features. :class:`FrozenImageEncoderTrainer`
feeds the head ``[B, E]`` unnormalised image features, either from the shared
:mod:`medpt.clip.feature_cache` or from the encoder on the fly, so a method writes its logic once
and gets the cache for free. Source of the design: methods.md §10; design.md "Speed".

A method implements:

* ``build_model()`` as for any trainer;
* ``forward_backward(batch)``: ``feats, labels = self.parse_batch_train(batch)`` gives
  ``[B, E]`` float32 features and ``[B]`` labels whatever the path (default: cross-entropy on
  ``self.model.forward_features(feats)``);
* ``inference_features(feats) -> [B, C]`` logits (default ``self.model.forward_features(feats)``);
  :meth:`model_inference` accepts images ``[B, 3, H, W]`` or features ``[B, E]``.

When the cache is used (``MODEL.FEATURE_CACHE.ENABLED``):

* test/val features (deterministic, one view) always come from the cache;
* training features come from the cache when the training pipeline is deterministic (then the
  batches, their order and the logits equal the uncached path), or when
  ``MODEL.FEATURE_CACHE.NUM_VIEWS`` = V > 0 (a bank of V augmented views per image, one drawn
  per image and epoch: a protocol deviation); otherwise random views are encoded live.

The image encoder always runs under ``torch.no_grad`` and the method's :meth:`autocast`.
"""
from __future__ import annotations

import time
from typing import Dict, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from ..clip.feature_cache import (BankViewDataset, CachedFeatureLoader, FeatureBank, FeatureCache, build_feature_bank,
                                  data_fingerprint, is_random_transform, module_fingerprint, resolve_cache_dir,
                                  transform_signature)
from ..engine.trainer import ClassTextCacheMixin, TrainerX


class FeatureBankMixin:
    """The shared image-feature cache plumbing of a trainer: cache folder, keys, feature banks.

    Used by :class:`FrozenImageEncoderTrainer` (whose head consumes the features) and by
    :class:`TeacherFeatureBankMixin` (prompted methods that also need the frozen encoder's
    features of their training images). Both encode with :meth:`encode_images`, the backbone's
    own frozen, unprompted ``encode_image``, so their cache entries are the same files.

    Class attributes:
        TRAIN_PIPELINE: ``"train"`` (the config's augmentation, default) or ``"test"`` (the
            deterministic test pipeline, e.g. the linear probe's feature extraction).
    """

    TRAIN_PIPELINE = "train"

    # -- encoder -----------------------------------------------------------------------------
    @property
    def clip_model(self):
        """The frozen open_clip CLIP model."""
        return self.get_backbone().model

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, E]`` unnormalised float32 image features (frozen encoder)."""
        with self.autocast():
            return self.clip_model.encode_image(images.to(self.device)).float()

    # -- cache -------------------------------------------------------------------------------
    @property
    def cache_cfg(self):
        return self.cfg.MODEL.FEATURE_CACHE

    @property
    def cache_enabled(self) -> bool:
        return bool(self.cache_cfg.ENABLED)

    def feature_cache(self) -> Optional[FeatureCache]:
        """The run's :class:`FeatureCache`, or ``None`` when disabled."""
        if not self.cache_enabled:
            return None
        if getattr(self, "_feature_cache", None) is None:
            self._feature_cache = FeatureCache(resolve_cache_dir(self.cfg))
        return self._feature_cache

    def encoder_key(self) -> Dict:
        """The image-encoder part of a cache key (computed once per trainer)."""
        if getattr(self, "_encoder_key", None) is None:
            import open_clip

            bb = self.get_backbone()
            self._encoder_key = {
                "backbone": bb.name, "weights": bb.weights_id, "visual_sha256": module_fingerprint(bb.model.visual),
                "device": self.device.type, "prec": "amp" if (self.prec == "amp" and self.device.type == "cuda") else "fp32",
                "torch": torch.__version__.split("+")[0], "open_clip": open_clip.__version__,
            }
        return self._encoder_key

    def _view_seed(self) -> int:
        s = int(self.cache_cfg.VIEW_SEED)
        return s if s >= 0 else max(int(self.cfg.SEED), 0)

    def _split_data(self, split: str):
        ds = self.dm.dataset
        return {"train": ds.train_x, "val": ds.val, "test": ds.test}[split]

    def feature_bank(self, split: str, pipeline: Optional[str] = None, use_cache: Optional[bool] = None,
                     transform=None, transform_name: str = "") -> FeatureBank:
        """Features of ``split`` (``train``/``val``/``test``) through ``pipeline`` (``train``/``test``;
        default: ``TRAIN_PIPELINE`` for train, ``test`` otherwise), from the cache when enabled.

        Random training views: ``NUM_VIEWS`` views (at least 1) seeded by the view seed.

        Args:
            transform, transform_name: a method's own random training transform (e.g. CoPrompt's
                RandAugment) instead of the config's; ``transform_name`` names it in the cache key
                (required with ``transform``) and its views are always random.

        Raises:
            ValueError: ``transform`` without ``transform_name``.
        """
        if transform is not None and not transform_name:
            raise ValueError("a custom transform needs a transform_name for the cache key")
        pipeline = pipeline or (self.TRAIN_PIPELINE if split == "train" else "test")
        is_train = pipeline == "train"
        random_views = transform is not None or (is_train and is_random_transform(self.cfg))
        cache = self.feature_cache() if (use_cache is None or use_cache) else None
        data = self._split_data(split)
        ds = self.dm.dataset
        key = None
        if cache is not None:
            sig = transform_signature(self.cfg, is_train)
            if transform_name:
                sig["method_transform"] = transform_name
            key = {"encoder": self.encoder_key(), "dataset": ds.name, "dataset_name": self.cfg.DATASET.NAME,
                   "split_hash": ds.split_hash, "split": split, "images": data_fingerprint(data),
                   "transform": sig}
        tfm = transform if transform is not None else (self.dm.tfm_train if is_train else self.dm.tfm_test)
        return build_feature_bank(self.encode_images, ds, data, tfm, base_key=key, cache=cache,
                                  random_views=random_views, num_views=max(int(self.cache_cfg.NUM_VIEWS), 1),
                                  seed=self._view_seed(), batch_size=self.cfg.DATALOADER.TEST.BATCH_SIZE,
                                  num_workers=self.cfg.DATALOADER.NUM_WORKERS, device=self.device)

    def note_view_bank(self, bank: FeatureBank, what: str = "training views", random_views: Optional[bool] = None) -> None:
        """Record the bank-of-views protocol deviation in ``self.warnings`` (copied into the run
        record and every table) when ``bank`` holds random augmented views (``random_views``;
        default: whether the config's training pipeline is random). A deterministic pipeline's
        single view is exact and is not noted."""
        if random_views if random_views is not None else is_random_transform(self.cfg):
            msg = (f"protocol deviation: {what} come from a bank of {bank.num_views} augmented view(s) per "
                   f"training image (MODEL.FEATURE_CACHE.NUM_VIEWS = {int(self.cache_cfg.NUM_VIEWS)}) instead "
                   "of a fresh augmentation every epoch; see docs/methods.md, 'Image-feature cache'")
            self.warnings = list(getattr(self, "warnings", []))
            if msg not in self.warnings:
                self.warnings.append(msg)

    def uses_cached_training(self) -> bool:
        """Whether training features come from the cache: always for a deterministic training
        pipeline (exact), and with ``NUM_VIEWS`` > 0 for a random one (a bank of views)."""
        if not self.cache_enabled:
            return False
        if self.TRAIN_PIPELINE == "test" or not is_random_transform(self.cfg):
            return True
        return int(self.cache_cfg.NUM_VIEWS) > 0


class FrozenImageEncoderTrainer(FeatureBankMixin, TrainerX):
    """TrainerX whose methods consume frozen image features (see module doc)."""

    def _as_features(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device).float() if x.dim() == 2 else self.encode_images(x)

    def parse_batch_train(self, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(features [B, E], labels [B])`` from a cached batch or an image batch."""
        x = batch["feat"] if "feat" in batch else batch["img"]
        return self._as_features(x), batch["label"].to(self.device)

    def parse_batch_test(self, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        x = batch["feat"] if "feat" in batch else batch["img"]
        return x.to(self.device), batch["label"].to(self.device)

    def model_inference(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` or features ``[B, E]`` -> ``[B, C]`` logits."""
        return self.inference_features(self._as_features(x))

    def inference_features(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, E]`` unnormalised image features -> ``[B, C]`` logits.

        Default: ``self.model.forward_features(feats)`` (CoOp, CoCoOp, CLIP-Adapter heads)."""
        return self.model.forward_features(feats)

    def forward_backward(self, batch) -> Dict[str, float]:
        """Default step: cross-entropy on ``self.model.forward_features(feats)`` under
        :meth:`autocast`, then :meth:`step_and_report` (CoOp, CoCoOp, CLIP-Adapter)."""
        feats, labels = self.parse_batch_train(batch)  # [B, E] frozen image features (cached or live)
        with self.autocast():
            logits = self.model.forward_features(feats)
        return self.step_and_report(logits, labels)

    # -- loop --------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> None:
        """As :meth:`SimpleTrainer.train`, with training batches from the cache when it applies."""
        if self.REQUIRES_TRAINING and self.uses_cached_training() and self.train_loader_x is not None \
                and not isinstance(self.train_loader_x, CachedFeatureLoader):
            t0 = time.time()
            bank = self.feature_bank("train")
            if self.TRAIN_PIPELINE == "train":
                self.note_view_bank(bank)
            self._image_train_loader = self.train_loader_x
            self.train_loader_x = CachedFeatureLoader(
                bank, batch_size=self._image_train_loader.batch_size, drop_last=self._image_train_loader.drop_last,
                generator=self.loader_generator, sample_seed=max(int(self.cfg.SEED), 0))
            self.timings["feature_cache_s"] = self.timings.get("feature_cache_s", 0.0) + time.time() - t0
        super().train(resume)

    def before_epoch(self) -> None:
        if isinstance(self.train_loader_x, CachedFeatureLoader):
            self.train_loader_x.set_epoch(self.epoch)

    def _feature_test_loader(self, split: str):
        bank = self.feature_bank(split)
        bs = self.cfg.DATALOADER.TEST.BATCH_SIZE
        return [{"feat": bank.features[0, i:i + bs], "label": bank.labels[i:i + bs]}
                for i in range(0, len(bank), bs)]

    def test(self, split: Optional[str] = None) -> Dict:
        """As :meth:`SimpleTrainer.test`, reading test/val features from the cache when enabled."""
        split = split or self.cfg.TEST.SPLIT
        if not self.cache_enabled or split not in ("val", "test"):
            return super().test(split)
        attr = "val_loader" if split == "val" else "test_loader"
        original = getattr(self, attr)
        t0 = time.time()
        setattr(self, attr, self._feature_test_loader(split))
        self.timings["feature_cache_s"] = self.timings.get("feature_cache_s", 0.0) + time.time() - t0
        try:
            return super().test(split)
        finally:
            setattr(self, attr, original)


class FrozenClassTextCacheMixin(ClassTextCacheMixin):
    """:class:`medpt.engine.trainer.ClassTextCacheMixin` for :class:`FrozenImageEncoderTrainer` methods.

    The class text features are computed once per test pass; :meth:`inference_features` maps
    ``[B, E]`` unnormalised image features to ``[B, C]`` logits with
    ``self.model.forward_features(feats, text_features=...)``. Use it first among the bases:
    ``class M(FrozenClassTextCacheMixin, FrozenImageEncoderTrainer)``.
    """

    #: keep the frozen trainer's images-or-features entry point (not the mixin's image one).
    model_inference = FrozenImageEncoderTrainer.model_inference

    def inference_features(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, E]`` unnormalised image features -> ``[B, C]`` logits (cached text features)."""
        return self.model.forward_features(feats, text_features=self._test_text)


def image_loader(trainer: TrainerX, split: str, pipeline: str = "test") -> DataLoader:
    """A sequential image loader over ``split`` with the ``pipeline`` transform (helper for tests
    and tools that want the uncached path explicitly)."""
    from ..engine.data import DatasetWrapper

    tfm = trainer.dm.tfm_train if pipeline == "train" else trainer.dm.tfm_test
    data = {"train": trainer.dm.dataset.train_x, "val": trainer.dm.dataset.val, "test": trainer.dm.dataset.test}[split]
    return DataLoader(DatasetWrapper(trainer.dm.dataset, data, tfm), batch_size=trainer.cfg.DATALOADER.TEST.BATCH_SIZE,
                      shuffle=False, num_workers=0)


class TeacherFeatureBankMixin(FeatureBankMixin):
    """Frozen-encoder features of the training images from the shared cache, for methods whose
    own image pass is prompted but which also use the frozen encoder on the same images
    (PromptSRC's and DePT's teacher, AAPL's clean and partner features).

    Put it first in the bases (``class PromptSRC(TeacherFeatureBankMixin, ..., TrainerX)``).
    When :meth:`uses_cached_training` holds (cache enabled and a deterministic training pipeline,
    or ``MODEL.FEATURE_CACHE.NUM_VIEWS`` > 0), :meth:`train` swaps the training loader for one
    over :class:`~medpt.clip.feature_cache.BankViewDataset`: each batch carries the images
    (view ``v`` of image ``i``, regenerated exactly as the bank encoded it) and their bank features
    ``batch["teacher_feat"]`` ``[B, E]``, so :meth:`teacher_features` costs nothing. With a random
    pipeline and ``NUM_VIEWS`` 0 (default) nothing changes: every image is freshly augmented and
    the teacher runs live (the exact protocol). Same sampler and generator as the image loader.
    """

    @property
    def teacher_bank(self) -> Optional[BankViewDataset]:
        """The training loader's :class:`BankViewDataset`, or ``None`` (teacher runs live)."""
        ds = getattr(self.train_loader_x, "dataset", None)
        return ds if isinstance(ds, BankViewDataset) else None

    def teacher_features(self, batch, images: torch.Tensor) -> torch.Tensor:
        """``[B, E]`` unnormalised float32 frozen features of ``images`` (the batch's images):
        ``batch["teacher_feat"]`` when the loader serves them, else the frozen encoder now."""
        if "teacher_feat" in batch:
            return batch["teacher_feat"].to(self.device).float()
        return self.encode_images(images)

    def attach_teacher_bank(self, bank: FeatureBank) -> None:
        """Serve training batches from ``bank`` (the ``train`` split through the training
        pipeline, with this run's view seed), keeping the image loader's sampler and settings."""
        img = self.train_loader_x
        tfm = getattr(getattr(img, "dataset", None), "transform", None)
        if tfm is not self.dm.tfm_train:
            raise ValueError(f"{type(self).__name__}: the training loader does not use the config's training "
                             "transform, so the feature bank's views would not be its images")
        random_views = is_random_transform(self.cfg)
        ds = BankViewDataset(self.dm.dataset, self._split_data("train"), self.dm.tfm_train,
                             self._view_seed() if random_views else None, bank,
                             sample_seed=max(int(self.cfg.SEED), 0))
        self._image_train_loader = img
        self.train_loader_x = DataLoader(ds, batch_size=img.batch_size, shuffle=True, drop_last=img.drop_last,
                                         generator=self.loader_generator, num_workers=img.num_workers,
                                         pin_memory=img.pin_memory)

    def train(self, resume: bool = False) -> None:
        """As the base ``train``, with the teacher bank attached when the cache applies."""
        if self.uses_cached_training() and self.train_loader_x is not None and self.teacher_bank is None \
                and getattr(self.train_loader_x.dataset, "transform", None) is self.dm.tfm_train:
            t0 = time.time()
            bank = self.feature_bank("train")
            self.note_view_bank(bank)
            self.attach_teacher_bank(bank)
            self.timings["feature_cache_s"] = self.timings.get("feature_cache_s", 0.0) + time.time() - t0
        super().train(resume)

    def before_epoch(self) -> None:
        if self.teacher_bank is not None:
            self.teacher_bank.set_epoch(self.epoch)
        super().before_epoch()
