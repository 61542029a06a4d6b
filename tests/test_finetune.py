"""Full fine-tuning row: untrained it equals zero-shot CLIP; it learns; counts are exact."""
import torch

from conftest import tiny_cfg
from medpt.datasets import SeparableSynthetic
from medpt.engine import TRAINER_REGISTRY, DataManager
from medpt.trainers.finetune import FineTunedCLIP
from medpt.trainers.zsclip import ZeroShotModel, zero_shot_text_features


def test_untrained_full_finetune_equals_zero_shot(tiny_clip):
    head = zero_shot_text_features(tiny_clip.model, tiny_clip.tokenizer, ["a", "b c"], ["a photo of a {}."])
    ft = FineTunedCLIP(tiny_clip.model, head)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ft(x), ZeroShotModel(tiny_clip.model, head)(x), rtol=1e-5, atol=1e-5)


def test_full_finetune_learns_and_counts_the_image_tower(tmp_path):
    ds = SeparableSynthetic(tmp_path / "d", classnames=("red", "green"), n_train=8, n_test=8)
    cfg = tiny_cfg("fullft", output_dir=tmp_path / "r", opts=["OPTIM.MAX_EPOCH", "8", "OPTIM.LR", "1e-3",
                                                              "DATALOADER.TRAIN_X.BATCH_SIZE", "4"])
    t = TRAINER_REGISTRY.get("fullft")(cfg, dm=DataManager(cfg, ds))
    visual = sum(p.numel() for p in t.model.visual.parameters())
    assert t.count_trainable_params() == visual + 2 * 64
    t.train()
    assert t.history[-1]["loss"] < t.history[0]["loss"]
    assert t.test()["acc"] >= 90.0
