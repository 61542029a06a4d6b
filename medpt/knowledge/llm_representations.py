"""CILMP's concept-aware LLM representations: per class, the last token's hidden state at every
decoder layer of a causal LM after it answered a question about the class.

Recipe (CILMP paper §3.2.1; the official repo ``usr922/cilmp`` ships neither the files nor the
script, so the details follow the third-party fork ``LuckyE993/cilmp``'s
``scripts/generate_llm_representations.py`` notes, see methods.md §8.1):

1. ask ``prompt.format(class)`` (default :data:`DEFAULT_PROMPT`, the paper's question), wrapped in
   the tokenizer's chat template when it has one (``add_generation_prompt=True``), otherwise
   tokenised as plain text with the tokenizer's special tokens;
2. greedy generation (``do_sample=False``) of at most ``max_new_tokens`` tokens (128);
3. the end-of-sequence token is appended when generation stopped on the length bound;
4. the full sequence (question + answer + EOS) is run again with ``output_hidden_states=True``
   and the LAST position is kept from every decoder layer: ``hidden_states[1:]`` in
   transformers' convention (the embedding output is excluded; the last entry is the final
   decoder layer after the model's final norm, as transformers returns it) -> ``[L, H]`` float32.

File format (one safetensors file per dataset): tensor ``representations`` ``[C, L, H]`` float32
(unnormalised) in class order, and string metadata: ``format`` (:data:`FORMAT`), ``model``,
``prompt``, ``generation`` (JSON: greedy, max_new_tokens, chat_template, eos_appended),
``layer_convention``, ``classnames`` (JSON list), ``generated_text`` (JSON list, class order),
``num_layers``, ``hidden_size``, and anything passed as ``extra``.

Any model loads by hub name or local path through transformers (``.gguf`` files through
transformers' GGUF loader, e.g. the Gemma 3 270M package of offline-assets.md). With no model at
hand, :func:`tiny_random_llama` builds a seeded random 2-layer Llama and a word-level tokenizer
without any download (tests, and the trainer's last-resort fallback, which warns loudly).

CLI::

    python -m medpt.knowledge.llm_representations --model meta-llama/Meta-Llama-3-8B-Instruct \\
        --dataset isic2018 --out llm_representations/isic2018.safetensors
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

log = logging.getLogger(__name__)

#: The paper's question (§3.2.1); ``{}`` is the class name.
DEFAULT_PROMPT = "In an image, describe the distinctive visual features of {}"
#: Format tag written to (and checked in) every file.
FORMAT = "medpt-llm-representations-v1"
LAYER_CONVENTION = ("last token of the full sequence (prompt + greedy answer + EOS) at every decoder layer: "
                    "transformers hidden_states[1:] (embedding output excluded; the last entry is after the "
                    "model's final norm)")
TINY_LLAMA_ID = "medpt-random-tiny-llama"

__all__ = ["DEFAULT_PROMPT", "FORMAT", "RepresentationFile", "tiny_random_llama", "load_causal_lm",
           "extract_representations", "save_representations", "load_representations", "cache_key", "main"]


@dataclass
class RepresentationFile:
    """A loaded representation file.

    Attributes:
        representations: ``[C, L, H]`` float32.
        classnames: ``C`` class names (file order).
        texts: ``C`` generated answers.
        metadata: every metadata field (JSON fields decoded).
        path: where it was read from (``None`` when built in memory).
    """

    representations: torch.Tensor
    classnames: List[str]
    texts: List[str]
    metadata: Dict[str, object] = field(default_factory=dict)
    path: Optional[Path] = None

    @property
    def num_layers(self) -> int:
        return int(self.representations.shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self.representations.shape[2])

    def select(self, classnames: Sequence[str]) -> "RepresentationFile":
        """The rows of ``classnames`` in that order (exact name, then ``_``/case-normalised).

        Raises:
            KeyError: a class is not in the file (the message names the file and how to fix it).
        """
        def norm(s: str) -> str:
            return s.replace("_", " ").strip().lower()

        exact = {c: i for i, c in enumerate(self.classnames)}
        loose = {norm(c): i for i, c in enumerate(self.classnames)}
        idx, missing = [], []
        for c in classnames:
            i = exact.get(c, loose.get(norm(c)))
            (missing.append(c) if i is None else idx.append(i))
        if missing:
            raise KeyError(f"LLM representation file {self.path or '<memory>'} has no entry for classes {missing} "
                           f"(it holds {self.classnames}); regenerate it for this dataset with "
                           "python -m medpt.knowledge.llm_representations")
        return RepresentationFile(self.representations[idx].clone(), [self.classnames[i] for i in idx],
                                  [self.texts[i] for i in idx], dict(self.metadata), self.path)


def tiny_random_llama(seed: int = 0, hidden_size: int = 32, num_layers: int = 2, extra_words: Sequence[str] = ()):
    """A seeded, randomly initialised ``LlamaForCausalLM`` and a word-level tokenizer, no download.

    The vocabulary is the words of :data:`DEFAULT_PROMPT`, ``extra_words`` and a few fillers (every
    other word maps to ``<unk>``). Seeding does not touch the global RNG state.

    Returns:
        ``(model, tokenizer)``: eval-mode fp32 model (``hidden_size``, ``num_layers`` decoder layers,
        4 heads) and a ``PreTrainedTokenizerFast`` (``<s>`` prepended, ``</s>`` = EOS, no chat template).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    words = []
    for w in (DEFAULT_PROMPT.replace("{}", "").split() + [w for s in extra_words for w in s.split()]
              + "the a of and with lesion image shows irregular border colour pattern round dark".split()):
        w = w.lower()
        if w not in words:
            words.append(w)
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>")
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.name_or_path = TINY_LLAMA_ID
    return model.eval(), tokenizer


def load_causal_lm(name_or_path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load a causal LM and its tokenizer by hub name or local path (folder or ``.gguf`` file).

    Raises:
        OSError / ValueError from transformers when the model cannot be found or loaded (the caller
        decides whether to fall back).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(name_or_path)
    kw = {}
    src = name_or_path
    if p.suffix == ".gguf":
        if not p.is_file():
            raise FileNotFoundError(f"GGUF file {p} does not exist")
        src, kw = str(p.parent), {"gguf_file": p.name}
    tokenizer = AutoTokenizer.from_pretrained(src, **kw)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kw).to(device).eval()
    return model, tokenizer


def _prompt_ids(tokenizer, question: str) -> Tuple[torch.Tensor, bool]:
    """``[1, T]`` ids of the question (chat template when the tokenizer has one)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                             tokenize=False)
        return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"], True
    return tokenizer(question, return_tensors="pt")["input_ids"], False


@torch.no_grad()
def extract_representations(model, tokenizer, classnames: Sequence[str], prompt: str = DEFAULT_PROMPT,
                            max_new_tokens: int = 128, model_id: Optional[str] = None) -> RepresentationFile:
    """Generate an answer per class and keep the last token's hidden state of every decoder layer.

    Args:
        model: a transformers causal LM (eval mode).
        tokenizer: its tokenizer.
        classnames: ``C`` class names (``_`` -> space in the question).
        prompt: question with one ``{}``.
        max_new_tokens: generation bound (greedy).
        model_id: name recorded in the metadata (default ``model.name_or_path``).

    Returns:
        :class:`RepresentationFile` with ``representations`` ``[C, L, H]`` float32 (``L`` decoder
        layers, ``H`` hidden size), the generated texts and the metadata.

    Raises:
        ValueError: ``prompt`` has no ``{}``, ``max_new_tokens < 1`` or no class names.
    """
    if "{}" not in prompt:
        raise ValueError(f"the LLM prompt must contain '{{}}' for the class name, got '{prompt}'")
    if max_new_tokens < 1 or not classnames:
        raise ValueError("max_new_tokens must be >= 1 and at least one class name is needed")
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id
    if isinstance(eos, (list, tuple)):
        eos = eos[0]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    reps, texts, chat, appended = [], [], False, []
    for name in classnames:
        ids, chat = _prompt_ids(tokenizer, prompt.format(name.replace("_", " ")))
        ids = ids.to(device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
                             temperature=None, top_p=None, top_k=None)
        seq = out[:1]
        add = int(seq[0, -1]) != eos
        if add:
            seq = torch.cat([seq, torch.tensor([[eos]], device=device, dtype=seq.dtype)], dim=1)
        appended.append(add)
        texts.append(tokenizer.decode(seq[0, ids.shape[1]:], skip_special_tokens=True).strip())
        hs = model(input_ids=seq, attention_mask=torch.ones_like(seq), output_hidden_states=True).hidden_states
        reps.append(torch.stack([h[0, -1].float() for h in hs[1:]]).cpu())
    r = torch.stack(reps)
    meta = {"format": FORMAT, "model": model_id or getattr(model, "name_or_path", "") or type(model).__name__,
            "prompt": prompt, "layer_convention": LAYER_CONVENTION, "classnames": list(classnames),
            "generated_text": texts, "num_layers": r.shape[1], "hidden_size": r.shape[2],
            "generation": {"greedy": True, "do_sample": False, "max_new_tokens": max_new_tokens,
                           "chat_template": chat, "eos_appended": appended}}
    return RepresentationFile(r, list(classnames), texts, meta)


def save_representations(rep: RepresentationFile, path: str | Path, extra: Optional[Dict[str, object]] = None) -> Path:
    """Write ``rep`` to a safetensors file (atomically); non-string metadata is JSON-encoded."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(rep.metadata)
    meta.update({"classnames": list(rep.classnames), "generated_text": list(rep.texts), "format": FORMAT,
                 "num_layers": rep.num_layers, "hidden_size": rep.hidden_size})
    meta.update(extra or {})
    smeta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"representations": rep.representations.float().contiguous()}, str(tmp), metadata=smeta)
    tmp.replace(path)
    return path


def load_representations(path: str | Path, classnames: Optional[Sequence[str]] = None) -> RepresentationFile:
    """Read a file written by :func:`save_representations` (optionally selecting ``classnames``).

    Raises:
        FileNotFoundError: no file.
        ValueError: not a representation file (missing tensor/metadata, wrong rank or class count).
        KeyError: a requested class is missing (see :meth:`RepresentationFile.select`).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LLM representation file {path} does not exist (TRAINER.CILMP.REPRESENTATIONS); "
                                "create it with python -m medpt.knowledge.llm_representations")
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
        if "representations" not in f.keys() or raw.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file (needs tensor 'representations' and format metadata)")
        r = f.get_tensor("representations").float()
    meta: Dict[str, object] = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v) if k not in ("format", "model", "prompt", "layer_convention") else v
        except json.JSONDecodeError:
            meta[k] = v
    names, texts = list(meta.get("classnames", [])), list(meta.get("generated_text", []))
    if r.dim() != 3 or r.shape[0] != len(names) or len(texts) != len(names):
        raise ValueError(f"{path}: tensor {tuple(r.shape)} does not match {len(names)} class names / "
                         f"{len(texts)} texts (expected [C, L, H])")
    rep = RepresentationFile(r, names, texts, meta, path)
    return rep.select(classnames) if classnames is not None else rep


def cache_key(model_id: str, classnames: Sequence[str], prompt: str, max_new_tokens: int) -> str:
    """Stable 16-hex key of (model, class names, prompt, generation bound) for cached files."""
    blob = json.dumps([model_id, list(classnames), prompt, int(max_new_tokens)], ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _dataset_classnames(name: str) -> List[str]:
    from ..engine.registry import DATASET_REGISTRY
    from .. import datasets  # noqa: F401  (registers the readers)

    reader = DATASET_REGISTRY.get(name)
    names = list(getattr(reader, "classnames", ()) or ())
    if not names:
        raise ValueError(f"dataset reader '{name}' declares no class names; pass --classnames")
    return names


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """CLI entry point (see the module docstring); returns the written path."""
    ap = argparse.ArgumentParser(prog="python -m medpt.knowledge.llm_representations",
                                 description="Extract CILMP's per-class LLM representations into a safetensors file.")
    ap.add_argument("--model", required=True, help=f"hub name, local folder or .gguf file ('{TINY_LLAMA_ID}': "
                                                   "seeded random tiny Llama, for testing only)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="registered dataset reader whose class names to use")
    src.add_argument("--classnames", nargs="+", help="explicit class names (label order)")
    ap.add_argument("--out", required=True, help="output .safetensors path")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--seed", type=int, default=0, help="seed of the random tiny Llama")
    a = ap.parse_args(argv)
    names = a.classnames or _dataset_classnames(a.dataset)
    if a.model == TINY_LLAMA_ID:
        model, tok = tiny_random_llama(a.seed, extra_words=names)
    else:
        model, tok = load_causal_lm(a.model, a.device, getattr(torch, a.dtype))
    rep = extract_representations(model, tok, names, a.prompt, a.max_new_tokens, model_id=a.model)
    out = save_representations(rep, a.out, extra={"dataset": a.dataset or ""})
    print(f"wrote {out}: {rep.representations.shape[0]} classes x {rep.num_layers} layers x {rep.hidden_size}")
    return out


if __name__ == "__main__":  # pragma: no cover
    main()
