"""CILMP's LLM-representation extraction tool, on a tiny random Llama built inside the test."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from medpt.knowledge import llm_representations as lr

CLASSES = ["melanoma", "melanocytic_nevus", "basal cell carcinoma"]


@pytest.fixture(scope="module")
def tiny_llm():
    return lr.tiny_random_llama(seed=0, hidden_size=32, num_layers=2, extra_words=CLASSES)


def test_extraction_keeps_last_token_of_every_decoder_layer(tiny_llm):
    model, tok = tiny_llm
    rep = lr.extract_representations(model, tok, CLASSES, max_new_tokens=5)
    assert rep.representations.shape == (3, 2, 32) and rep.representations.dtype == torch.float32
    # rebuild class 1's sequence by hand: prompt ids + greedy answer, EOS appended if missing
    ids = tok(lr.DEFAULT_PROMPT.format("melanocytic nevus"), return_tensors="pt")["input_ids"]
    assert ids[0, 0] == tok.bos_token_id
    seq = ids
    with torch.no_grad():
        for _ in range(5):
            nxt = model(seq).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
            if int(nxt) == tok.eos_token_id:
                break
        if int(seq[0, -1]) != tok.eos_token_id:
            seq = torch.cat([seq, torch.tensor([[tok.eos_token_id]])], dim=1)
        hs = model(seq, output_hidden_states=True).hidden_states
    assert len(hs) == 3  # embeddings + 2 decoder layers; the embedding output is excluded
    expected = torch.stack([hs[1][0, -1], hs[2][0, -1]])
    torch.testing.assert_close(rep.representations[1], expected, rtol=1e-5, atol=1e-5)
    assert rep.texts[1] == tok.decode(seq[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert rep.metadata["generation"]["max_new_tokens"] == 5 and rep.metadata["generation"]["do_sample"] is False


def test_file_round_trip_with_metadata(tiny_llm, tmp_path):
    model, tok = tiny_llm
    rep = lr.extract_representations(model, tok, CLASSES, max_new_tokens=3, model_id="tiny")
    path = lr.save_representations(rep, tmp_path / "isic.safetensors", extra={"dataset": "isic2018"})
    back = lr.load_representations(path)
    assert torch.equal(back.representations, rep.representations)
    assert back.classnames == CLASSES and back.texts == rep.texts
    assert back.metadata["model"] == "tiny" and back.metadata["prompt"] == lr.DEFAULT_PROMPT
    assert back.metadata["dataset"] == "isic2018" and back.metadata["layer_convention"] == lr.LAYER_CONVENTION
    assert back.metadata["generation"]["greedy"] is True and back.num_layers == 2 and back.hidden_size == 32
    with safe_open(str(path), framework="pt") as f:  # the generated text is JSON in the file's metadata
        assert json.loads(f.metadata()["generated_text"]) == rep.texts
    # selection by (normalised) class name, in the requested order
    sel = lr.load_representations(path, ["basal cell carcinoma", "melanocytic nevus"])
    assert torch.equal(sel.representations, rep.representations[[2, 1]])
    with pytest.raises(KeyError, match="psoriasis"):
        lr.load_representations(path, ["melanoma", "psoriasis"])
    with pytest.raises(FileNotFoundError, match="REPRESENTATIONS"):
        lr.load_representations(tmp_path / "missing.safetensors")


def test_chat_template_is_used_when_present(tmp_path):
    model, tok = lr.tiny_random_llama(seed=1, extra_words=CLASSES)
    tok.chat_template = "{% for m in messages %}user {{ m['content'] }} {% endfor %}assistant"
    rep = lr.extract_representations(model, tok, CLASSES[:1], max_new_tokens=2)
    assert rep.metadata["generation"]["chat_template"] is True
    ids, chat = lr._prompt_ids(tok, "hi")
    assert chat and ids[0, -1] == tok.convert_tokens_to_ids("assistant")


def test_cli_writes_a_file_and_the_cache_key_is_stable(tmp_path):
    out = lr.main(["--model", lr.TINY_LLAMA_ID, "--classnames", "normal", "pneumonia", "--out",
                   str(tmp_path / "p.safetensors"), "--max-new-tokens", "2"])
    rep = lr.load_representations(out)
    assert rep.classnames == ["normal", "pneumonia"] and rep.representations.shape == (2, 2, 32)
    k = lr.cache_key("m", ["a", "b"], "q {}", 8)
    assert k == lr.cache_key("m", ["a", "b"], "q {}", 8) != lr.cache_key("m", ["b", "a"], "q {}", 8)
    with pytest.raises(ValueError, match="\\{\\}"):
        lr.extract_representations(*lr.tiny_random_llama(), ["a"], prompt="no slot")
