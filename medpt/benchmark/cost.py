"""Inference cost of a trained method: GFLOPs per image with torch's FLOP counter.

* ``image_gflops``: FLOPs of ``trainer.model_inference(images)`` on a batch of test images,
  divided by the batch size. Everything that runs per image is here: the image tower, and for
  instance-conditioned methods (CoCoOp, AAPL, CILMP ...) their per-image text passes.
* ``text_gflops``: FLOPs of ``trainer.before_test()``, the class-level work done once per test
  pass (class text features). Stated separately: it does not grow with the number of images.

Counted by :class:`torch.utils.flop_counter.FlopCounterMode` (matrix multiplications,
convolutions and attention; one multiply-add = 2 FLOPs). Per-image figures do not depend on the
batch size (tested). The paper's figure plots GFLOPs added over CoOp: ``image_gflops(method) -
image_gflops(CoOp)`` on the same backbone.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def measure_inference_cost(trainer, batch_size: int = 2) -> Dict[str, float]:
    """GFLOPs of one trained method (see module doc).

    Args:
        trainer: a built trainer (trained or not).
        batch_size: test images to count over (the result is per image).

    Returns:
        ``{"image_gflops": float, "text_gflops": float, "batch_size": int}``.
    """
    trainer.model.eval()
    loader = trainer.dm.test_loader  # images, even when a method reads cached features
    images = []
    for batch in loader:
        images.append(batch["img"])
        if sum(x.shape[0] for x in images) >= batch_size:
            break
    images = torch.cat(images)[:batch_size].to(trainer.device)
    with FlopCounterMode(display=False) as text_counter:
        trainer.before_test()
    with FlopCounterMode(display=False) as image_counter:
        trainer.model_inference(images)
    trainer.after_test()
    return {"image_gflops": image_counter.get_total_flops() / images.shape[0] / 1e9,
            "text_gflops": text_counter.get_total_flops() / 1e9,
            "batch_size": int(images.shape[0])}
