"""Same input, same score, through every API: ``Scorer.score_image(Image.open(p))``,
``Scorer.score_paths([p])`` and ``nriqa score p`` agree for awkward image modes, under both test-crop
policies and with mirrored test views."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL
from PIL import Image

from nriqa.cli import main
from nriqa.config import load_config
from nriqa.data.policy import CropPolicy, crop_key
from nriqa.inference.model_files import save_model
from nriqa.inference.scoring import Scorer
from nriqa.models import DEIQT

ROOT = Path(__file__).resolve().parents[1]


def awkward_images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (44, 60, 3), dtype=np.uint8)
    alpha = np.tile(np.linspace(0, 255, 60, dtype=np.uint8), (44, 1))
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(folder / "rgba.png")
    deep = (rng.integers(0, 65536, (50, 40), dtype=np.uint16))
    Image.fromarray(deep).save(folder / "deep16.png")  # 16-bit grey
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    Image.fromarray(rgb).save(folder / "rotated.jpg", exif=exif, quality=90)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal.save(folder / "palette.gif", transparency=0)
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    paths = awkward_images(tmp_path_factory.mktemp("awkward"))
    assert {Image.open(p).mode for p in paths} >= {"RGBA", "P"}
    assert Image.open(paths[0].parent / "rotated.jpg").getexif()[0x0112] == 6
    return paths


@pytest.fixture(scope="module", params=["grid", "seeded", "grid-flip"])
def model_file(request, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = load_config(None, TINY_MODEL)
    meta = {"format": "nriqa-deiqt-v1", "model": cfg.model.model_dump(mode="json"),
            "crop_size": 32, "test_patch_num": 3, "test_crops": request.param.split("-")[0],
            "test_flip": request.param.endswith("flip"), "resize": "none", "small_image": "upscale"}
    folder = tmp_path_factory.mktemp(request.param)
    return save_model(DEIQT.from_config(cfg.model), meta, folder / "m.safetensors")


def test_score_image_equals_score_paths_for_every_mode(model_file, images):
    scorer = Scorer.from_checkpoint(model_file, device="cpu", batch_size=3)
    by_path = scorer.score_paths(images)
    assert not any(r.error for r in by_path)
    for path, row in zip(images, by_path):
        with Image.open(path) as img:
            assert scorer.score_image(img) == scorer.score_paths([path])[0].score, path.name
        # In a batch of 3 the CPU kernels may round the last float32 bit differently.
        assert scorer.score_paths([path])[0].score == pytest.approx(row.score, abs=1e-6)


def test_score_image_does_not_change_the_callers_image(model_file, images):
    scorer = Scorer.from_checkpoint(model_file, device="cpu")
    with Image.open(images[0].parent / "rotated.jpg") as img:
        before = (img.size, img.mode)
        scorer.score_image(img)
        assert (img.size, img.mode) == before


def test_seeded_crops_are_keyed_by_the_file_name(images):
    policy = CropPolicy(32, 3, "seeded")
    path = images[0]
    with Image.open(path) as img:
        assert crop_key(img) == crop_key(path) == path.name
        moved = Image.open(path).copy()  # made in memory: no file name
        assert crop_key(moved) == ""
        assert torch.equal(policy.crops(img), policy.crops(moved, key=path.name))


def test_the_cli_gives_the_same_scores(model_file, images, tmp_path):
    scorer = Scorer.from_checkpoint(model_file, device="cpu")
    expected = {}
    for p in images:
        with Image.open(p) as img:
            expected[str(p)] = scorer.score_image(img)
    out = tmp_path / "out.csv"
    args = ["score", *map(str, images), "--checkpoint", str(model_file), "-o", str(out), "--quiet"]
    if "seeded" in str(model_file):  # once through a fresh interpreter, as a user runs it
        run = subprocess.run([sys.executable, "-m", "nriqa.cli", *args], cwd=ROOT,
                             capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
        assert run.returncode == 0, run.stderr
    else:
        assert main(args) == 0
    with open(out, newline="") as fh:
        rows = {r["path"]: float(r["score"]) for r in csv.DictReader(fh)}
    assert rows.keys() == expected.keys()
    for path, score in rows.items():
        assert score == pytest.approx(expected[path], abs=1e-6)  # the CSV keeps 6 decimals
