"""Regenerate a knowledge file with any local causal language model (transformers).

Usage::

    python -m medpt.knowledge.generate --model <hub name or local path> --dataset isic2018 \\
        --out my_isic2018.json [--n-descriptions 60] [--max-new-tokens 48] [--device cpu]

For each class (the dataset's reader or the shipped file gives the class names in label order;
``--classnames`` overrides) the model answers one question per description, per ViP descriptor and
per clinical concept; the questions vary the visual aspect asked about (:data:`ASPECTS`), so greedy
decoding gives different answers. Decoding is greedy and bounded (``max_new_tokens``); the model's
chat template is used when the tokenizer has one. The first sentence of each answer is kept. The
output follows :data:`medpt.knowledge.SCHEMA` and is validated before it is written; templates are
taken from the shipped file (or the generic ones). Use the file with e.g.
``TRAINER.BIOMEDCOOP.DESCRIPTION_FILE`` or ``TRAINER.VIP.DESCRIPTOR_FILE``, or put it at
``medpt/knowledge/data/<dataset>.json``.

Generated text is not medically reviewed: check it before use.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from . import MIN_DESCRIPTIONS, KnowledgeError, knowledge_path, load_knowledge, validate_knowledge, \
    _registered_classnames

#: visual aspects the questions cycle through.
ASPECTS = ("shape", "colour", "texture", "border", "size", "location", "distribution", "brightness or density",
           "internal structure", "surrounding tissue")
_DESC_Q = ("Describe the {a} of {c} as seen in {m}, in one sentence.",
           "In one sentence, what {a} does {c} show in {m}?",
           "Give one visual feature of {c} in {m} concerning its {a}.",
           "How does the {a} help recognise {c} in {m}? Answer in one sentence.",
           "State one characteristic {a} finding of {c} in {m}.",
           "Write one sentence a radiologist or clinician would use to describe the {a} of {c} in {m}.")
_VIP_Q = "Name one visual symptom of {c} in {m} related to its {a}, in a short phrase."
_CONCEPT_Q = "Name one clinical concept (a finding) of {c} in {m} related to its {a}, in a few words."


def first_sentence(text: str) -> str:
    """First sentence/line of ``text``, whitespace-collapsed ("" when empty)."""
    text = " ".join(text.strip().split())
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    return (m.group(1) if m else text).strip()


class LMGenerator:
    """Greedy, bounded generation with a local causal LM.

    Args:
        model: hub name or local path (``AutoModelForCausalLM`` / ``AutoTokenizer``), or a loaded model.
        tokenizer: a tokenizer when ``model`` is a loaded model.
        max_new_tokens: generation bound.
        device: torch device string.
        batch_size: prompts per ``generate`` call (left padding).
    """

    def __init__(self, model, tokenizer=None, max_new_tokens: int = 48, device: str = "cpu", batch_size: int = 16):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, (str, Path)):
            tokenizer = AutoTokenizer.from_pretrained(str(model))
            model = AutoModelForCausalLM.from_pretrained(str(model))
        if tokenizer is None:
            raise ValueError("pass the tokenizer of a loaded model")
        self.model = model.to(device).eval()
        self.tok = tokenizer
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.batch_size = batch_size

    def _prompt(self, q: str) -> str:
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                add_generation_prompt=True)
        return f"Question: {q}\nAnswer:"

    @torch.no_grad()
    def answer(self, questions: Sequence[str]) -> List[str]:
        """First sentence of the greedy answer to each question."""
        out = []
        for i in range(0, len(questions), self.batch_size):
            prompts = [self._prompt(q) for q in questions[i:i + self.batch_size]]
            enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            gen = self.model.generate(**enc, do_sample=False, max_new_tokens=self.max_new_tokens,
                                      min_new_tokens=1, pad_token_id=self.tok.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            out += [first_sentence(t) for t in self.tok.batch_decode(new, skip_special_tokens=True)]
        return out


def _answers(gen: LMGenerator, questions: List[str], what: str, cls: str) -> List[str]:
    ans = gen.answer(questions)
    empty = [q for q, a in zip(questions, ans) if not a]
    if empty:
        raise KnowledgeError(f"the model gave empty {what} for class '{cls}' (e.g. to '{empty[0]}'); "
                             "try a larger max_new_tokens or another model")
    return ans


def generate_knowledge(gen: LMGenerator, dataset_id: str, classnames: Sequence[str], modality: str,
                       n_descriptions: int = 60, n_vip: int = 4, n_concepts: int = 5) -> dict:
    """Build a knowledge dict (schema of :data:`medpt.knowledge.SCHEMA`) with the LM.

    Raises:
        ValueError: ``n_descriptions`` below :data:`MIN_DESCRIPTIONS`.
        KnowledgeError: the model returned empty answers, or the result fails the schema.
    """
    if n_descriptions < MIN_DESCRIPTIONS:
        raise ValueError(f"n_descriptions must be >= {MIN_DESCRIPTIONS} (BiomedCoOp), got {n_descriptions}")
    if knowledge_path(dataset_id).is_file():
        shipped = load_knowledge(dataset_id, check_registry=False)
        templates, names = shipped["templates"], {c: v["prompt_name"] for c, v in shipped["classes"].items()}
    else:
        templates, names = {"hand": "a photo of a {}.", "tcp": "X X X X {}."}, {}
    m = modality
    obj = {"schema_version": 1, "dataset": dataset_id, "modality": modality,
           "generator": f"medpt.knowledge.generate ({getattr(gen.model, 'name_or_path', type(gen.model).__name__)})",
           "templates": templates, "classes": {}}
    for cls in classnames:
        c = names.get(cls, cls.replace("_", " "))
        dq = [_DESC_Q[(i // len(ASPECTS)) % len(_DESC_Q)].format(a=ASPECTS[i % len(ASPECTS)], c=c, m=m)
              for i in range(n_descriptions)]
        obj["classes"][cls] = {
            "prompt_name": c,
            "descriptions": _answers(gen, dq, "descriptions", cls),
            "vip_descriptors": _answers(gen, [_VIP_Q.format(a=ASPECTS[i % len(ASPECTS)], c=c, m=m)
                                              for i in range(n_vip)], "ViP descriptors", cls),
            "clinical_concepts": _answers(gen, [_CONCEPT_Q.format(a=ASPECTS[i % len(ASPECTS)], c=c, m=m)
                                                for i in range(n_concepts)], "clinical concepts", cls),
        }
    validate_knowledge(obj, f"generated knowledge for '{dataset_id}'")
    return obj


def _classnames(dataset_id: str, given: Optional[str]) -> List[str]:
    if given:
        return [s.strip() for s in given.split(",") if s.strip()]
    reg = _registered_classnames(dataset_id)
    if reg:
        return reg[1]
    if knowledge_path(dataset_id).is_file():
        return list(load_knowledge(dataset_id, "descriptions", check_registry=False))
    raise KnowledgeError(f"unknown class list for dataset '{dataset_id}': pass --classnames a,b,c")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="hub name or local path of a causal LM")
    ap.add_argument("--dataset", required=True, help="dataset id (e.g. isic2018)")
    ap.add_argument("--out", required=True, help="output JSON path")
    ap.add_argument("--classnames", default="", help="comma-separated class names in label order")
    ap.add_argument("--modality", default="", help='e.g. "a dermoscopic image" (default: from the shipped file)')
    ap.add_argument("--n-descriptions", type=int, default=60)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    names = _classnames(args.dataset, args.classnames)
    modality = args.modality
    if not modality:
        modality = ("a " + load_knowledge(args.dataset, check_registry=False)["modality"]
                    if knowledge_path(args.dataset).is_file() else "a medical image")
    gen = LMGenerator(args.model, max_new_tokens=args.max_new_tokens, device=args.device)
    obj = generate_knowledge(gen, args.dataset, names, modality, n_descriptions=args.n_descriptions)
    Path(args.out).write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(names)} classes x {args.n_descriptions} descriptions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
