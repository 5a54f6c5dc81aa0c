"""``test_flip``: every test crop is also scored mirrored, and the scores are averaged. The views
are the same through the policy, the datasets, the model file, the Scorer and the CLI."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL
from PIL import Image, ImageOps

from nriqa.cli import main
from nriqa.config import load_config
from nriqa.data.dataset import ImageListDataset, IQADataset
from nriqa.data.policy import CropPolicy
from nriqa.data.table import Scale, make_table
from nriqa.errors import ConfigError
from nriqa.inference.model_files import load_model, save_model
from nriqa.inference.scoring import Scorer
from nriqa.models import DEIQT


def photo(path, size=(40, 32), seed=0):
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def tiny_file(path, test_flip: bool, patch_num: int = 1):
    torch.manual_seed(0)
    cfg = load_config(None, TINY_MODEL)
    meta = {"format": "nriqa-deiqt-v1", "model": cfg.model.model_dump(mode="json"),
            "crop_size": 32, "test_patch_num": patch_num, "test_crops": "grid",
            "test_flip": test_flip, "resize": "none", "small_image": "upscale"}
    return save_model(DEIQT.from_config(cfg.model), meta, path)


def test_the_views_are_the_crops_then_their_mirrors(tmp_path):
    img = Image.open(photo(tmp_path / "a.png", (50, 37)))
    plain = CropPolicy(32, 3, "grid").crops(img)
    flipped = CropPolicy(32, 3, "grid", test_flip=True)
    assert flipped.views == 6 and CropPolicy(32, 3).views == 3
    views = flipped.crops(img)
    assert views.shape == (6, 3, 32, 32)
    assert torch.equal(views[:3], plain)
    assert torch.equal(views[3:], plain.flip(-1))


def test_a_flipped_score_is_the_mean_of_the_image_and_its_mirror(tmp_path):
    # A square image of the crop's size: its one crop is the whole image, so the mirrored view
    # is exactly the mirrored image.
    path = photo(tmp_path / "sq.png", (32, 32))
    mirror = tmp_path / "mirror.png"
    ImageOps.mirror(Image.open(path)).save(mirror)
    plain = Scorer.from_checkpoint(tiny_file(tmp_path / "plain.safetensors", False), device="cpu")
    both = Scorer.from_checkpoint(tiny_file(tmp_path / "flip.safetensors", True), device="cpu")
    a, b = (r.score for r in plain.score_paths([path, mirror]))
    assert a != pytest.approx(b, abs=1e-6)  # the tiny model is not mirror-symmetric
    assert both.score_paths([path])[0].score == pytest.approx((a + b) / 2, abs=1e-6)


def test_the_model_file_records_it_and_old_files_score_without_it(tmp_path):
    _, meta = load_model(tiny_file(tmp_path / "f.safetensors", True))
    assert meta["test_flip"] is True and CropPolicy.from_meta(meta).test_flip is True
    old = {"crop_size": 32, "test_patch_num": 1, "test_crops": "grid", "resize": "none",
           "small_image": "upscale"}  # written before nriqa had test_flip
    assert CropPolicy.from_meta(old).test_flip is False


def test_the_config_takes_only_a_boolean():
    assert load_config(None, ["data.test_flip=true"]).data.test_flip is True
    with pytest.raises(ConfigError, match="test_flip"):
        load_config(None, ["data.test_flip=1"])
    with pytest.raises(ValueError, match="test_flip"):
        CropPolicy(32, 1, test_flip=1)


def test_the_datasets_give_the_same_views_as_the_scorer(tmp_path):
    path = photo(tmp_path / "a.png", (45, 33))
    policy = CropPolicy(32, 2, "grid", test_flip=True)
    table = make_table([str(path)], [0.5], Scale(0.0, 1.0))
    item = IQADataset(table, policy=policy, train=False)[0]
    listed = ImageListDataset([path], policy)[0]
    assert torch.equal(item["image"], policy.crops(Image.open(path)))
    assert torch.equal(listed["image"], item["image"])
    assert item["flip"].tolist() == [False, False, True, True]


@pytest.mark.parametrize("recorded", [True, False])
def test_the_cli_turns_the_mirrored_views_on_or_off(tmp_path, recorded):
    path = photo(tmp_path / "a.png", (40, 32))
    model = tiny_file(tmp_path / "m.safetensors", recorded)
    expected = {flip: Scorer.from_checkpoint(model, device="cpu", test_flip=flip).score_paths([path])[0].score
                for flip in (True, False)}
    assert expected[True] != pytest.approx(expected[False], abs=1e-6)
    for extra, flip in (([], recorded), (["--no-test-flip"], False), (["--test-flip"], True)):
        out = tmp_path / f"out{extra}.csv"
        assert main(["score", str(path), "-m", str(model), "-o", str(out), "--quiet", *extra]) == 0
        with open(out, newline="") as fh:
            (row,) = list(csv.DictReader(fh))
        assert float(row["score"]) == pytest.approx(expected[flip], abs=1e-6)


def test_onnxruntime_scores_the_same_views(tmp_path):
    pytest.importorskip("onnxruntime")
    from nriqa.inference.export import export_model

    path = photo(tmp_path / "a.png", (40, 36))
    model = tiny_file(tmp_path / "flip.safetensors", True, patch_num=2)
    torch_score = Scorer.from_checkpoint(model, device="cpu").score_paths([path])[0].score
    in_memory = Scorer.from_checkpoint(model, device="cpu", backend="onnxruntime")
    assert in_memory.policy.views == 4
    assert in_memory.score_paths([path])[0].score == pytest.approx(torch_score, abs=1e-5)
    onnx = export_model(model, "onnx", tmp_path / "flip.onnx")
    exported = Scorer.from_checkpoint(onnx, device="cpu")
    assert exported.policy.test_flip is True
    assert exported.score_paths([path])[0].score == pytest.approx(torch_score, abs=1e-5)
