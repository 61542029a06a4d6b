"""Inference cost of a trained method: GFLOPs per image with torch's FLOP counter.

* ``image_gflops``: FLOPs of ``trainer.model_inference(images)`` on a batch of test images,
  divided by the batch size. Everything that runs per image is here: the image tower, and for
  instance-conditioned methods (CoCoOp, AAPL, CILMP ...) their per-image text passes.
* ``text_gflops``: FLOPs of ``trainer.before_test()``, the class-level work done once per test
  pass (class text features). Stated separately: it does not grow with the number of images.

Counted by :class:`torch.utils.flop_counter.FlopCounterMode` (matrix multiplications,
convolutions and attention; one multiply-add = 2 FLOPs). PyTorch's fused fast path of
``nn.MultiheadAttention`` (taken in eval mode without gradients) has no FLOP formula and would be
missed (a third of ViT-B/16's cost), so it is switched off while counting. Many papers, and
the attention core of CPU's scaled-dot-product kernel, which has no formula in torch's registry,
gets the same formula as the CUDA kernels. Many papers, and
fvcore/thop, report multiply-adds as "FLOPs" (ViT-B/16 at 224 px: ~17.5 G); the records carry
``image_gmacs`` = FLOPs / 2 for that comparison. Per-image figures do not depend on the batch size
(tested). The paper's figure plots GFLOPs added over CoOp: ``image_gflops(method) -
image_gflops(CoOp)`` on the same backbone.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_sdpa_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of PyTorch's CPU flash-attention kernel: same formula as the registered CUDA
    kernels (``torch.utils.flop_counter.sdpa_flop_count``), which the counter lacks for CPU."""
    return sdpa_flop_count(query, key, value)  # the counter passes shapes


#: FLOP formulas missing from torch's registry on CPU.
_CUSTOM = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}


@torch.no_grad()
def measure_inference_cost(trainer, batch_size: int = 2) -> Dict[str, float]:
    """GFLOPs of one trained method (see module doc).

    Args:
        trainer: a built trainer (trained or not).
        batch_size: test images to count over (the result is per image).

    Returns:
        ``{"image_gflops", "image_gmacs", "text_gflops": float, "batch_size": int}``.
    """
    trainer.model.eval()
    loader = trainer.dm.test_loader  # images, even when a method reads cached features
    images = []
    for batch in loader:
        images.append(batch["img"])
        if sum(x.shape[0] for x in images) >= batch_size:
            break
    images = torch.cat(images)[:batch_size].to(trainer.device)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False, custom_mapping=_CUSTOM) as text_counter:
            trainer.before_test()
        with FlopCounterMode(display=False, custom_mapping=_CUSTOM) as image_counter:
            trainer.model_inference(images)
        trainer.after_test()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    image = image_counter.get_total_flops() / images.shape[0] / 1e9
    return {"image_gflops": image, "image_gmacs": image / 2,
            "text_gflops": text_counter.get_total_flops() / 1e9,
            "batch_size": int(images.shape[0])}
