"""Split generator, split files, few-shot and label-ratio subsets (no images needed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from medpt.datasets import splits as S
from medpt.datasets.aptos2019 import Aptos2019
from medpt.datasets.cpn_xray import CpnXray
from medpt.datasets.fewshot import cache_key, sample_few_shot, sample_label_ratio, subset_train
from medpt.datasets.kvasir import Kvasir
from medpt.datasets.medmnist import DermaMNIST
from medpt.datasets.odir import Odir
from medpt.engine.data import Datum, compute_split_hash


def _items(per_class, ext=".jpg"):
    # file names unsorted on purpose: the generator sorts them
    return [(f"c{c}/img_{(i * 7919) % 100003:06d}{ext}", c) for c, n in enumerate(per_class) for i in range(n)][::-1]


def _per_class(rows, key, n):
    out = [0] * n
    for _, l in rows[key]:
        out[l] += 1
    return out


def test_largest_remainder_hand_computed():
    assert S.largest_remainder([5, 4, 4], 9) == [3, 3, 3]        # quotas 3.46, 2.77, 2.77
    assert S.largest_remainder([1, 1], 1) == [1, 0]              # tie -> smaller label
    assert S.largest_remainder([1000] * 8, 5600) == [700] * 8
    with pytest.raises(ValueError):
        S.largest_remainder([1, 2], 4)


# Per-class numbers copied from datasets.md (§3.2, §3.4, §3.5, §3.9, §3.10).
PAPER = {
    "cpn_xray": (CpnXray, [1802, 1626, 1800], [1261, 1138, 1260], [541, 488, 540]),
    "kvasir": (Kvasir, [1000] * 8, [700] * 8, [300] * 8),
    "odir": (Odir, [2873, 1608, 284, 293, 266, 128, 232, 708], [2298, 1286, 227, 234, 213, 103, 186, 566],
             [575, 322, 57, 59, 53, 25, 46, 142]),
    "aptos2019": (Aptos2019, [1805, 370, 999, 193, 295], [1444, 296, 799, 155, 236], [361, 74, 200, 38, 59]),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_generator_reproduces_paper_counts(name):
    cls, per_class, train, test = PAPER[name]
    rows = cls.generate(_items(per_class))
    assert _per_class(rows, "train", len(per_class)) == train
    assert _per_class(rows, "test", len(per_class)) == test
    assert (sum(train), sum(test)) == cls.paper_counts
    assert rows["unused"] == []


def test_generator_reproduces_dermamnist_paper_counts():
    pool = [327, 514, 1099, 115, 1113, 6705, 142]  # the 10,015 HAM10000 images by MedMNIST label
    rows = DermaMNIST.generate(_items(pool), n_subset_paper=8000, pool_paper=10015)
    assert _per_class(rows, "train", 7) == [183, 288, 615, 64, 622, 3749, 79]
    assert _per_class(rows, "test", 7) == [78, 123, 263, 28, 267, 1607, 34]
    subset = [a + b for a, b in zip(_per_class(rows, "train", 7), _per_class(rows, "test", 7))]
    assert subset == [261, 411, 878, 92, 889, 5356, 113]
    assert len(rows["unused"]) == 10015 - 8000


def test_generator_is_deterministic_and_seeded():
    items = _items([30, 20, 10])
    a = S.generate_split(items, 3, 42, seed=0)
    b = S.generate_split(list(reversed(items)), 3, 42, seed=0)
    c = S.generate_split(items, 3, 42, seed=1)
    assert a == b
    assert a["train"] != c["train"] and len(c["train"]) == 42
    with pytest.raises(ValueError, match="duplicate"):
        S.generate_split(items + items[:1], 3, 42)
    with pytest.raises(ValueError, match="label 5"):
        S.generate_split(items + [("x.jpg", 5)], 3, 42)


def test_split_sha256_equals_engine_hash(tmp_path):
    rows = S.generate_split(_items([4, 3]), 2, 5)
    data = {k: [Datum(str(tmp_path / p), l) for p, l in rows[k]] for k in ("train", "test")}
    assert S.split_sha256(rows) == compute_split_hash(data, root=str(tmp_path))


def test_split_file_roundtrip_and_bad_rows(tmp_path):
    rows = S.generate_split(_items([4, 3]), 2, 5)
    meta = S.make_meta(rows, "demo", "generated", ["a", "b"], 0, "test")
    path = tmp_path / "splits" / "demo.json"
    assert S.write_split_file(path, rows, ["a", "b"], meta)
    obj = json.loads(path.read_text())
    assert obj["meta"]["counts_per_class"]["train"] == {"a": 3, "b": 2}
    assert obj["train"][0][2] in ("a", "b")
    back = S.read_split_file(path, 2, "demo")
    assert sorted(back["train"]) == rows["train"] and back["meta"]["split_sha256"] == S.split_sha256(rows)
    obj["test"][1] = [obj["test"][1][0], 7, "b"]
    path.write_text(json.dumps(obj))
    with pytest.raises(ValueError, match=r"'test' row 1: label 7"):
        S.read_split_file(path, 2, "demo")


def _data(per_class):
    return [Datum(f"/d/c{c}/{i:03d}.png", c) for c, n in enumerate(per_class) for i in range(n)]


def test_few_shot_k_per_class_seeded():
    train = _data([10, 6, 2])
    sub = sample_few_shot(train, 4, seed=1)
    assert [sum(d.label == c for d in sub) for c in range(3)] == [4, 4, 2]   # class 2 keeps all it has
    assert sub == sample_few_shot(list(reversed(train)), 4, seed=1)
    assert sub != sample_few_shot(train, 4, seed=2)


def test_label_ratio_allocation():
    train = _data([70, 20, 10])
    for ratio, want in ((0.1, [7, 2, 1]), (0.3, [21, 6, 3])):
        sub = sample_label_ratio(train, ratio, seed=1)
        assert [sum(d.label == c for d in sub) for c in range(3)] == want
    tiny = sample_label_ratio(_data([30, 1]), 0.1, seed=1)   # 3 seats, but every class keeps one
    assert [sum(d.label == c for d in tiny) for c in range(2)] == [2, 1]


def test_subset_cache_key_and_reuse(tmp_path):
    train = _data([10, 10])
    sub, info = subset_train(train, "demo", "ab" * 32, 1, k=3, cache_dir=tmp_path, root=Path("/d"))
    path = tmp_path / f"{cache_key('demo', 'ab' * 32, 1, k=3)}.json"
    assert info["cache"] == str(path) and path.is_file() and "abababab" in path.name and "k3" in path.name
    # the cache is what is read back: edit it to another valid subset and load again
    obj = json.loads(path.read_text())
    obj["items"] = ["c0/000.png", "c1/000.png"]
    path.write_text(json.dumps(obj))
    again, _ = subset_train(train, "demo", "ab" * 32, 1, k=3, cache_dir=tmp_path, root=Path("/d"))
    assert [d.impath for d in again] == ["/d/c0/000.png", "/d/c1/000.png"]
    obj["items"] = ["c9/zzz.png"]
    path.write_text(json.dumps(obj))
    with pytest.raises(ValueError, match="not in the training"):
        subset_train(train, "demo", "ab" * 32, 1, k=3, cache_dir=tmp_path, root=Path("/d"))
    other, info2 = subset_train(train, "demo", "cd" * 32, 1, k=3, cache_dir=tmp_path, root=Path("/d"))
    assert info2["cache"] != info["cache"] and len(other) == 6
    with pytest.raises(ValueError, match="cannot both"):
        subset_train(train, "demo", "ab" * 32, 1, k=3, ratio=0.1)
