"""Shared cache of frozen, unprompted image-encoder features (safetensors on disk).

Methods whose image encoder is frozen and sees no prompt (zero-shot CLIP, linear probe, CoOp,
CoCoOp, KgCoOp, CLIP-Adapter, TCP, ...) only ever need ``encode_image(x)`` of each image. This
module encodes each image once and reuses the features across methods, runs and (where the
protocol allows) seeds. Source of the idea: methods.md §10 ("CPU fast path"), design.md "Speed".

**What a cache entry is.** One ``.safetensors`` file per (image list, view): tensors
``features`` ``[N, E]`` float32 (unnormalised ``encode_image`` outputs, E = 512 for ViT-B/16)
and ``labels`` ``[N]`` int64, in the order of the split's :class:`~medpt.engine.data.Datum` list.
The file name is the sha256 of the entry's key; the key (canonical JSON) is also stored in the
file's metadata and checked on load, so a hash collision or a hand-copied file cannot be read
as another entry.

**What the key covers** (every input that changes the features; a changed input misses):

* the image encoder: open_clip model name, weights id, and a sha256 of the visual tower's
  parameters and buffers (so weights changed in place, e.g. by a test, miss too); the device
  type and precision the features were computed with (``fp32`` / bf16 ``amp``); torch, open_clip,
  torchvision and Pillow versions;
* the data: dataset name, ``split_hash``, split name, and a fingerprint of the exact image list
  (path, label, file size, modification time in ns; the cache does not read file contents);
* the transform: ``INPUT.{SIZE, INTERPOLATION, TRANSFORMS, NO_TRANSFORM, PIXEL_MEAN, PIXEL_STD,
  RRCROP_SCALE}`` and whether the train or the test pipeline is used;
* the view: view index and, for random (augmented) views only, the view seed.

**Random augmentation** (protocol deviation, see docs/methods.md "Image-feature cache"): a bank
of V augmented views per training image is encoded once (view ``v`` of image ``i`` is the train
transform applied under a torch seed derived from ``(seed, v, i)``, independent of the loader's
order and worker count); each epoch every image uses one view drawn from the bank (see
:class:`CachedFeatureLoader`). Deterministic pipelines (test transform, ``INPUT.NO_TRANSFORM``,
no random op in ``INPUT.TRANSFORMS``) have exactly one view and no seed in the key, so their
features are identical to encoding on the fly.

Writes are atomic (temporary file in the same folder + ``os.replace``), so concurrent runs can
share one folder: the worst case is that two runs encode the same entry.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

#: Bumped when the file layout or the key's meaning changes (old entries then miss).
CACHE_FORMAT_VERSION = 1

#: Environment variable naming the cache folder when ``MODEL.FEATURE_CACHE.DIR`` is empty.
CACHE_ENV = "MEDPT_FEATURE_CACHE"

_RANDOM_OPS = ("random_resized_crop", "random_flip")


def default_cache_dir() -> Path:
    """``$MEDPT_FEATURE_CACHE`` if set, else ``~/.cache/medpt/features``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medpt" / "features"


def resolve_cache_dir(cfg) -> Path:
    """The cache folder of a run: ``MODEL.FEATURE_CACHE.DIR``, or :func:`default_cache_dir`."""
    d = str(cfg.MODEL.FEATURE_CACHE.DIR or "").strip()
    return Path(d).expanduser() if d else default_cache_dir()


def canonical_json(obj) -> str:
    """Deterministic JSON (sorted keys, no spaces) used for keys and their digests."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def module_fingerprint(module: nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names, dtypes, shapes, bytes).

    Costs one pass over the weights (well under a second for ViT-B/16's 86M parameters).
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.device.type == "meta":
            raise ValueError("module_fingerprint: a meta tensor has no data to fingerprint")
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_fingerprint(data: Sequence) -> str:
    """sha256 of a split's image list in order: ``(impath, label, size, mtime_ns)`` per datum.

    ``impath`` may be an array reference ``"<file>#<key>"``; the file part is stat-ed.

    Raises:
        FileNotFoundError: an image file is missing (names it).
    """
    h = hashlib.sha256()
    for d in data:
        path = d.impath.split("#", 1)[0]
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"feature cache: image file not found: {path}") from None
        h.update(f"{d.impath}|{int(d.label)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def is_random_transform(cfg) -> bool:
    """Whether the train pipeline of ``cfg`` is random (random crop or flip enabled)."""
    return (not cfg.INPUT.NO_TRANSFORM) and any(op in cfg.INPUT.TRANSFORMS for op in _RANDOM_OPS)


def transform_signature(cfg, is_train: bool) -> Dict:
    """Every ``cfg.INPUT`` value :func:`medpt.engine.data.build_transform` reads."""
    import PIL
    import torchvision

    inp = cfg.INPUT
    return {
        "pipeline": "train" if is_train else "test",
        "size": list(inp.SIZE), "interpolation": inp.INTERPOLATION, "transforms": list(inp.TRANSFORMS),
        "no_transform": bool(inp.NO_TRANSFORM), "mean": list(inp.PIXEL_MEAN), "std": list(inp.PIXEL_STD),
        "rrcrop_scale": list(inp.RRCROP_SCALE), "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
    }


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (sha256; stable across processes and platforms)."""
    digest = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class SeededViewDataset(Dataset):
    """Items ``{"img": [3, H, W], "label": int, "index": int}``; with ``seed`` given, item ``i`` is
    transformed under ``torch.manual_seed(derive_seed(seed, view, i))`` inside a forked RNG, so a
    random view depends only on ``(seed, view, i)``."""

    def __init__(self, dataset, data: Sequence, transform: Callable, seed: Optional[int] = None, view: int = 0):
        self.dataset, self.data, self.transform = dataset, list(data), transform
        self.seed, self.view = seed, view

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        return self.view_item(i, self.view)

    def view_item(self, i: int, view: int) -> dict:
        """Item ``i`` as seen in view ``view`` (the same tensor :func:`encode_data` encodes)."""
        d = self.data[i]
        img = self.dataset.read_image(d.impath)
        if self.seed is None:
            x = self.transform(img)
        else:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed would also reseed every CUDA generator,
                # which fork_rng(devices=[]) does not restore (the transforms draw on the CPU)
                torch.default_generator.manual_seed(derive_seed(self.seed, view, i))
                x = self.transform(img)
        return {"img": x, "label": d.label, "index": i, "impath": d.impath}


class BankViewDataset(SeededViewDataset):
    """Training images paired with their frozen features from a :class:`FeatureBank`.

    Item ``i`` is view ``views[i]`` of image ``i``, regenerated exactly as the bank encoded it
    (same seed, view and transform), plus ``"teacher_feat"`` ``[E]``: that view's bank feature.
    Trainers whose own image pass is prompted but which also need the frozen encoder's features of
    the same image (PromptSRC's teacher, AAPL's clean features) read them from here instead of
    running the frozen tower at every step. :meth:`set_epoch` draws each image's view for an
    epoch exactly as :class:`CachedFeatureLoader` does.

    Args:
        dataset, data, transform, seed: as :class:`SeededViewDataset` (``seed`` ``None`` for a
            deterministic pipeline, which has one view).
        bank: the split's :class:`FeatureBank` built with the same ``transform`` and ``seed``.
        sample_seed: seeds the per-epoch view draw.

    Raises:
        ValueError: the bank and ``data`` differ in length.
    """

    def __init__(self, dataset, data: Sequence, transform: Callable, seed: Optional[int], bank: "FeatureBank",
                 sample_seed: int = 0):
        super().__init__(dataset, data, transform, seed)
        if len(bank) != len(self.data):
            raise ValueError(f"feature bank has {len(bank)} images, the split {len(self.data)}")
        self.bank = bank
        self.sample_seed = sample_seed
        self.views = torch.zeros(len(self.data), dtype=torch.long)

    def set_epoch(self, epoch: int) -> None:
        """Choose each image's view for ``epoch`` (0-based); the same draw as :class:`CachedFeatureLoader`."""
        self.views = draw_views(self.bank, epoch, self.sample_seed)

    def __getitem__(self, i: int) -> dict:
        return self.item_with_feature(i, int(self.views[i]))

    def item_with_feature(self, i: int, view: int) -> dict:
        """Item ``i`` in ``view`` with that view's bank feature (e.g. AAPL's partner image)."""
        item = self.view_item(i, view)
        item["teacher_feat"] = self.bank.features[view, i]
        return item


@torch.no_grad()
def encode_data(encode_fn: Callable[[torch.Tensor], torch.Tensor], dataset, data: Sequence, transform: Callable,
                *, batch_size: int = 100, num_workers: int = 0, device="cpu", seed: Optional[int] = None,
                view: int = 0) -> torch.Tensor:
    """Encode every image of ``data`` in order.

    Args:
        encode_fn: ``[B, 3, H, W] -> [B, E]`` (the trainer's frozen image encoder).
        dataset: the :class:`~medpt.engine.data.DatasetBase` whose ``read_image`` opens files.
        data: the :class:`~medpt.engine.data.Datum` list.
        transform: image transform (train or test pipeline).
        seed, view: see :class:`SeededViewDataset` (``None``: no reseeding, deterministic pipelines).

    Returns:
        ``[N, E]`` float32 CPU tensor; the global torch RNG state is left untouched.
    """
    loader = DataLoader(SeededViewDataset(dataset, data, transform, seed, view), batch_size=batch_size,
                        shuffle=False, num_workers=min(num_workers, os.cpu_count() or 1))
    with torch.random.fork_rng(devices=[]):  # iterating a DataLoader draws from the global RNG
        out = [encode_fn(b["img"].to(device)).float().cpu() for b in loader]
    if not out:
        raise ValueError(f"{getattr(dataset, 'name', 'dataset')}: cannot encode an empty image list")
    return torch.cat(out)


class FeatureCache:
    """A folder of safetensors feature files addressed by key dicts.

    Args:
        directory: the cache folder (created on first write).

    Attributes:
        hits, misses: counters for this object's look-ups.
    """

    def __init__(self, directory: Path | str):
        self.directory = Path(directory).expanduser()
        self.hits = 0
        self.misses = 0

    def path(self, key: Dict) -> Path:
        """``<directory>/<sha256 of the canonical key>.safetensors``."""
        return self.directory / (hashlib.sha256(canonical_json(key).encode()).hexdigest() + ".safetensors")

    def load(self, key: Dict) -> Optional[Dict[str, torch.Tensor]]:
        """The tensors stored under ``key``, or ``None`` (missing, unreadable, or another key's file;
        the last two are logged and treated as a miss)."""
        from safetensors import safe_open

        p = self.path(key)
        if not p.is_file():
            return None
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("key") != canonical_json(key):
                    log.warning("feature cache: %s holds another key; ignoring it", p)
                    return None
                return {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # a truncated/corrupt file is a miss, never a crash
            log.warning("feature cache: cannot read %s (%s); recomputing", p, err)
            return None

    def save(self, key: Dict, tensors: Dict[str, torch.Tensor]) -> Path:
        """Write ``tensors`` under ``key`` atomically; returns the file's path."""
        from safetensors.torch import save_file

        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"key": canonical_json(key), "format": str(CACHE_FORMAT_VERSION)})
        os.replace(tmp, p)
        return p

    def get_or_compute(self, key: Dict, compute: Callable[[], Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """Load ``key``'s tensors, or compute, save and return them."""
        got = self.load(key)
        if got is not None:
            self.hits += 1
            return got
        self.misses += 1
        tensors = compute()
        self.save(key, tensors)
        return tensors


@dataclass
class FeatureBank:
    """Features of one split.

    Attributes:
        features: ``[V, N, E]`` float32 (V = 1 for deterministic pipelines).
        labels: ``[N]`` int64.
    """

    features: torch.Tensor
    labels: torch.Tensor

    @property
    def num_views(self) -> int:
        return int(self.features.shape[0])

    def __len__(self) -> int:
        return int(self.features.shape[1])

    def random_view(self) -> int:
        """A view index drawn uniformly with Python's ``random`` (checkpointed with the run's RNG
        state); 0 without drawing when there is one view."""
        return random.randrange(self.num_views) if self.num_views > 1 else 0


def build_feature_bank(encode_fn: Callable[[torch.Tensor], torch.Tensor], dataset, data: Sequence,
                       transform: Callable, *, base_key: Optional[Dict], cache: Optional[FeatureCache],
                       random_views: bool, num_views: int = 1, seed: int = 0, batch_size: int = 100,
                       num_workers: int = 0, device="cpu") -> FeatureBank:
    """Encode (or load) ``num_views`` views of ``data``.

    Args:
        base_key: the key's encoder/data/transform part (see module doc); ``None`` with no cache.
        cache: a :class:`FeatureCache`, or ``None`` to encode without storing.
        random_views: whether ``transform`` is random; if not, one view is built and no seed
            enters the key.
        num_views: views to build when ``random_views``.
        seed: view seed (random views only).

    Returns:
        A :class:`FeatureBank` (``[V, N, E]``).

    Raises:
        ValueError: ``num_views < 1`` for random views.
    """
    if random_views and num_views < 1:
        raise ValueError(f"MODEL.FEATURE_CACHE.NUM_VIEWS must be >= 1 for a random pipeline, got {num_views}")
    views = num_views if random_views else 1
    labels = torch.tensor([int(d.label) for d in data], dtype=torch.long)
    feats = []
    for v in range(views):
        vseed = seed if random_views else None

        def compute(v=v, vseed=vseed):
            f = encode_data(encode_fn, dataset, data, transform, batch_size=batch_size, num_workers=num_workers,
                            device=device, seed=vseed, view=v)
            return {"features": f, "labels": labels}

        if cache is None:
            t = compute()
        else:
            key = dict(base_key or {}, format=CACHE_FORMAT_VERSION, view=v,
                       view_seed=vseed if random_views else None)
            t = cache.get_or_compute(key, compute)
        if not torch.equal(t["labels"], labels):
            raise RuntimeError("feature cache: stored labels differ from the split's labels; delete "
                               f"{cache.path(key) if cache else 'the entry'} and rerun")
        feats.append(t["features"].float())
    return FeatureBank(torch.stack(feats), labels)


def draw_views(bank: "FeatureBank", epoch: int, sample_seed: int) -> torch.Tensor:
    """``[N]`` the view each image uses in ``epoch``: uniform over the bank's views, from a
    generator seeded by ``(sample_seed, epoch)`` (so a resumed run draws the same); all 0 for a
    single view."""
    if bank.num_views <= 1:
        return torch.zeros(len(bank), dtype=torch.long)
    g = torch.Generator().manual_seed(derive_seed(sample_seed, epoch, -1))
    return torch.randint(bank.num_views, (len(bank),), generator=g)


class CachedFeatureLoader:
    """Training batches from a :class:`FeatureBank`, in the order the image loader would use.

    The shuffling is a ``DataLoader(range(N), shuffle=True, generator=generator)``, which draws
    the same permutations from the same generator as the image ``DataLoader`` of
    :class:`~medpt.engine.data.DataManager` (the sampler depends only on N and the generator),
    so a deterministic pipeline gives exactly the batches of the uncached path, and the
    generator's state is what checkpoints save.

    Each epoch (:meth:`set_epoch`) picks one view per image, uniformly from the bank, from a
    generator seeded by ``(sample_seed, epoch)``: a resumed run makes the same picks.

    Batches are dicts ``{"feat": [B, E], "label": [B], "index": [B]}``.
    """

    def __init__(self, bank: FeatureBank, batch_size: int, drop_last: bool, generator: Optional[torch.Generator],
                 sample_seed: int = 0, shuffle: bool = True):
        self.bank = bank
        self.sample_seed = sample_seed
        self._index = DataLoader(range(len(bank)), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                                 generator=generator)
        self.views = torch.zeros(len(bank), dtype=torch.long)

    def set_epoch(self, epoch: int) -> None:
        """Choose each image's view for ``epoch`` (0-based)."""
        self.views = draw_views(self.bank, epoch, self.sample_seed)

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self):
        for idx in self._index:
            yield {"feat": self.bank.features[self.views[idx], idx], "label": self.bank.labels[idx], "index": idx}
