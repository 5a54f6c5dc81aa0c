"""Scoring API and the ``nriqa`` command: deterministic scores, bad files reported, CLI verbs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TINY_MODEL, tiny_config, tiny_images
from PIL import Image

from nriqa.cli import main
from nriqa.config import load_config
from nriqa.inference.model_files import load_model, save_model
from nriqa.inference.scoring import Scorer
from nriqa.models import DEIQT


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = load_config(None, TINY_MODEL)
    model = DEIQT.from_config(cfg.model)
    meta = {"format": "nriqa-deiqt-v1", "model": cfg.model.model_dump(mode="json"),
            "crop_size": 32, "test_patch_num": 3, "test_crops": "grid", "resize": "none",
            "small_image": "upscale"}
    return save_model(model, meta, tmp_path_factory.mktemp("ckpt") / "m.safetensors")


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for i, size in enumerate([(40, 40), (64, 48), (20, 30)]):  # the last is smaller than a crop
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    Image.fromarray(rng.integers(0, 256, (50, 50), dtype=np.uint8)).save(tmp_path / "sub" / "gray.jpg")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return tmp_path


def test_saved_model_roundtrip_is_exact(checkpoint):
    model, meta = load_model(checkpoint)
    again, _ = load_model(checkpoint)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), again(x)) and meta["test_patch_num"] == 3


def test_score_paths_is_deterministic_and_survives_a_corrupt_file(checkpoint, folder):
    scorer = Scorer.from_checkpoint(checkpoint, device="cpu", batch_size=2)
    paths = sorted(folder.glob("*.*"))
    first = scorer.score_paths(paths)
    second = Scorer.from_checkpoint(checkpoint, device="cpu", batch_size=3).score_paths(paths)
    bad = [r for r in first if r.error]
    assert len(bad) == 1 and "corrupt.jpg" in bad[0].error and np.isnan(bad[0].score)
    good = [r.score for r in first if not r.error]
    assert len(good) == 3 and all(np.isfinite(good))
    assert [r.score for r in first if not r.error] == [r.score for r in second if not r.error]


def test_score_image_and_tensor_match_score_paths(checkpoint, folder):
    scorer = Scorer.from_checkpoint(checkpoint, device="cpu")
    path = folder / "im1.png"
    by_path = scorer.score_paths([path])[0].score
    img = Image.open(path)
    assert scorer.score_image(img) == pytest.approx(by_path, abs=1e-6)
    tensor = torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float() / 255
    assert float(scorer.score_tensor(tensor)[0]) == pytest.approx(by_path, abs=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        scorer.score_tensor(tensor * 2)


def test_cli_score_writes_csv_and_json(checkpoint, folder, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    assert main(["score", str(folder), "--recursive", "--checkpoint", str(checkpoint), "-o", str(out), "--quiet"]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["path", "score", "error", "backend"] and len(table) == 5
    assert table.loc[table["path"].str.endswith("corrupt.jpg"), "error"].str.contains("corrupt.jpg").all()
    assert "could not be scored" in capsys.readouterr().err
    again = tmp_path / "again.json"
    main(["score", str(folder), "-r", "--checkpoint", str(checkpoint), "-o", str(again), "--quiet"])
    rows = json.loads(again.read_text())
    assert [r["score"] for r in rows] == [None if s == "" else float(s) for s in table["score"]]


def test_cli_errors_are_named_not_tracebacks(tmp_path, capsys):
    assert main(["score", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors: model file not found" in capsys.readouterr().err
    assert main(["train", "optim.lrr=1"]) == 2
    assert "unknown key 'optim.lrr'" in capsys.readouterr().err


def test_protocol_runner_two_splits_with_cross_dataset(tmp_path):
    imgs = tiny_images(tmp_path / "a")
    other = tiny_images(tmp_path / "b", n_groups=3, seed=1)
    for name, t in (("a", imgs), ("b", other)):
        t[["path", "score", "group"]].to_csv(tmp_path / f"{name}.csv", index=False)
    csv_opts = "{path_column: path, score_column: score, group_column: group, low: 0, high: 1}"
    cfg_args = [
        f"data.root={tmp_path}", f"data.label_file={tmp_path / 'a.csv'}", f"data.options={csv_opts}",
        "protocol.n_splits=2",
        f"protocol.cross_datasets=[{{dataset: csv, root: {tmp_path}, label_file: {tmp_path / 'b.csv'}, options: {csv_opts}}}]",
    ]
    cfg = tiny_config(tmp_path, *cfg_args)
    from nriqa.protocol.runner import run_protocol

    summary = run_protocol(cfg)
    assert summary["splits"] == 2 and summary["protocol"] == "honest"
    assert set(summary["test"]["srcc"]) == {"median", "mean", "std", "n"}
    assert "csv" in summary["cross"]
    splits = [json.loads((tmp_path / "run" / f"split_{i:02d}" / "split.json").read_text()) for i in range(2)]
    assert splits[0] != splits[1]
    md = (tmp_path / "run" / "summary.md").read_text()
    assert "Protocol: **honest**" in md and "| SRCC |" in md


def test_cli_evaluate_reports_metrics_on_a_labelled_dataset(checkpoint, tmp_path, capsys):
    table = tiny_images(tmp_path / "imgs")
    table[["path", "score", "group"]].to_csv(tmp_path / "labels.csv", index=False)
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "csv", "--root", str(tmp_path),
                 "-o", "low=0", "-o", "high=1", "-o", "group_column=group", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == len(table) == out["n"] and -1 <= out["srcc"] <= 1
