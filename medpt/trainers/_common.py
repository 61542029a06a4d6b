"""Helpers shared by several trainers (not a trainer: underscore modules are not auto-registered).

* :func:`dataset_template`: the hand-crafted template a method uses (KgCoOp, TCP, CLIP-Adapter);
* :func:`template_text_features`: that template and its frozen zero-shot class text features
  (KgCoOp's and TCP's class knowledge ``w``, CLIP-Adapter's classifier).

Sources: ``htyao89/KgCoOp:trainers/kgcoop.py`` (``CUSTOM_TEMPLATES`` + ``text_features_old``),
``htyao89/Textual-based_Class-aware_prompt_tuning:trainers/tcp.py``,
``gaopengcuhk/CLIP-Adapter:clip_adapter.py``; the per-dataset template comes from the dataset
reader (methods.md).
"""
from __future__ import annotations

from typing import Tuple

import torch

from .zsclip import zero_shot_text_features


def dataset_template(trainer, override: str = "") -> str:
    """The hand-crafted template a method uses: ``override`` if given, else the dataset reader's
    ``templates[0]``, else "a photo of a {}.".

    Raises:
        ValueError: the template has no ``{}`` slot (names the source).
    """
    if override:
        t, src = override, f"TRAINER.{trainer.CONFIG_KEY}.TEMPLATE"
    else:
        ts = list(getattr(trainer.dm.dataset, "templates", ()) or ())
        t, src = (ts[0] if ts else "a photo of a {}."), f"{trainer.dm.dataset.name}.templates[0]"
    if "{}" not in t:
        raise ValueError(f"{src}: template {t!r} has no '{{}}' slot for the class name")
    return t


def template_text_features(trainer, override: str = "") -> Tuple[str, torch.Tensor]:
    """``(template, [C, E] text features)``: :func:`dataset_template` and the frozen CLIP text
    features of that template filled with each of ``trainer.classnames`` (as returned by
    :func:`medpt.trainers.zsclip.zero_shot_text_features` for one template).

    Raises:
        ValueError: the template has no ``{}`` slot (see :func:`dataset_template`).
    """
    template = dataset_template(trainer, override)
    bb = trainer.get_backbone()
    return template, zero_shot_text_features(bb.model, bb.tokenizer, trainer.classnames, [template])
