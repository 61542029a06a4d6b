"""Class knowledge as data: per-dataset JSON files shipped in ``medpt/knowledge/data/``.

One file per dataset id (``<dataset_id>.json``), checked against :data:`SCHEMA` (jsonschema) on
every load and, when a reader of that id is registered in ``DATASET_REGISTRY``, against the
reader's class list (same names, same label order). A file holds:

* ``templates.hand``: the hand-crafted class text of KgCoOp / TCP / CLIP-Adapter (one ``{}``),
  following the official pattern ``"a photo of a {}, a type of pet."``;
* ``templates.tcp``: TCP's second template, ``"X X X X {}, ..."`` (the X words are its context
  slots; :func:`tcp_template` resizes them to any N_CTX);
* per class, keyed by the CILMP class name in label order:
  ``prompt_name`` (a prompt-friendly name), ``descriptions`` (>= 50 LLM-style visual descriptions,
  the same count for every class: BiomedCoOp, CoPrompt), ``vip_descriptors`` (ViP's short
  visual-symptom descriptors), ``clinical_concepts`` (XCoOp's clinical concepts; the prompt is
  ``"a photo of a {name}, c1, c2, ..."``, see :func:`clinical_prompts`).

The shipped files are built from :mod:`medpt.knowledge.curated` (``python -m medpt.knowledge.build``)
and can be regenerated with any local causal LM (``python -m medpt.knowledge.generate``).
See docs/knowledge.md.
"""
from __future__ import annotations

import functools
import hashlib
import json
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import jsonschema

KNOWLEDGE_DIR = Path(__file__).resolve().parent / "data"

#: minimum number of descriptions per class (BiomedCoOp's N_PROMPTS = 50).
MIN_DESCRIPTIONS = 50

_STR_LIST = {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}

#: JSON schema of a knowledge file (draft 2020-12).
SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema_version", "dataset", "modality", "templates", "classes"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"const": 1},
        "dataset": {"type": "string", "minLength": 1},
        "modality": {"type": "string", "minLength": 1},
        "generator": {"type": "string"},
        "templates": {
            "type": "object", "required": ["hand", "tcp"], "additionalProperties": False,
            "properties": {
                "hand": {"type": "string", "pattern": r"^[^{}]*\{\}[^{}]*$"},
                "tcp": {"type": "string", "pattern": r"^(X )+[^{}X]*\{\}[^{}]*$"},
            },
        },
        "classes": {
            "type": "object", "minProperties": 1,
            "additionalProperties": {
                "type": "object", "additionalProperties": False,
                "required": ["prompt_name", "descriptions", "vip_descriptors", "clinical_concepts"],
                "properties": {
                    "prompt_name": {"type": "string", "minLength": 1},
                    "descriptions": {**_STR_LIST, "minItems": MIN_DESCRIPTIONS},
                    "vip_descriptors": _STR_LIST,
                    "clinical_concepts": _STR_LIST,
                },
            },
        },
    },
}

KINDS = ("all", "descriptions", "vip", "concepts", "clinical_prompts", "templates", "prompt_names")
_FIELD = {"descriptions": "descriptions", "vip": "vip_descriptors", "concepts": "clinical_concepts",
          "prompt_names": "prompt_name"}


class KnowledgeError(ValueError):
    """A knowledge file is missing, malformed, or disagrees with its dataset's class list."""


def knowledge_path(dataset_id: str) -> Path:
    """``medpt/knowledge/data/<dataset_id>.json`` (lower-cased id)."""
    return KNOWLEDGE_DIR / f"{str(dataset_id).lower()}.json"


def available_datasets() -> List[str]:
    """Dataset ids that ship a knowledge file, sorted."""
    return sorted(p.stem for p in KNOWLEDGE_DIR.glob("*.json"))


def validate_knowledge(obj: dict, source: str = "<knowledge>") -> None:
    """Check ``obj`` against :data:`SCHEMA` and the equal-count rule.

    Raises:
        KnowledgeError: naming ``source``, the JSON path of the first violation and the class.
    """
    try:
        jsonschema.validate(obj, SCHEMA)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise KnowledgeError(f"{source}: schema violation at '{where}': {e.message}") from None
    counts = {c: len(v["descriptions"]) for c, v in obj["classes"].items()}
    if len(set(counts.values())) > 1:
        raise KnowledgeError(f"{source}: every class needs the same number of descriptions (CoPrompt stacks "
                             f"them); got {counts}")


def check_classnames(obj: dict, classnames: Sequence[str], source: str, who: str) -> None:
    """Check the file's classes equal ``classnames`` (same names, same order).

    Raises:
        KnowledgeError: naming ``source``, ``who`` (the reader) and the first differing class.
    """
    keys = list(obj["classes"])
    names = list(classnames)
    for i in range(max(len(keys), len(names))):
        k = keys[i] if i < len(keys) else None
        n = names[i] if i < len(names) else None
        if k != n:
            if n is None:
                msg = f"class '{k}' (label {i}) is in the file but not in {who}"
            elif k is None:
                msg = f"class '{n}' (label {i}) of {who} is missing from the file"
            elif n in keys:
                msg = f"label {i} is '{n}' in {who} but '{k}' in the file (class order differs)"
            else:
                msg = f"class '{n}' (label {i}) of {who} is missing from the file (file has '{k}')"
            raise KnowledgeError(f"{source}: {msg}. The file's classes must be the reader's class names in "
                                 f"label order: {names}. Fix the file or regenerate it "
                                 "(python -m medpt.knowledge.generate).")


def _registered_classnames(dataset_id: str):
    """(reader name, class names) of the registered reader ``dataset_id``, or ``None``."""
    from ..engine.registry import DATASET_REGISTRY
    from .. import datasets  # noqa: F401  (registers the readers)

    if dataset_id not in DATASET_REGISTRY:
        return None
    reader = DATASET_REGISTRY.get(dataset_id)
    names = list(getattr(reader, "classnames", ()) or ())
    return (f"reader {reader.__name__} ('{dataset_id}')", names) if names else None


def _read(path: str) -> dict:
    """Parse and validate a knowledge file; the validated object is cached by the file's content
    (a sha256 of its bytes), so an edited file is always re-read, however fast the edit."""
    data = Path(path).read_bytes()
    return _parse(path, hashlib.sha256(data).hexdigest(), data)


@functools.lru_cache(maxsize=64)
def _parse(path: str, digest: str, data: bytes) -> dict:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KnowledgeError(f"{path}: not valid JSON ({e})") from None
    validate_knowledge(obj, str(path))
    return obj


def load_knowledge(dataset_id: str, kind: str = "all", path: Optional[str | Path] = None,
                   check_registry: bool = True):
    """Load and check a dataset's knowledge file.

    Args:
        dataset_id: e.g. ``"isic2018"``.
        kind: ``"all"`` (the whole validated dict), ``"descriptions"`` / ``"vip"`` / ``"concepts"``
            (dict class name -> list of strings, label order), ``"prompt_names"`` (dict class ->
            str), ``"clinical_prompts"`` (list of XCoOp prompt strings, label order),
            ``"templates"`` (dict with ``hand`` and ``tcp``).
        path: read this file instead of the shipped one (e.g. a regenerated file).
        check_registry: compare the classes with the registered reader ``dataset_id`` if any.

    Raises:
        KnowledgeError: no file, schema violation, or a class mismatch with the reader (the message
            names the file and the class).
        ValueError: unknown ``kind``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got '{kind}'")
    p = Path(path) if path else knowledge_path(dataset_id)
    if not p.is_file():
        raise KnowledgeError(f"no knowledge file for dataset '{dataset_id}' ({p}); shipped: "
                             f"{', '.join(available_datasets())}. Generate one with "
                             "python -m medpt.knowledge.generate.")
    obj = _read(str(p.resolve()))
    if check_registry:
        reg = _registered_classnames(dataset_id)
        if reg is not None:
            check_classnames(obj, reg[1], str(p), reg[0])
    if kind == "all":
        return json.loads(json.dumps(obj))  # a copy: the cache stays pristine
    if kind == "templates":
        return dict(obj["templates"])
    if kind == "clinical_prompts":
        return [clinical_prompt(c, v["clinical_concepts"]) for c, v in obj["classes"].items()]
    field = _FIELD[kind]
    return {c: (list(v[field]) if isinstance(v[field], list) else v[field]) for c, v in obj["classes"].items()}


def clinical_prompt(classname: str, concepts: Sequence[str]) -> str:
    """XCoOp's clinical prompt: ``"a photo of a {classname}, c1, c2, ..."`` (class ``_`` -> space)."""
    return "a photo of a " + ", ".join([classname.replace("_", " ")] + list(concepts)) + "."


def tcp_template(template: str, n_ctx: int) -> str:
    """Resize the ``X`` context words of a TCP template to ``n_ctx`` (e.g. 4 -> ``"X X X X {}, ..."``).

    Raises:
        ValueError: ``template`` does not start with X words, or ``n_ctx < 1``.
    """
    words = template.split(" ")
    i = 0
    while i < len(words) and words[i] == "X":
        i += 1
    if i == 0 or n_ctx < 1:
        raise ValueError(f"TCP template must start with 'X' words and n_ctx >= 1: '{template}', n_ctx={n_ctx}")
    return " ".join(["X"] * n_ctx + words[i:])


#: generic fallback sentences for classes without knowledge (10 openers x 5 forms = 50).
_GENERIC_OPENERS = ("a medical image", "a clinical image", "an image", "a photo", "a diagnostic image",
                    "a close-up image", "a scan", "a picture", "a clinical photograph", "a medical photograph")
_GENERIC_FORMS = ("{o} of {n}.", "{o} showing {n}.", "{o} with visual features of {n}.",
                  "{o} in which {n} is visible.", "{o} that depicts {n}.")
GENERIC_TEMPLATE = "a photo of a {}."


def generic_knowledge(classname: str, kind: str):
    """Knowledge for a class no file covers: class-name-only text, no medical claims.

    ``descriptions``: 50 sentences ("a medical image of {name}." ...); ``vip``: 4 descriptors;
    ``concepts``: ``[name]``; ``prompt_names``: the name.
    """
    n = classname.replace("_", " ")
    if kind == "descriptions":
        return [f.format(o=o, n=n) for f in _GENERIC_FORMS for o in _GENERIC_OPENERS]
    if kind == "vip":
        return [f"Visual appearance of {n}", f"Typical shape of {n}", f"Typical colour of {n}",
                f"Typical texture of {n}"]
    if kind == "concepts":
        return [n]
    if kind == "prompt_names":
        return n
    raise ValueError(f"no generic knowledge of kind '{kind}'")


def class_knowledge(dataset_id: str, classnames: Sequence[str], kind: str = "descriptions",
                    path: Optional[str | Path] = None) -> list:
    """Per-class knowledge in the order of ``classnames``, for a trainer.

    The dataset's file is used when it exists; a class is matched by exact name, then by name
    with ``_``/case normalised. A class the file does not cover, or a dataset without a file
    (e.g. the synthetic test set), gets :func:`generic_knowledge` and a ``UserWarning`` naming
    the classes: methods degrade gracefully to class-name-only text instead of failing.

    Args:
        dataset_id: ``cfg.DATASET.NAME``.
        classnames: the trainer's class names (label order).
        kind: ``descriptions``, ``vip``, ``concepts`` or ``prompt_names``.
        path: an explicit knowledge file (overrides the shipped one).

    Returns:
        ``[C]`` list: of lists of strings, or of strings for ``prompt_names``.

    Raises:
        KnowledgeError: the file exists but is malformed or disagrees with the registered reader.
    """
    table: Dict[str, object] = {}
    if path or (dataset_id and knowledge_path(dataset_id).is_file()):
        table = load_knowledge(dataset_id, kind, path=path)
    norm = {k.replace("_", " ").lower(): v for k, v in table.items()}
    out, missing = [], []
    for c in classnames:
        v = table.get(c, norm.get(c.replace("_", " ").lower()))
        if v is None:
            missing.append(c)
            v = generic_knowledge(c, kind)
        out.append(v)
    if missing:
        warnings.warn(f"no '{kind}' knowledge for dataset '{dataset_id}' classes {missing}: using generic "
                      "class-name text (see docs/knowledge.md to write or generate a knowledge file)",
                      UserWarning, stacklevel=2)
    return out


def hand_template(dataset_id: str, kind: str = "hand") -> str:
    """The dataset's KgCoOp/TCP hand template (``kind`` ``hand`` or ``tcp``); for a dataset
    without a file, ``"a photo of a {}."`` (``"X X X X {}."`` for tcp) with a ``UserWarning``."""
    if dataset_id and knowledge_path(dataset_id).is_file():
        return load_knowledge(dataset_id, "templates")[kind]
    warnings.warn(f"no knowledge file for dataset '{dataset_id}': using the generic template", UserWarning,
                  stacklevel=2)
    return GENERIC_TEMPLATE if kind == "hand" else "X X X X {}."


def check_all_registered() -> List[str]:
    """Load every shipped file whose dataset id has a registered reader (schema + class list).

    Returns:
        The dataset ids checked.

    Raises:
        KnowledgeError: the first file that fails.
    """
    checked = []
    for d in available_datasets():
        load_knowledge(d)
        if _registered_classnames(d) is not None:
            checked.append(d)
    return checked


__all__ = ["KNOWLEDGE_DIR", "SCHEMA", "MIN_DESCRIPTIONS", "KnowledgeError", "knowledge_path", "available_datasets",
           "validate_knowledge", "check_classnames", "load_knowledge", "clinical_prompt", "tcp_template",
           "generic_knowledge", "class_knowledge", "hand_template", "check_all_registered", "GENERIC_TEMPLATE"]
