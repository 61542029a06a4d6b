"""Issue 9 optimisations keep the numbers: methods moved onto the frozen-image-feature path give
the same training step and logits from cached features as from images."""
from __future__ import annotations

import copy

import pytest
import torch

from medpt.datasets.synthetic import SeparableSynthetic
from medpt.engine.data import DataManager
from medpt.engine.registry import TRAINER_REGISTRY
from medpt.trainers._frozen import FrozenImageEncoderTrainer
from tests.conftest import tiny_cfg

CLASSES = ("normal", "bacteria pneumonia", "virus pneumonia")  # pneumonia_sample knowledge covers them


def _trainer(name, tmp_path):
    ds = SeparableSynthetic(tmp_path / "img", classnames=CLASSES, n_train=4, n_test=2)
    cfg = tiny_cfg(name, output_dir=tmp_path / name, opts=["DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.LR", "0.05",
                                                          "TRAIN.CHECKPOINT_FREQ", "0"])
    return TRAINER_REGISTRY.get(name)(cfg, dm=DataManager(cfg, dataset=ds))


@pytest.mark.parametrize("name", ["ViP", "BiomedCoOp"])
def test_step_and_logits_from_cached_features_equal_images(name, tmp_path):
    tr = _trainer(name, tmp_path)
    assert isinstance(tr, FrozenImageEncoderTrainer)
    batch = next(iter(tr.train_loader_x))
    feats = tr.encode_images(batch["img"])
    assert feats.shape == (4, 64)
    params = tr.trainable_parameters()
    start = [p.detach().clone() for p in params]
    opt_state = copy.deepcopy(tr._optims[tr.get_model_names()[0]].state_dict())

    tr.set_model_mode("train")
    out_img = tr.forward_backward(batch)
    after_img = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    tr._optims[tr.get_model_names()[0]].load_state_dict(opt_state)
    out_feat = tr.forward_backward({"feat": feats, "label": batch["label"], "index": batch["index"]})
    assert out_feat["loss"] == pytest.approx(out_img["loss"], rel=1e-5)
    assert any(not torch.equal(a, s) for a, s in zip(after_img, start))  # the step moved the parameters
    for a, b in zip(after_img, params):
        assert torch.allclose(a, b, atol=1e-6)

    tr.set_model_mode("eval")
    tr.before_test()
    x = next(iter(tr.test_loader))["img"]
    with torch.no_grad():
        assert torch.allclose(tr.model_inference(x), tr.model_inference(tr.encode_images(x)), atol=1e-5)
    tr.after_test()
    assert not any(p.requires_grad for p in tr.get_backbone().model.parameters())
