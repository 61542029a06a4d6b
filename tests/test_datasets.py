"""Every reader on its miniature layout (medpt.datasets.fixtures), the data check, errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medpt.datasets.check import check_data_cli, check_dataset, format_report
from medpt.datasets.fixtures import FOLDER, MAKERS, make_fixture
from medpt.datasets.pneumonia import SAMPLE_ROOT, list_images, pneumonia3_label
from medpt.datasets.table import dataset_table_latex
from medpt.engine import build_config
from medpt.engine.data import ImageReadError
from medpt.engine.registry import DATASET_REGISTRY

READER = {"aptos2019_resplit": "aptos2019"}  # fixture variant -> registered reader
NPZ = {"dermamnist", "dermamnist_official", "pneumoniamnist"}


def _cfg(dataset, root, *opts):
    return build_config("coop", dataset, root=str(root), opts=["DATALOADER.NUM_WORKERS", "0", *opts])


def _load(name, root, *opts):
    dataset = READER.get(name, name)
    return DATASET_REGISTRY.get(dataset)(_cfg(dataset, root, *opts))


def _counts(items, n):
    return [sum(d.label == c for d in items) for c in range(n)]


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_reader_on_miniature_layout(name, tmp_path):
    expected = make_fixture(name, tmp_path)
    ds = _load(name, tmp_path)
    n = ds.num_classes
    assert {"train": _counts(ds.train_x, n), "test": _counts(ds.test, n)} == expected
    assert ds.val == ds.test and ds.val_is_test                       # CILMP: no validation set
    assert ds.modality and ds.source and ds.licence and all("{}" in t for t in ds.templates)
    assert len(ds.prompt_names) == n == len(set(ds.classnames))
    assert [d.classname for d in ds.train_x] == [ds.classnames[d.label] for d in ds.train_x]
    for d in ds.train_x + ds.test:                                     # L / RGBA / P / npz all -> RGB
        im = ds.read_image(d.impath)
        assert im.mode == "RGB" and min(im.size) >= 6
    meta = json.loads(ds.split_file.read_text())["meta"]
    assert meta["split_sha256"] == ds.split_hash
    assert list(meta["counts_per_class"]["train"].values()) == expected["train"]
    assert _load(name, tmp_path).split_hash == ds.split_hash           # second run: same split


def _break_npz(root: Path, name: str, split_rows):
    """Drop the last item of a split the split file lists, add one val item; return (missing, extra)."""
    cls = DATASET_REGISTRY.get(READER.get(name, name))
    path = cls.npz(root)
    z = dict(np.load(path))
    listed = {p for k in ("train", "test") for p, _ in split_rows[k]}
    split = next(s for s in ("test", "train") if f"{path.name}#{s}/{len(z[s + '_labels']) - 1}" in listed)
    missing = f"{path.name}#{split}/{len(z[split + '_labels']) - 1}"
    for key in (f"{split}_images", f"{split}_labels"):
        z[key] = z[key][:-1]
    extra = f"{path.name}#val/{len(z['val_labels'])}"
    z["val_images"] = np.concatenate([z["val_images"], z["val_images"][:1]])
    z["val_labels"] = np.concatenate([z["val_labels"], z["val_labels"][:1]])
    np.savez_compressed(path, **z)
    return missing, extra


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_check_reports_missing_and_unexpected(name, tmp_path):
    expected = make_fixture(name, tmp_path)
    ds = _load(name, tmp_path)                                         # writes the split file
    droot = tmp_path / FOLDER.get(name, name)
    assert check_dataset(READER.get(name, name), tmp_path, expected).ok
    if name in NPZ:
        from medpt.datasets.splits import read_split_file
        rows = read_split_file(ds.split_file, ds.num_classes, name)
        missing, extra = _break_npz(droot, name, rows)
    else:
        victim = Path(ds.train_x[0].impath)
        missing = victim.relative_to(droot).as_posix()
        extra_path = victim.with_name(victim.stem + "_extra" + victim.suffix)
        shutil.copy(victim, extra_path)
        victim.unlink()
        extra = extra_path.relative_to(droot).as_posix()
    rep = check_dataset(READER.get(name, name), tmp_path, expected)
    assert rep.missing == [missing] and rep.unexpected == [extra] and rep.problems == []
    assert not rep.ok and f"missing file: {missing}" in rep.all_problems()
    text = format_report([rep])
    assert "[PROBLEMS]" in text and "1 missing" in text and "1 unexpected" in text
    # against the paper's table the miniature's counts are mismatches too, all reported at once
    paper = check_dataset(READER.get(name, name), tmp_path)
    assert paper.missing == [missing] and any("count mismatch: train" in p for p in paper.problems)


def test_check_absent_dataset_and_cli(tmp_path, capsys):
    rep = check_dataset("kvasir", tmp_path)
    assert not rep.present and not rep.ok
    make_fixture("cpn_xray", tmp_path)
    assert check_data_cli(str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "[MISSING] kvasir" in out and "datasets.simula.no/kvasir" in out and "[PROBLEMS] cpn_xray" in out
    assert "0 of 12 datasets present and consistent; 11 missing; 1 with problems." in out


def test_check_reports_reader_errors_without_raising(tmp_path):
    make_fixture("isic2018", tmp_path)
    shutil.rmtree(tmp_path / "isic2018" / "ISIC2018_Task3_Test_GroundTruth")
    rep = check_dataset("isic2018", tmp_path)
    assert rep.present and any("ISIC2018_Task3_Test_GroundTruth" in p for p in rep.problems)


def test_missing_ground_truth_says_what_to_download(tmp_path):
    make_fixture("isic2018", tmp_path)
    shutil.rmtree(tmp_path / "isic2018" / "ISIC2018_Task3_Test_GroundTruth")
    with pytest.raises(FileNotFoundError, match="ISIC2018_Task3_Test_GroundTruth.zip"):
        _load("isic2018", tmp_path)
    make_fixture("adam", tmp_path)
    (tmp_path / "adam" / "Validation400" / "Classification_Results.xlsx").unlink()
    with pytest.raises(FileNotFoundError, match="validation ground truth"):
        _load("adam", tmp_path)
    with pytest.raises(FileNotFoundError, match="kaggle.com/datasets/andrewmvd"):
        _load("odir", tmp_path)


def _rewrite(path: Path, old: str, new: str):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("name,file,old,new,match", [
    ("aptos2019", "train.csv", ",4\n", ",7\n", r"train.csv row \d+: diagnosis '7'"),
    ("fetal_us", "FETAL_PLANES_DB_data.csv", "Fetal femur", "Fetal knee", r"row \d+: unknown Plane 'Fetal knee'"),
    ("chaoyang", "test.json", '"label": 3', '"label": 9', r"test.json entry \d+: label 9"),
    ("odir", "full_df.csv", "['H']", "['X']", r"full_df.csv row \d+: labels value"),
    ("derm7pt", "meta/meta.csv", "lentigo", "freckle", r"meta.csv row \d+: unknown diagnosis 'freckle'"),
    ("isic2018", "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv",
     "1.0,0.0,0.0,0.0,0.0,0.0,0.0", "1.0,1.0,0.0,0.0,0.0,0.0,0.0", r"row 2: .* not one-hot"),
])
def test_label_outside_class_list_names_the_row(name, file, old, new, match, tmp_path):
    make_fixture(name, tmp_path)
    _rewrite(tmp_path / name / file, old, new)
    with pytest.raises(ValueError, match=match):
        _load(name, tmp_path)


def test_truncated_image_names_file_and_dataset(tmp_path):
    make_fixture("kvasir", tmp_path)
    ds = _load("kvasir", tmp_path)
    path = Path(ds.train_x[0].impath)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ImageReadError, match=rf"Kvasir: cannot read image {path}"):
        ds.read_image(str(path))


def test_layout_variants(tmp_path):
    # Fetal-US from the XLSX when the CSV is absent
    exp = make_fixture("fetal_us", tmp_path / "a")
    (tmp_path / "a" / "fetal_us" / "FETAL_PLANES_DB_data.csv").unlink()
    ds = _load("fetal_us", tmp_path / "a")
    assert _counts(ds.train_x, 6) == exp["train"] and _counts(ds.test, 6) == exp["test"]
    # ISIC test ground truth in the Dataverse HAM-style schema at the top level
    exp = make_fixture("isic2018", tmp_path / "b")
    d = tmp_path / "b" / "isic2018"
    gt = d / "ISIC2018_Task3_Test_GroundTruth" / "ISIC2018_Task3_Test_GroundTruth.csv"
    codes = ["mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"]
    lines = ["lesion_id,image_id,dx,dx_type,age,sex,localization,dataset"]
    for row in gt.read_text().splitlines()[1:]:
        image, *onehot = row.split(",")
        lines.append(f"HAM_1,{image},{codes[[float(v) for v in onehot].index(1.0)]},histo,50,male,back,vidir")
    shutil.rmtree(gt.parent)
    (d / "ISIC2018_Task3_Test_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    ds = _load("isic2018", tmp_path / "b")
    assert _counts(ds.test, 7) == exp["test"]
    # Kvasir as the Kaggle mirror nests it: <class>/<class>/*.jpg
    exp = make_fixture("kvasir", tmp_path / "c")
    src = tmp_path / "c" / "kvasir" / "kvasir-dataset-v2"
    for f in list(src.iterdir()):
        (tmp_path / "c" / "kvasir" / f.name).mkdir()
        shutil.move(str(f), str(tmp_path / "c" / "kvasir" / f.name / f.name))
    src.rmdir()
    ds = _load("kvasir", tmp_path / "c")
    assert _counts(ds.train_x, 8) == exp["train"]


def test_generated_split_file_is_reused(tmp_path):
    make_fixture("cpn_xray", tmp_path)
    ds = _load("cpn_xray", tmp_path)
    obj = json.loads(ds.split_file.read_text())
    assert ds.split_file.name == "cpn_xray_generated.json" and obj["meta"]["seed"] == 0
    # a new file on disk does not silently change the split; the check reports it
    shutil.copy(ds.train_x[0].impath, tmp_path / "cpn_xray" / "COVID" / "COVID(99).jpg")
    assert _load("cpn_xray", tmp_path).split_hash == ds.split_hash
    assert check_dataset("cpn_xray", tmp_path).unexpected == ["COVID/COVID(99).jpg"]


def test_user_split_file(tmp_path):
    make_fixture("kvasir", tmp_path)
    full = _load("kvasir", tmp_path)
    obj = json.loads(full.split_file.read_text())
    mine = {"train": obj["train"][:5], "val": obj["test"][:2], "test": obj["test"][2:6]}
    path = tmp_path / "my_split.json"
    path.write_text(json.dumps(mine))
    ds = _load("kvasir", tmp_path, "DATASET.SPLIT_FILE", str(path))
    assert len(ds.train_x) == 5 and len(ds.test) == 4 and len(ds.val) == 2 and not ds.val_is_test
    assert ds.split_hash != full.split_hash


def test_few_shot_and_label_ratio_from_config(tmp_path):
    make_fixture("kvasir", tmp_path)
    ds = _load("kvasir", tmp_path, "DATASET.NUM_SHOTS", "2", "SEED", "3")
    assert _counts(ds.train_x, 8) == [2] * 8 and len(ds.test) == 12
    assert ds.train_subset["k"] == 2 and ds.train_subset["seed"] == 3
    assert Path(ds.train_subset["cache"]).is_file() and ds.split_hash[:16] in ds.train_subset["cache"]
    again = _load("kvasir", tmp_path, "DATASET.NUM_SHOTS", "2", "SEED", "3")
    assert [d.impath for d in again.train_x] == [d.impath for d in ds.train_x]
    ratio = _load("kvasir", tmp_path, "DATASET.LABEL_RATIO", "0.3", "SEED", "1")
    assert len(ratio.train_x) == round(0.3 * 28) and ratio.train_subset["kind"] == "label_ratio"
    with pytest.raises(ValueError, match="cannot both"):
        _load("kvasir", tmp_path, "DATASET.NUM_SHOTS", "2", "DATASET.LABEL_RATIO", "0.1")


def test_bundled_xrays_read_by_the_pneumonia_reader(tmp_path):
    src = SAMPLE_ROOT / "chest_xray" / "val"
    files = list_images(src)
    assert len(files) == 16
    for split in ("train", "test"):
        for f in files:
            dst = tmp_path / "pneumonia" / "chest_xray" / split / f.parent.name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst)
    ds = _load("pneumonia", tmp_path)
    assert _counts(ds.train_x, 3) == [8, 8, 0] and _counts(ds.test, 3) == [8, 8, 0]
    assert all(d.label == pneumonia3_label(Path(d.impath)) for d in ds.train_x)
    im = ds.read_image(ds.train_x[0].impath)
    assert im.mode == "RGB" and min(im.size) == 256


def test_dataset_table_latex(tmp_path):
    make_fixture("kvasir", tmp_path)
    tex = dataset_table_latex(tmp_path)
    assert tex.startswith("\\begin{tabular}") and tex.count("\\\\") == 12
    rows = {l.split("&")[0].strip(): l for l in tex.splitlines() if "&" in l}
    assert rows["Kvasir"].replace(" ", "").endswith("&8&28&12\\\\")       # from the miniature data
    assert "5,216$^\\dagger$" in rows["Pneumonia"]                        # from the paper's table
    assert "& fundus photography" in rows["ODIR"].replace("  ", " ")


def test_official_split_file_follows_the_download(tmp_path):
    make_fixture("pneumonia", tmp_path)
    ds = _load("pneumonia", tmp_path)
    new = tmp_path / "pneumonia" / "chest_xray" / "train" / "NORMAL" / "IM-0999-0001.jpeg"
    shutil.copy(ds.train_x[0].impath, new)
    assert check_dataset("pneumonia", tmp_path).unexpected == ["chest_xray/train/NORMAL/IM-0999-0001.jpeg"]
    again = _load("pneumonia", tmp_path)                               # official: rebuilt, file rewritten
    assert len(again.train_x) == len(ds.train_x) + 1 and again.split_hash != ds.split_hash
    assert json.loads(again.split_file.read_text())["meta"]["split_sha256"] == again.split_hash
    assert check_dataset("pneumonia", tmp_path).unexpected == []
