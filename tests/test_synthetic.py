"""The embedded synthetic dataset: distortions, KADID-calibrated labels, determinism, caching.

Builds are tiny (96 px, three references) so the whole file runs in seconds.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nriqa.data.datasets.embedded import load_embedded_table
from nriqa.data.splits import make_split
from nriqa.data.synthetic import (
    COLOUR_ONLY,
    DISTORTIONS,
    GRAYSCALE,
    KADID_MEANS,
    KADID_TYPES,
    LABEL_COLUMNS,
    REFERENCES,
    TEST_PHOTOS,
    VAL_PHOTOS,
    applies,
    build_embedded,
    embedded_dir,
    image_count,
    kadid_label,
    load_reference,
    severities,
)
from nriqa.data.synthetic import build as S
from nriqa.data.table import COLUMNS
from nriqa.errors import ConfigError, DataError

TINY = {"size": 96, "references": ["astronaut", "coffee", "flower"]}
SMALL = {"size": 48, "references": ["chelsea", "china"], "distortions": ["jpeg", "white_noise"]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_embedded(tmp_path_factory.mktemp("tiny") / "ds", **TINY)


@pytest.fixture(scope="module")
def labels(tiny) -> pd.DataFrame:
    return pd.read_csv(tiny / "labels.csv")


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------ distortions


def test_distortion_table_is_complete_and_well_formed():
    assert len(DISTORTIONS) >= 15
    ref = load_reference("chelsea", 64)
    assert ref.dtype == np.uint8 and ref.shape == (64, 85, 3)
    for name, fn in DISTORTIONS.items():
        outs = []
        for level in range(1, 6):
            out = fn(ref, level, np.random.default_rng(1))
            assert out.dtype == np.uint8 and out.shape == ref.shape, (name, level)
            again = fn(ref, level, np.random.default_rng(1))
            assert np.array_equal(out, again), f"{name} is not deterministic for a generator"
            outs.append(out.astype(np.float32))
        # KADID's mildest parameter can be a near no-op (blur sigma 0.1); the strongest never is,
        # and the image moves further from the reference as the level rises.
        dist = [np.abs(o - ref).mean() for o in outs]
        assert dist[4] > 1.0, f"{name} level 5 barely changes the image: {dist}"
        assert dist[4] > dist[0], (name, dist)
        with pytest.raises(ConfigError):
            fn(ref, 6, np.random.default_rng(1))


def test_every_type_has_a_kadid_counterpart_whose_label_falls_with_level():
    assert len({t.kadid_type for t in KADID_TYPES.values()}) == len(KADID_TYPES)
    for name, t in KADID_TYPES.items():
        labels = [kadid_label(name, level) for level in range(1, 6)]
        assert all(0 <= v <= 1 for v in labels)
        assert all(a > b for a, b in zip(labels, labels[1:])), (name, labels)
        assert labels == [round((m - 1) / 4, 6) for m in KADID_MEANS[t.kadid_type]]
    with pytest.raises(ConfigError, match="unknown distortion"):
        kadid_label("sepia", 1)


def test_artefact_set_is_kadids_blur_noise_and_compression_categories():
    from nriqa.data.synthetic import DISTORTION_SETS, KADID_CATEGORIES, resolve_distortions

    wanted = {t for c in ("blur", "noise", "compression") for t in KADID_CATEGORIES[c]}
    artefacts = DISTORTION_SETS["artefacts"]
    assert {KADID_TYPES[n].kadid_type for n in artefacts} == wanted & {
        t.kadid_type for t in KADID_TYPES.values()}
    assert len(artefacts) == 9 and "darken" not in artefacts and "color_saturation" not in artefacts
    assert DISTORTION_SETS["all"] == list(DISTORTIONS)
    # every KADID type is in exactly one category
    numbers = [t for ts in KADID_CATEGORIES.values() for t in ts]
    assert sorted(numbers) == list(range(1, 26))
    assert resolve_distortions("artefacts") == artefacts and resolve_distortions(None) is None
    assert embedded_dir(distortions="artefacts") == embedded_dir(distortions=artefacts)
    assert embedded_dir(distortions="all") == embedded_dir()
    assert embedded_dir(distortions="artefacts") != embedded_dir()  # two sets never share a build


def test_references_are_every_bundled_photo_in_kadids_frame():
    assert len(REFERENCES) >= 18 and set(REFERENCES) > GRAYSCALE
    shapes = {n: load_reference(n, 48).shape for n in ("grace_hopper", "astronaut", "cell")}
    assert shapes == {"grace_hopper": (64, 48, 3), "astronaut": (48, 64, 3), "cell": (64, 48, 3)}
    gray = load_reference("camera", 48)  # grayscale photos as RGB with equal channels
    assert gray.shape == (48, 64, 3) and (gray == gray[..., :1]).all() and gray.std() > 20


def test_grayscale_photos_get_no_colour_only_distortion_and_the_split_is_official(tmp_path):
    assert {"color_diffusion", "color_quantization", "color_saturation"} == COLOUR_ONLY
    refs, dists = ["camera", "flower", "astronaut", "coffee"], ["white_noise", "color_saturation"]
    root = build_embedded(tmp_path / "ds", size=48, levels=2, references=refs, distortions=dists)
    labels = pd.read_csv(root / "labels.csv")
    pairs = set(zip(labels["group"], labels["dist_type"]))
    assert ("camera", "white_noise") in pairs and ("camera", "color_saturation") not in pairs
    assert ("flower", "color_saturation") in pairs
    assert len(labels) == image_count(dists, refs, levels=2) == (3 * 2 + 1) * 2
    assert not applies("color_saturation", "camera") and applies("white_noise", "camera")
    parts = dict(zip(labels["group"], labels["split"]))
    assert parts == {"camera": "train", "flower": "test", "astronaut": "val", "coffee": "train"}
    # the official split mode reads it: the test part is the test photo's, validation as listed
    table = load_embedded_table(root)
    split = make_split(table, mode="official")
    assert set(table["group"].iloc[split.test]) == {"flower"}
    assert set(table["group"].iloc[split.val]) == {"astronaut"}
    assert set(table["group"].iloc[split.train]) == {"camera", "coffee"}
    assert set(TEST_PHOTOS) | set(VAL_PHOTOS) <= set(REFERENCES) - GRAYSCALE
    assert json.loads((root / "manifest.json").read_text())["grayscale"] == ["camera"]


@pytest.mark.realdata
def test_embedded_kadid_table_matches_the_committed_script(shared_data):
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "kadid_table.py"
    spec = importlib.util.spec_from_file_location("kadid_table", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = module.find_label_file(shared_data)
    if path is None:
        pytest.skip(f"KADID-10k label file not found under {shared_data} (set NRIQA_SHARED_DATA)")
    table = module.mean_table(module.read_scores(path))
    assert {k: tuple(v) for k, v in table.items()} == KADID_MEANS


def test_severities():
    assert severities(5) == [1, 2, 3, 4, 5]
    assert severities(3) == [1, 3, 5]
    assert severities(2) == [1, 5]
    assert severities(1) == [3]
    with pytest.raises(ConfigError):
        severities(6)


# ------------------------------------------------------------------------------ the build


def test_layout_and_labels(tiny, labels):
    assert tuple(labels.columns) == LABEL_COLUMNS
    assert len(labels) == 3 * len(DISTORTIONS) * 5
    assert set(labels["group"]) == set(TINY["references"])
    assert set(labels["dist_type"]) == set(DISTORTIONS)
    assert sorted(set(labels["level"])) == [1, 2, 3, 4, 5]
    assert labels["score"].between(0, 1).all()
    assert (labels["score"] < 1).all()
    assert all(row.score == kadid_label(row.dist_type, row.level) for row in labels.itertuples())
    for row in labels.itertuples():
        assert row.path == f"images/{row.group}_{row.dist_type}_{row.level}.png"
        assert row.ref_path == f"refs/{row.group}.png"
        assert (tiny / row.path).is_file()
    # References in KADID's 4:3 frame with a 96 px short side.
    shapes = {r: _pixels(tiny / f"refs/{r}.png").shape for r in TINY["references"]}
    assert shapes == {r: (96, 128, 3) for r in TINY["references"]}
    manifest = json.loads((tiny / "manifest.json").read_text())
    assert manifest["n_images"] == len(labels)
    assert [r["name"] for r in manifest["references"]] == TINY["references"]


def test_strongest_level_differs_from_its_reference(tiny, labels):
    refs = {r: _pixels(tiny / f"refs/{r}.png") for r in TINY["references"]}
    for row in labels.itertuples():
        img = _pixels(tiny / row.path)
        assert img.shape == refs[row.group].shape
        if row.level == 5:
            assert not np.array_equal(img, refs[row.group]), row.path


def test_labels_fall_with_level_and_are_the_same_for_every_reference(labels):
    per_image = labels.pivot_table(index=["dist_type", "group"], columns="level", values="score")
    assert (per_image.diff(axis=1).iloc[:, 1:] < 0).all().all(), per_image
    spread = labels.groupby(["dist_type", "level"])["score"].agg(lambda v: v.max() - v.min())
    assert (spread == 0).all(), spread[spread > 0]
    assert labels.groupby(["dist_type", "level"])["group"].nunique().eq(3).all()


def test_build_is_deterministic(tiny, tmp_path):
    other = build_embedded(tmp_path / "again", **TINY)
    assert (other / "labels.csv").read_bytes() == (tiny / "labels.csv").read_bytes()
    assert (other / "manifest.json").read_bytes() == (tiny / "manifest.json").read_bytes()
    files = sorted(p.relative_to(tiny) for p in tiny.rglob("*.png"))
    assert files == sorted(p.relative_to(other) for p in other.rglob("*.png"))
    for rel in files:
        assert (tiny / rel).read_bytes() == (other / rel).read_bytes(), rel


def test_seed_changes_random_distortions_only(tmp_path):
    a = build_embedded(tmp_path / "a", seed=0, **SMALL)
    b = build_embedded(tmp_path / "b", seed=1, **SMALL)
    assert (a / "labels.csv").read_bytes() == (b / "labels.csv").read_bytes()
    for name in ("china_jpeg_3", "china_white_noise_3"):
        same = np.array_equal(_pixels(a / f"images/{name}.png"), _pixels(b / f"images/{name}.png"))
        assert same == ("jpeg" in name), name


# ------------------------------------------------------------------------------ the cache


def test_second_call_uses_the_cache(tmp_path):
    root = build_embedded(tmp_path / "ds", **SMALL)
    before = _mtimes(root)
    assert build_embedded(tmp_path / "ds", **SMALL) == root
    assert _mtimes(root) == before


@pytest.mark.parametrize("damage", ["no_manifest", "missing_image", "edited_labels"])
def test_incomplete_build_is_redone(tmp_path, damage):
    root = build_embedded(tmp_path / "ds", **SMALL)
    good_labels = (root / "labels.csv").read_bytes()
    image = root / "images" / "chelsea_jpeg_3.png"
    if damage == "no_manifest":  # as after an interrupted build
        (root / "manifest.json").unlink()
    elif damage == "missing_image":
        image.unlink()
    else:
        (root / "labels.csv").write_text("path,score\n")
    before = _mtimes(root)
    assert build_embedded(tmp_path / "ds", **SMALL) == root
    assert (root / "manifest.json").is_file()
    assert image.is_file()
    assert (root / "labels.csv").read_bytes() == good_labels
    after = _mtimes(root)
    assert all(after[k] != v for k, v in before.items() if k in after), "not rebuilt"
    assert not list(tmp_path.glob(".ds.*")), "temporary build directories left behind"


def test_force_and_changed_parameters_rebuild(tmp_path):
    root = build_embedded(tmp_path / "ds", **SMALL)
    before = _mtimes(root)["manifest.json"]
    build_embedded(tmp_path / "ds", force=True, **SMALL)
    assert _mtimes(root)["manifest.json"] != before
    build_embedded(tmp_path / "ds", seed=3, **SMALL)
    assert json.loads((root / "manifest.json").read_text())["seed"] == 3


def test_changed_recipe_rebuilds(tmp_path, monkeypatch):
    root = build_embedded(tmp_path / "ds", **SMALL)
    before = _mtimes(root)["manifest.json"]
    monkeypatch.setattr(S, "_code_hash", lambda: "edited")
    build_embedded(tmp_path / "ds", **SMALL)
    assert _mtimes(root)["manifest.json"] != before
    assert json.loads((root / "manifest.json").read_text())["code"] == "edited"


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing"):
        build_embedded(target, **SMALL)
    assert (target / "notes.txt").read_text() == "keep me"


def test_concurrent_builds_agree(tmp_path):
    results, errors = [], []

    def run():
        try:
            results.append(build_embedded(tmp_path / "ds", workers=1, **SMALL))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results == [tmp_path / "ds"] * 3
    assert S._is_complete(tmp_path / "ds", json.loads((tmp_path / "ds/manifest.json").read_text()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_default_location_and_options(tmp_path, monkeypatch):
    monkeypatch.setenv("NRIQA_CACHE", str(tmp_path / "cache"))
    code = S._code_hash()[:8]  # a new version of the generator builds beside an old one
    assert embedded_dir() == tmp_path / "cache" / f"embedded-v3-s0-384-{code}"
    assert embedded_dir(seed=2, size=96) == tmp_path / "cache" / f"embedded-v3-s2-96-{code}"
    names = {
        embedded_dir(levels=3).name,
        embedded_dir(distortions=["jpeg"]).name,
        embedded_dir(references=["china", "flower"]).name,
    }
    assert len(names) == 3 and all(n.startswith("embedded-v3-s0-384-") for n in names)
    root = build_embedded(seed=1, levels=2, **SMALL)
    assert root.parent == tmp_path / "cache"
    assert sorted(set(pd.read_csv(root / "labels.csv")["level"])) == [1, 5]
    with pytest.raises(ConfigError, match="unknown distortion"):
        build_embedded(tmp_path / "x", distortions=["sepia"])
    with pytest.raises(ConfigError, match="unknown reference"):
        build_embedded(tmp_path / "x", references=["lena"])


# ------------------------------------------------------------------------------ the table


def test_load_embedded_table(tiny, labels):
    table = load_embedded_table(tiny)
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert {"dist_type", "level", "ref_path"} <= set(table.columns)
    assert len(table) == len(labels)
    assert np.allclose(table["label"], labels["score"])
    assert np.allclose(table["score"], labels["score"])
    assert set(table["group"]) == set(TINY["references"])
    assert dict(zip(table["group"], table["split"])) == {"astronaut": "val", "coffee": "train",
                                                          "flower": "test"}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table["path"])
    assert all(Path(p).is_file() for p in table["ref_path"])


def test_load_embedded_table_builds_by_default_and_rejects_incomplete(tmp_path, monkeypatch):
    monkeypatch.setenv("NRIQA_CACHE", str(tmp_path / "cache"))
    table = load_embedded_table(seed=0, **SMALL)
    assert len(table) == 2 * 2 * 5
    broken = tmp_path / "broken"
    shutil.copytree(embedded_dir(**SMALL), broken)
    (broken / "manifest.json").unlink()
    with pytest.raises(DataError, match="manifest"):
        load_embedded_table(broken)


def test_distortions_option_keeps_the_set_and_refuses_a_build_without_it(tiny, tmp_path):
    from nriqa.data.datasets.embedded import SPEC
    from nriqa.data.synthetic import DISTORTION_SETS

    whole = SPEC.read(tiny)[0]  # the tiny build holds all 18 types
    kept = SPEC.read(tiny, distortions="artefacts")[0]
    assert set(kept["dist_type"]) == set(DISTORTION_SETS["artefacts"]) < set(whole["dist_type"])
    assert len(kept) == len(TINY["references"]) * len(DISTORTION_SETS["artefacts"]) * 5
    assert kept.attrs["dataset"] == "embedded"
    small = build_embedded(tmp_path / "small", **SMALL)  # jpeg and white noise only
    with pytest.raises(DataError, match="lacks 7 of the 'artefacts' distortions"):
        SPEC.read(small, distortions="artefacts")
    with pytest.raises(ConfigError, match="unknown set; allowed: artefacts, all"):
        SPEC.read(tiny, distortions="blurs")


def test_distortions_option_builds_only_the_set_when_no_root_is_given(monkeypatch, tmp_path):
    from nriqa.data import synthetic
    from nriqa.data.datasets.embedded import SPEC

    built = []

    def fake_build(**kwargs):  # records what the default root asks for; the tiny build answers
        built.append(kwargs)
        return build_embedded(tmp_path / "ds", **TINY)

    monkeypatch.setattr(synthetic, "build_embedded", fake_build)
    table = SPEC.read(None, distortions="artefacts")[0]
    assert built == [{"distortions": list(synthetic.DISTORTION_SETS["artefacts"])}]
    assert set(table["dist_type"]) == set(synthetic.DISTORTION_SETS["artefacts"])
    SPEC.read(None)
    assert built[-1] == {"distortions": None}
