"""Label-file readers and the dataset table, on small hand-written label files."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io

from nriqa.data.datasets.csv import read_generic_csv
from nriqa.data.datasets.tid2013 import read_tid2013
from nriqa.data.parsing import paths
from nriqa.data.parsing.paths import Resolver
from nriqa.data.parsing.problems import BAD_ROW, DUPLICATE, MISSING_FILE
from nriqa.data.registry import DATASETS, get_spec, list_datasets, load_labels
from nriqa.data.table import COLUMNS, Scale
from nriqa.errors import ConfigError, LabelError


def make_tree(root: Path, names) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------
# Generic CSV


@pytest.fixture
def own(tmp_path):
    make_tree(tmp_path, ["a.jpg", "b.jpg", "sub/c.png"])
    write(tmp_path / "mine.csv", "file,opinion,scene,part\n"
                                 "a.jpg,1,beach,training\nb.jpg,5,beach,testing\nsub/c.png,2,city,val\n")
    return tmp_path


def test_generic_csv_scale_direction_groups_splits(own):
    table = load_labels("csv", own, label_file="mine.csv", path_column="file",
                        score_column="opinion", group_column="scene", split_column="part",
                        low=1, high=5, higher_better=False)
    assert list(table.columns[:5]) == list(COLUMNS)
    assert table["path"].tolist() == [str(own / "a.jpg"), str(own / "b.jpg"), str(own / "sub/c.png")]
    np.testing.assert_allclose(table["label"], [1.0, 0.0, 0.75])  # lower score = better here
    assert table["group"].tolist() == ["beach", "beach", "city"]
    assert table["split"].tolist() == ["train", "test", "val"]
    higher = load_labels("csv", own, label_file="mine.csv", path_column="file",
                         score_column="opinion", low=1, high=5, higher_better="true")
    np.testing.assert_allclose(higher["label"], [0.0, 1.0, 0.25])
    assert (higher["group"] == higher["path"]).all() and (higher["split"] == "").all()


def test_generic_csv_root_defaults_to_label_folder(own):
    table = load_labels("csv", None, label_file=own / "mine.csv", path_column="file",
                        score_column="opinion", low=0, high=10)
    assert table["path"].iloc[2] == str(own / "sub/c.png")


def test_generic_csv_needs_a_scale(own):
    with pytest.raises(ConfigError, match="low=.*high="):
        load_labels("csv", own, label_file="mine.csv", path_column="file", score_column="opinion")
    with pytest.raises(ConfigError, match="both low and high"):
        load_labels("csv", own, label_file="mine.csv", path_column="file",
                    score_column="opinion", low=0)


def bad_csv(root: Path, body: str) -> Path:
    make_tree(root, ["a.jpg", "b.jpg"])
    return write(root / "labels.csv", "path,score\n" + body)


@pytest.mark.parametrize(
    "body, line, words",
    [
        ("a.jpg,0.5\nb.jpg,nan\n", 3, "score is nan"),
        ("a.jpg,0.5\nb.jpg,\n", 3, "score is missing"),
        ("a.jpg,good\nb.jpg,0.1\n", 2, "'good' is not a number"),
        ("a.jpg,0.5\nb.jpg\n", 3, "expected 2 fields, found 1"),
        ("a.jpg,0.5,extra\n", 2, "expected 2 fields, found 3"),
        ("a.jpg,0.5\nzzz.jpg,0.1\n", 3, "'zzz.jpg' not found"),
        ("a.jpg,0.5\nb.jpg,7\n", 3, "outside the documented scale"),
        ("a.jpg,0.5\n./a.jpg,0.2\n", 3, "already listed at line 2"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, body, line, words):
    label_file = bad_csv(tmp_path, body)
    with pytest.raises(LabelError) as err:
        load_labels("csv", tmp_path, low=0, high=1)
    assert err.value.path == str(label_file)
    assert f"line {line}" in str(err.value) and words in str(err.value)


def test_missing_column_names_the_file(tmp_path):
    write(tmp_path / "labels.csv", "path,mos\na.jpg,1\n")
    with pytest.raises(LabelError, match=r"labels.csv: missing column\(s\) \['score'\]"):
        load_labels("csv", tmp_path, low=0, high=1)


def test_strict_error_counts_the_others_and_collect_mode_lists_all(tmp_path):
    label_file = bad_csv(tmp_path, "a.jpg,x\nb.jpg\nmissing.jpg,0.3\na.jpg,0.4\nb.jpg,0.9\n")
    with pytest.raises(LabelError, match=r"line 2: .*\(2 more problem"):
        load_labels("csv", tmp_path, low=0, high=1)
    problems: list = []
    table = read_generic_csv(tmp_path, label_file, low=0, high=1, problems=problems)
    assert table["path"].tolist() == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert [(p.kind, p.where) for p in problems] == [
        (BAD_ROW, "line 2"), (BAD_ROW, "line 3"), (MISSING_FILE, "line 4")]
    problems.clear()
    bad_csv(tmp_path, "a.jpg,0.1\na.jpg,0.2\n")
    read_generic_csv(tmp_path, label_file, low=0, high=1, problems=problems)
    assert [(p.kind, p.where) for p in problems] == [(DUPLICATE, "line 3")]


def test_label_file_not_found(tmp_path):
    with pytest.raises(LabelError, match="label file not found"):
        load_labels("csv", tmp_path, label_file="nope.csv", low=0, high=1)
    with pytest.raises(LabelError, match=r"looked for official: .*dmos_realigned.mat.*pyiqa: "
                                         r"meta_info_LIVEIQADataset.csv"):
        load_labels("live", tmp_path)


def test_bom_crlf_and_blank_lines(tmp_path):
    make_tree(tmp_path, ["a.jpg", "b.jpg"])
    (tmp_path / "labels.csv").write_bytes(b"\xef\xbb\xbfpath,score\r\na.jpg,0.1\r\n\r\nb.jpg,0.2\r\n")
    assert len(load_labels("csv", tmp_path, low=0, high=1)) == 2


# ------------------------------------------------------------------------------------------
# Resolving names


def test_resolver_matches_case_and_lists_each_folder_once(tmp_path, monkeypatch):
    make_tree(tmp_path, ["Images/x.JPG", "Images/y.jpg", "Images/sub/z.png", "dup/a.jpg", "dup/a.JPG"])
    calls = []
    real = os.scandir
    monkeypatch.setattr(paths.os, "scandir", lambda p: calls.append(p) or real(p))
    res = Resolver(tmp_path)
    assert res.resolve("images/x.jpg") == tmp_path / "Images/x.JPG"
    assert res.resolve("Images/Y.JPG") == tmp_path / "Images/y.jpg"
    assert res.resolve("IMAGES/SUB/Z.PNG") == tmp_path / "Images/sub/z.png"
    assert res.resolve("Images\\x.JPG") == tmp_path / "Images/x.JPG"
    assert res.resolve("images") is None and res.resolve("images", folder_ok=True) == tmp_path / "Images"
    assert res.resolve("dup/a.JPG") == tmp_path / "dup/a.JPG"  # exact wins
    assert res.resolve("dup/A.jpg") is None  # two files differ only in case: ambiguous
    assert res.resolve(str(tmp_path / "images/x.jpg")) == tmp_path / "Images/x.JPG"
    for _ in range(100):
        res.resolve("Images/x.jpg")
    assert len([c for c in calls if Path(c).parent == tmp_path or Path(c) == tmp_path]) <= 3


def test_biq2021_official_files_extension_case_and_trailing_columns(tmp_path):
    make_tree(tmp_path, ["Images/ss02 (1014).JPG", "Images/ss01 (1).jpg", "Images/ss03 (7).jpg"])
    write(tmp_path / "Train (Images and MOS).csv",
          "Image Name,MOS,,\nss02 (1014).jpg,0.4357,,\nss01 (1).jpg,0.5,,\n")
    write(tmp_path / "Test (Images and MOS).csv", "Image Name,MOS,,\nss03 (7).jpg,0.9,,\n")
    with pytest.warns(UserWarning, match="should have 12000"):
        table = load_labels("biq2021", tmp_path)
    assert table["path"].iloc[0].endswith("Images/ss02 (1014).JPG")
    assert table["split"].tolist() == ["train", "train", "test"]
    write(tmp_path / "Test (Images and MOS).csv", "Image Name,MOS,,\nss03 (8).jpg,0.9,,\n")
    with pytest.raises(LabelError, match=r"Test \(Images and MOS\).csv: line 2: image 'ss03 \(8\).jpg'"):
        load_labels("biq2021", tmp_path)


# ------------------------------------------------------------------------------------------
# Official-format quirks


def test_whitespace_label_file_bad_line(tmp_path):
    make_tree(tmp_path, ["distorted_images/i01_01_1.bmp", "distorted_images/i01_01_2.bmp"])
    write(tmp_path / "mos_with_names.txt", "5.1 I01_01_1.bmp\n4.0\n3.2 i01_01_2.bmp\n")
    with pytest.raises(LabelError, match=r"mos_with_names.txt: line 2: expected 2 fields"):
        load_labels("tid2013", tmp_path)
    problems: list = []
    table = read_tid2013(tmp_path, "mos_with_names.txt", scale=Scale(0, 9), problems=problems)
    assert table["group"].tolist() == ["I01", "I01"] and len(problems) == 1


def test_livec_mat_length_mismatch(tmp_path):
    (tmp_path / "Data").mkdir()
    names = np.empty((3, 1), dtype=object)
    names[:, 0] = ["t1.bmp", "1.bmp", "2.bmp"]
    scipy.io.savemat(tmp_path / "Data/AllImages_release.mat", {"AllImages_release": names})
    scipy.io.savemat(tmp_path / "Data/AllMOS_release.mat", {"AllMOS_release": np.array([[50.0, 60.0]])})
    with pytest.raises(LabelError, match="2 scores but 3 image names"):
        load_labels("livec", tmp_path)
    scipy.io.savemat(tmp_path / "Data/AllMOS_release.mat", {"AllMOS_release": np.array([[5, 50, np.nan]])})
    make_tree(tmp_path, ["Images/1.bmp", "Images/2.bmp"])
    with pytest.raises(LabelError, match=r"AllMOS_release.mat: entry 3: '2.bmp': score is nan"):
        load_labels("livec", tmp_path)


def test_live_needs_its_reference_names(tmp_path):
    scipy.io.savemat(tmp_path / "dmos_realigned.mat", {"dmos_new": np.zeros((1, 982)), "orgs": np.zeros((1, 982))})
    with pytest.raises(LabelError, match="refnames_all.mat: LIVE reference names file not found"):
        load_labels("live", tmp_path)


def test_spaq_sheet_missing_column(tmp_path):
    (tmp_path / "Annotations").mkdir()
    pd.DataFrame({"Image name": ["1.jpg"], "Score": [3]}).to_excel(
        tmp_path / "Annotations/MOS and Image attribute scores.xlsx", index=False)
    with pytest.raises(LabelError, match=r"scores.xlsx: missing column\(s\) \['MOS'\]"):
        load_labels("spaq", tmp_path)


def test_spaq_sheet_rows_are_named(tmp_path):
    make_tree(tmp_path, ["TestImage/1.jpg", "TestImage/2.jpg"])
    (tmp_path / "Annotations").mkdir()
    pd.DataFrame({"Image name": ["1.jpg", "2.jpg"], "MOS": [40, "n/a"]}).to_excel(
        tmp_path / "Annotations/MOS and Image attribute scores.xlsx", index=False)
    with pytest.raises(LabelError, match=r"row 3: '2.jpg': score 'n/a' is not a number"):
        load_labels("spaq", tmp_path)


def test_koniq_image_folder_choice(tmp_path):
    write(tmp_path / "meta_info_KonIQ10kDataset.csv", "img_name,mos,std,split\n1.jpg,50,1,0\n2.jpg,3,1,2\n")
    with pytest.raises(LabelError, match="no KonIQ image folder: looked for 1024x768 and 512x384"):
        load_labels("koniq10k", tmp_path)
    make_tree(tmp_path, ["512x384/1.jpg", "512x384/2.jpg"])
    with pytest.warns(UserWarning):
        table = load_labels("koniq10k", tmp_path)
    assert table["path"].str.contains("/512x384/").all()
    assert table["split"].tolist() == ["train", "test"]
    assert table.attrs["layout"] == "pyiqa"
    make_tree(tmp_path, ["1024x768/1.jpg"])
    with pytest.raises(LabelError, match="'2.jpg' not found"):  # auto prefers the full size
        load_labels("koniq10k", tmp_path)
    with pytest.warns(UserWarning):
        assert len(load_labels("koniq10k", tmp_path, images="512x384")) == 2


def test_pyiqa_official_split_column(tmp_path):
    make_tree(tmp_path, ["Images/1.bmp", "Images/2.bmp", "Images/trainingImages/t1.bmp"])
    write(tmp_path / "meta_info/meta_info_LIVEChallengeDataset.csv",
          "img_name,mos,std,official_split\nt1.bmp,50,1,train\n1.bmp,50,1,train\n2.bmp,20,1,test\n")
    with pytest.warns(UserWarning):
        table = load_labels("livec", tmp_path)
    assert table["split"].tolist() == ["train", "test"]


# ------------------------------------------------------------------------------------------
# The dataset table


def test_get_spec_suggests_and_accepts_aliases():
    with pytest.raises(ConfigError, match=r"unknown dataset 'konik'.*did you mean 'koniq10k'.*livefb"):
        get_spec("konik")
    assert get_spec("KADID-10k").name == "kadid10k"
    assert get_spec("flive").name == "livefb" and get_spec("CLIVE").name == "livec"


def test_dataset_table_defaults():
    expected = {"live": 779, "csiq": 866, "tid2013": 3000, "kadid10k": 10125, "livec": 1162,
                "koniq10k": 10073, "spaq": 11125, "livefb": 39810, "biq2021": 12000}
    assert {n: s.n_images for n, s in DATASETS.items() if s.n_images} == expected
    assert {n: s.n_groups for n, s in DATASETS.items() if s.n_groups} == {
        "live": 29, "csiq": 30, "tid2013": 25, "kadid10k": 81}
    for spec in DATASETS.values():
        assert spec.patch_num == (10 if spec.name == "livec" else 25)
        assert spec.resize == ("aspect:384x512" if spec.name in ("koniq10k", "spaq") else "none")
        assert spec.citation and spec.layouts
    assert not get_spec("live").scale.higher_better and not get_spec("csiq").scale.higher_better
    assert get_spec("kadid10k").scale.higher_better  # "dmos", yet higher is better
    assert get_spec("koniq10k").official_split == ("train", "val", "test")
    assert {"official", "pyiqa"} <= set(get_spec("spaq").layouts)
    with pytest.raises(TypeError):
        get_spec("live").layouts["x"] = None  # the table is read-only


def test_list_datasets():
    table = list_datasets()
    assert list(table.columns) == ["name", "kind", "images", "groups", "scale", "direction",
                                   "official split"]
    row = table.set_index("name").loc["csiq"]
    assert (row["kind"], row["groups"], row["direction"]) == ("synthetic", 30, "lower better")
    assert table.set_index("name").loc["koniq10k", "official split"] == "train/val/test"


def test_unknown_layout(tmp_path):
    with pytest.raises(ConfigError, match="has no layout 'pyiqa'"):
        load_labels("livefb", tmp_path, layout="pyiqa")


# ------------------------------------------------------------------------------------------
# The embedded dataset


@pytest.fixture
def fake_embedded(tmp_path):
    make_tree(tmp_path, ["refs/r1.png", "images/r1_blur_1.png", "images/r1_blur_2.png"])
    write(tmp_path / "labels.csv",
          "path,score,group,dist_type,level,ref_path\n"
          "images/r1_blur_1.png,0.9,r1,blur,1,refs/r1.png\n"
          "images/r1_blur_2.png,0.4,r1,blur,2,refs/r1.png\n")
    return tmp_path


def test_embedded_reader(fake_embedded):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = load_labels("embedded", fake_embedded)
    np.testing.assert_allclose(table["label"], [0.9, 0.4])
    assert table["group"].tolist() == ["r1", "r1"] and table["level"].tolist() == [1, 2]
    assert table["ref_path"].iloc[0] == str(fake_embedded / "refs/r1.png")


def test_embedded_is_built_lazily(fake_embedded, monkeypatch):
    import nriqa.data.synthetic as synthetic

    calls = []
    monkeypatch.setattr(synthetic, "build_embedded", lambda *a, **k: calls.append(1) or fake_embedded)
    assert len(load_labels("embedded")) == 2 and calls == [1]
