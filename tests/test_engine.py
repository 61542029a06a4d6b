"""Engine: registries, config merge order and errors, Dassl's learning-rate sequence, seeding."""
import math

import pytest
import torch
from yacs.config import CfgNode as CN

from medpt.engine import (TRAINER_REGISTRY, ConfigError, Registry, build_config, build_lr_scheduler,
                          get_cfg_default)
from medpt.engine.optim import build_optimizer, dassl_lr_sequence


def test_registry_duplicate_and_typo():
    reg = Registry("widget")

    @reg.register()
    class Alpha:
        pass

    @reg.register("Beta", aliases=("b",))
    class B:
        pass

    assert reg.get("alpha") is Alpha and reg.get("ALPHA") is Alpha
    assert reg.get("b") is B and reg.canonical("b") == "Beta"
    assert reg.names() == ["Alpha", "Beta"]
    with pytest.raises(KeyError, match="already registered"):
        reg.register("alpha")(type("Other", (), {}))
    with pytest.raises(KeyError, match="Did you mean 'Alpha'"):
        reg.get("alpah")


def test_unknown_method_and_dataset_suggest_close_names():
    with pytest.raises(KeyError, match="Did you mean 'CoOp'"):
        build_config("cop", "pneumonia_sample")
    with pytest.raises(KeyError, match="pneumonia_sample"):
        build_config("coop", "pneumonia_sampel")


def test_trainer_defaults_live_beside_the_trainer_and_merge_order(tmp_path):
    cfg = build_config("coop", "pneumonia_sample", trainer_config="vit_b16")
    assert cfg.TRAINER.NAME == "CoOp"
    assert cfg.TRAINER.COOP.N_CTX == 16 and cfg.OPTIM.LR == 0.002 and cfg.OPTIM.MAX_EPOCH == 200
    # protocol after trainer yaml, opts last
    cfg = build_config("coop", "pneumonia_sample", protocol="demo", opts=["OPTIM.MAX_EPOCH", "3"])
    assert cfg.OPTIM.MAX_EPOCH == 3 and cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 4
    assert cfg.MODEL.BACKBONE.ALLOW_RANDOM_INIT is True
    # the ctxv1 variant: 4 context vectors from a phrase
    cfg = build_config("coop", None, trainer_config="vit_b16_ctxv1")
    assert cfg.TRAINER.COOP.CTX_INIT == "a photo of a"
    assert cfg.is_frozen()
    # another trainer's node does not exist
    assert "ZSCLIP" not in cfg.TRAINER


def test_unknown_config_key_is_named_with_its_source(tmp_path):
    with pytest.raises(ConfigError, match=r"command-line opts: unknown config key 'OPTIM.LRR'.*OPTIM.LR"):
        build_config("coop", "pneumonia_sample", opts=["OPTIM.LRR", "0.1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("TRAINER:\n  COOP:\n    N_CTXX: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'TRAINER.COOP.N_CTXX'"):
        build_config("coop", "pneumonia_sample", trainer_config=str(bad))
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        build_config("coop", "pneumonia_sample", trainer_config=str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="odd number"):
        build_config("coop", "pneumonia_sample", opts=["OPTIM.LR"])
    with pytest.raises(ConfigError, match="Unknown protocol 'papr'"):
        build_config("coop", "pneumonia_sample", protocol="papr")


def test_paper_protocol_refuses_random_init():
    with pytest.raises(ConfigError, match="never computed on random weights"):
        build_config("coop", "pneumonia_sample", protocol="paper",
                     opts=["MODEL.BACKBONE.ALLOW_RANDOM_INIT", "True"])


def _lrs(optim_cfg, epochs):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], optim_cfg)
    sched = build_lr_scheduler(opt, optim_cfg)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out, opt, sched


def test_dassl_cosine_with_constant_warmup_sequence():
    o = get_cfg_default().OPTIM
    o.LR, o.MAX_EPOCH, o.LR_SCHEDULER = 0.002, 10, "cosine"
    o.WARMUP_EPOCH, o.WARMUP_TYPE, o.WARMUP_CONS_LR = 1, "constant", 1e-5
    lrs, _, _ = _lrs(o, 10)
    expected = dassl_lr_sequence(0.002, 10)
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # hand-computed: epoch 0 warm-up, epoch 1 the base rate, epoch 6 base * (1 + cos(pi/2)) / 2
    assert lrs[0] == 1e-5 and lrs[1] == pytest.approx(0.002) and lrs[6] == pytest.approx(0.001)
    assert lrs[-1] == pytest.approx(0.002 * (1 + math.cos(math.pi * 8 / 10)) / 2)


def test_scheduler_state_round_trip_gives_same_sequence():
    o = get_cfg_default().OPTIM
    o.LR, o.MAX_EPOCH, o.LR_SCHEDULER = 0.01, 6, "cosine"
    o.WARMUP_EPOCH, o.WARMUP_TYPE = 1, "constant"
    full, _, _ = _lrs(o, 6)
    first, opt, sched = _lrs(o, 3)
    p = torch.nn.Parameter(torch.zeros(1))
    opt2 = build_optimizer([p], o)
    sched2 = build_lr_scheduler(opt2, o)
    sched2.load_state_dict(sched.state_dict())
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
    rest = []
    for _ in range(3):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert first + rest == pytest.approx(full)


def test_unknown_optimizer_and_no_params():
    o = get_cfg_default().OPTIM
    o.NAME = "sgdd"
    with pytest.raises(ValueError, match="OPTIM.NAME 'sgdd'"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], o)
    o.NAME = "adamw"
    with pytest.raises(ValueError, match="no trainable parameter"):
        build_optimizer(torch.nn.Linear(2, 2).requires_grad_(False), o)


def test_every_registered_trainer_declares_its_config():
    from medpt import trainers  # noqa: F401

    for name in TRAINER_REGISTRY.names():
        cls = TRAINER_REGISTRY.get(name)
        if cls.CONFIG_KEY:
            assert isinstance(cls.config_defaults(), CN), name
        cfg = build_config(name, "pneumonia_sample", protocol="demo")
        assert cfg.TRAINER.NAME == name
