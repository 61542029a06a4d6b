"""Knowledge files: schema, class lists vs readers (with failing cases), shipped == curated,
the XCoOp/TCP helpers, the fallback, and the LM generator round-trip with a tiny random Llama."""
from __future__ import annotations

import json

import pytest

from medpt.engine import DATASET_REGISTRY
from medpt.knowledge import (KnowledgeError, available_datasets, check_all_registered, class_knowledge,
                             clinical_prompt, load_knowledge, tcp_template, validate_knowledge)
from medpt.knowledge.build import dumps
from medpt.knowledge.curated import DATASETS, build_dataset_knowledge

IDS = ["adam", "aptos2019", "chaoyang", "cpn_xray", "dermamnist", "derm7pt", "fetal_us", "isic2018", "kvasir",
       "odir", "pneumonia", "pneumonia_sample", "pneumoniamnist"]


def test_every_dataset_ships_a_valid_file():
    assert available_datasets() == sorted(IDS)
    for d in IDS:
        k = load_knowledge(d)
        assert list(k["classes"]) == [c for c, _ in DATASETS[d][1]]
        for c, v in k["classes"].items():
            assert len(v["descriptions"]) == 60 and len(set(v["descriptions"])) == 60, (d, c)
            assert len(v["vip_descriptors"]) == 4 and len(v["clinical_concepts"]) == 5
        assert k["templates"]["hand"].count("{}") == 1


def test_shipped_files_equal_the_curated_source():
    for d in IDS:
        from medpt.knowledge import knowledge_path
        assert knowledge_path(d).read_text(encoding="utf-8") == dumps(build_dataset_knowledge(d)), d


def test_registered_readers_match():
    checked = check_all_registered()
    assert "pneumonia" in checked and "pneumonia_sample" in checked
    for d in checked:
        assert list(load_knowledge(d, "descriptions")) == list(DATASET_REGISTRY.get(d).classnames)


def test_schema_violation_names_file_and_key(tmp_path):
    obj = load_knowledge("pneumonia_sample")
    obj["classes"]["normal"]["descriptions"] = obj["classes"]["normal"]["descriptions"][:10]
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(obj))
    with pytest.raises(KnowledgeError, match=r"bad\.json: schema violation at 'classes/normal/descriptions'"):
        load_knowledge("pneumonia_sample", path=p)
    with pytest.raises(KnowledgeError, match="same number of descriptions"):
        obj2 = load_knowledge("pneumonia_sample")
        obj2["classes"]["normal"]["descriptions"].append("An extra sentence.")
        validate_knowledge(obj2, "x.json")


def test_class_mismatch_with_reader_names_file_and_class(tmp_path):
    obj = load_knowledge("pneumonia")
    obj["classes"]["viral pneumonia"] = obj["classes"].pop("virus pneumonia")
    p = tmp_path / "pneumonia.json"
    p.write_text(json.dumps(obj))
    with pytest.raises(KnowledgeError, match=r"pneumonia\.json: class 'virus pneumonia' \(label 2\) of reader "
                                             r"Pneumonia \('pneumonia'\) is missing from the file"):
        load_knowledge("pneumonia", path=p)
    obj = load_knowledge("pneumonia")
    obj["classes"] = dict(reversed(list(obj["classes"].items())))
    p.write_text(json.dumps(obj))
    with pytest.raises(KnowledgeError, match="class order differs"):
        load_knowledge("pneumonia", path=p)
    with pytest.raises(KnowledgeError, match="no knowledge file for dataset 'nope'"):
        load_knowledge("nope")


def test_helpers():
    assert clinical_prompt("melanoma", ["a blue-white veil", "irregular streaks"]) == \
        "a photo of a melanoma, a blue-white veil, irregular streaks."
    assert load_knowledge("pneumonia", "clinical_prompts")[1].startswith(
        "a photo of a bacteria pneumonia, lobar or segmental consolidation, ")
    t = load_knowledge("isic2018", "templates")
    assert t == {"hand": "a photo of a {}, a type of skin lesion.", "tcp": "X X X X {}, a type of skin lesion."}
    assert tcp_template(t["tcp"], 2) == "X X {}, a type of skin lesion."


def test_class_knowledge_fallback_warns():
    with pytest.warns(UserWarning, match=r"\['red'\]"):
        out = class_knowledge("pneumonia_sample", ["normal", "red"], "descriptions")
    assert out[0] == load_knowledge("pneumonia_sample", "descriptions")["normal"]
    assert len(out[1]) == 50 and all("red" in s for s in out[1])


def _tiny_lm(tmp_path):
    """A 2-layer random Llama and a word-level tokenizer built offline, saved to ``tmp_path``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "<s>", "</s>"] + sorted(set(
        "a the of in and with shows lesion image brown blue network border colour shape texture . , : ? "
        "Question Answer describe one sentence feature melanoma nevus chest x-ray opacity".split()))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>",
                                   eos_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      pad_token_id=0, bos_token_id=2, eos_token_id=3)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(tmp_path)
    fast.save_pretrained(tmp_path)
    return tmp_path


def test_generator_round_trip_with_tiny_random_lm(tmp_path):
    from medpt.knowledge.generate import main

    path = _tiny_lm(tmp_path / "lm")
    out = tmp_path / "gen.json"
    assert main(["--model", str(path), "--dataset", "derm7pt", "--classnames", "melanoma,nevus",
                 "--out", str(out), "--n-descriptions", "50", "--max-new-tokens", "6", "--device", "cpu"]) == 0
    obj = json.loads(out.read_text())
    validate_knowledge(obj, str(out))
    assert list(obj["classes"]) == ["melanoma", "nevus"]
    assert all(len(v["descriptions"]) == 50 for v in obj["classes"].values())
    assert obj["templates"] == load_knowledge("derm7pt", "templates")
    # the generated file feeds the trainers' look-up
    desc = class_knowledge("my_derm", ["nevus"], "descriptions", path=out)
    assert desc == [obj["classes"]["nevus"]["descriptions"]]
    with pytest.raises(ValueError, match="n_descriptions must be >= 50"):
        main(["--model", str(path), "--dataset", "derm7pt", "--classnames", "melanoma", "--out", str(out),
              "--n-descriptions", "10"])
