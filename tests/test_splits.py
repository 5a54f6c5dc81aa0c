"""Splits: content-disjoint, seeded, ratios and fractions, official splits, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nriqa.data.splits import Split, make_split, make_splits
from nriqa.data.table import Scale, make_table
from nriqa.errors import DataError

ROOT = "/data/set"


def _synthetic(n_refs=25, per_ref=12):
    """A synthetic-style table: each reference has ``per_ref`` distorted images."""
    paths = [f"{ROOT}/dist/r{r:02d}_{d:02d}.png" for r in range(n_refs) for d in range(per_ref)]
    groups = [f"r{r:02d}" for r in range(n_refs) for _ in range(per_ref)]
    scores = np.random.default_rng(0).uniform(0, 1, len(paths))
    return make_table(paths, scores, Scale(0, 1), groups=groups)


def _authentic(n=500, splits=None):
    paths = [f"{ROOT}/images/{i:05d}.jpg" for i in range(n)]
    return make_table(paths, np.linspace(1, 5, n), Scale(1, 5), splits=splits)


def _groups(table, rows):
    return set(table["group"].iloc[rows])


def _assert_disjoint(table, split):
    parts = [split.train, split.val, split.test]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not _groups(table, parts[i]) & _groups(table, parts[j])
            assert not set(parts[i]) & set(parts[j])


@pytest.mark.parametrize("mode", ["paper", "honest"])
def test_no_group_in_two_parts(mode):
    table = _synthetic()
    for split in make_splits(table, n=5, mode=mode):
        _assert_disjoint(table, split)
        assert split.sizes()["train"] + split.sizes()["val"] + split.sizes()["test"] == len(table)
        assert all(np.all(np.diff(getattr(split, p)) > 0) for p in ("train", "val", "test"))


def test_paper_and_honest_ratios():
    table = _synthetic()  # 25 groups of 12: exact 80/20 and 70/10/20 are not all reachable
    paper = make_split(table, "paper", seed=4)
    assert paper.sizes() == {"train": 240, "val": 0, "test": 60}
    honest = make_split(table, "honest", seed=4)
    # 10 % of 300 = 30 rows lies between 2 and 3 groups (24 / 36): the nearest is taken.
    assert honest.sizes()["test"] == 60 and honest.sizes()["val"] in (24, 36)
    authentic = make_split(_authentic(1000), "honest")
    assert authentic.sizes() == {"train": 700, "val": 100, "test": 200}


def test_honest_carves_val_out_of_paper_train():
    table = _synthetic()
    paper, honest = (
        make_split(table, "paper", seed=2, index=3),
        make_split(table, "honest", seed=2, index=3),
    )
    np.testing.assert_array_equal(paper.test, honest.test)
    assert set(honest.val) <= set(paper.train) and set(honest.train) <= set(paper.train)


def test_custom_ratios():
    table = _authentic(1000)
    assert make_split(table, "honest", ratios=(0.6, 0.2, 0.2)).sizes() == {
        "train": 600,
        "val": 200,
        "test": 200,
    }
    assert make_split(table, "paper", ratios=(1, 1)).sizes() == {
        "train": 500,
        "val": 0,
        "test": 500,
    }
    assert make_split(table, "honest", ratios=(6, 2, 2)).sizes()["val"] == 200  # normalised
    with pytest.raises(ValueError, match="ratios"):
        make_split(table, ratios=(0.5, -0.1, 0.6))
    with pytest.raises(ValueError, match="ratios"):
        make_split(table, ratios=(1, 2, 3, 4))


def test_every_part_gets_a_group_when_groups_are_few():
    table = _synthetic(n_refs=3, per_ref=5)
    split = make_split(table, "honest")
    assert all(size == 5 for size in split.sizes().values())
    with pytest.raises(DataError, match="2 group"):
        make_split(_synthetic(n_refs=2), "honest")


def test_same_seed_same_split_and_indices_differ():
    table = _synthetic()
    a, b = make_splits(table, n=4, seed=9), make_splits(table, n=4, seed=9)
    assert a == b
    assert [s.index for s in a] == [0, 1, 2, 3]
    tests = {tuple(s.test) for s in a}
    assert len(tests) == 4
    assert make_split(table, seed=9, index=1) == a[1]
    assert make_split(table, seed=10, index=1).test.tolist() != a[1].test.tolist()


def test_split_does_not_depend_on_row_order():
    table = _synthetic()
    shuffled = table.sample(frac=1, random_state=1).reset_index(drop=True)
    a, b = make_split(table, seed=5), make_split(shuffled, seed=5)
    for part in ("train", "val", "test"):
        assert set(table["path"].iloc[getattr(a, part)]) == set(
            shuffled["path"].iloc[getattr(b, part)]
        )


def test_by_group_false_treats_images_as_groups():
    table = _synthetic(n_refs=10, per_ref=10)
    split = make_split(table, "paper", by_group=False)
    assert split.sizes() == {"train": 80, "val": 0, "test": 20}
    assert _groups(table, split.train) & _groups(table, split.test)  # almost surely shared


def test_fraction_keeps_a_nested_subset_of_train_only():
    table = _synthetic(n_refs=40, per_ref=5)
    full = make_split(table, "honest", seed=1)
    halves = make_split(table, "honest", seed=1, fraction=0.5)
    quarter = make_split(table, "honest", seed=1, fraction=0.25)
    np.testing.assert_array_equal(full.val, halves.val)
    np.testing.assert_array_equal(full.test, quarter.test)
    assert len(halves.train) == len(full.train) // 2
    assert abs(len(quarter.train) - len(full.train) / 4) <= 5  # whole groups of 5
    assert set(quarter.train) <= set(halves.train) <= set(full.train)
    # no group cut in two by the subset
    assert set(table["group"].iloc[halves.train]).isdisjoint(
        set(table["group"].iloc[np.setdiff1d(full.train, halves.train)])
    )
    assert halves.fraction == 0.5
    tiny = make_split(table, "honest", fraction=0.001)
    assert len(tiny.train) == 5  # at least one group
    with pytest.raises(ValueError, match="fraction"):
        make_split(table, fraction=0)


def test_official_split_with_val():
    labels = ["train"] * 70 + ["val"] * 10 + ["test"] * 20
    table = _authentic(100, splits=labels)
    split = make_split(table, "official", seed=3)
    np.testing.assert_array_equal(split.train, np.arange(70))
    np.testing.assert_array_equal(split.val, np.arange(70, 80))
    np.testing.assert_array_equal(split.test, np.arange(80, 100))
    assert split.mode == "official"
    assert make_split(table, "official", seed=4).test.tolist() == split.test.tolist()


def test_official_split_without_val_carves_it_from_train():
    table = _authentic(100, splits=["train"] * 80 + ["test"] * 20)
    split = make_split(table, "official", seed=3)
    np.testing.assert_array_equal(split.test, np.arange(80, 100))
    assert split.sizes() == {"train": 70, "val": 10, "test": 20}
    assert set(split.val) | set(split.train) == set(range(80))
    assert make_split(table, "official", seed=4).val.tolist() != split.val.tolist()
    whole = make_split(table, "official", ratios=(1, 0, 0))
    assert whole.sizes() == {"train": 80, "val": 0, "test": 20}
    assert make_split(table, "official", fraction=0.5).sizes()["train"] == 35


def test_official_split_needs_the_column():
    with pytest.raises(DataError, match="split"):
        make_split(_authentic(50), "official")
    with pytest.raises(DataError, match="holdout"):
        make_split(_authentic(3, splits=["train", "test", "holdout"]), "official")


def test_bad_mode():
    with pytest.raises(ValueError, match="allowed: paper, honest, official"):
        make_split(_authentic(50), "random")


def test_json_round_trip_by_relative_path(tmp_path):
    table = _synthetic()
    split = make_split(table, "honest", seed=7, index=2, fraction=0.5, dataset="tid")
    path = tmp_path / "splits" / "s.json"
    split.to_json(path, table, ROOT)
    doc = json.loads(path.read_text())
    assert doc["dataset"] == "tid" and doc["mode"] == "honest" and doc["index"] == 2
    assert all(name.startswith("dist/") for name in doc["test"])
    assert Split.from_json(path, table, ROOT) == split
    assert [p.name for p in path.parent.iterdir()] == ["s.json"]  # no temp file left behind
    # Rows are found by path: a reordered table gets the same images.
    shuffled = table.sample(frac=1, random_state=3).reset_index(drop=True)
    loaded = Split.from_json(path, shuffled, ROOT)
    assert set(shuffled["path"].iloc[loaded.test]) == set(table["path"].iloc[split.test])
    # ... and a moved dataset too.
    moved = table.assign(path=table["path"].str.replace(ROOT, "/elsewhere", regex=False))
    assert Split.from_json(path, moved, "/elsewhere") == split


def test_foreign_split_file_rejected(tmp_path):
    table = _synthetic()
    path = tmp_path / "s.json"
    make_split(table).to_json(path, table, ROOT)
    other = _authentic(300)
    with pytest.raises(DataError, match=r"s.json: .* not in the label table") as info:
        Split.from_json(path, other, ROOT)
    assert info.value.path == str(path)
    with pytest.raises(DataError, match="not in the label table"):
        Split.from_json(path, table, "/data")  # right table, wrong root


def test_bad_split_files(tmp_path):
    table = _synthetic()
    missing = tmp_path / "none.json"
    with pytest.raises(DataError, match="none.json: split file not found"):
        Split.from_json(missing, table, ROOT)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(DataError, match="garbage.json"):
        Split.from_json(garbage, table, ROOT)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"train": []}))
    with pytest.raises(DataError, match="not an nriqa split file"):
        Split.from_json(other, table, ROOT)
    numbers = tmp_path / "numbers.json"
    numbers.write_text(
        json.dumps({"format": "nriqa-split", "version": 1, "train": [0, 1], "val": [], "test": [2]})
    )
    with pytest.raises(DataError, match=r"list\(s\) of image paths \[.train., .test.\]"):
        Split.from_json(numbers, table, ROOT)
    path = tmp_path / "overlap.json"
    make_split(table).to_json(path, table, ROOT)
    doc = json.loads(path.read_text())
    doc["val"] = doc["val"] + doc["test"][:1]
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="share"):
        Split.from_json(path, table, ROOT)


def test_to_json_rejects_images_outside_root(tmp_path):
    table = _synthetic()
    with pytest.raises(DataError, match="not under the dataset root"):
        make_split(table).to_json(tmp_path / "s.json", table, "/other/root")
    assert not (tmp_path / "s.json").exists()


def test_split_checks_its_parts():
    with pytest.raises(ValueError, match="share"):
        Split(np.array([0, 1]), np.array([], dtype=int), np.array([1, 2]))
    split = Split([3, 1], [], [0])
    assert split.train.tolist() == [1, 3] and split.val.dtype == np.int64


def test_dataset_name_from_table_attrs():
    table = _authentic(50)
    table.attrs["dataset"] = "koniq"
    assert make_split(table).dataset == "koniq"
