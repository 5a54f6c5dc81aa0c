"""``nriqa demo`` end to end on tiny settings (a tiny transformer, 48 px images, five photos), and
the report's pieces: the logistic's soundness check and the gallery's choice of images."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nriqa.cli import main
from nriqa.reports.report import gallery_items, sound_logistic


def test_tiny_demo_prints_plan_and_metrics_and_writes_every_picture(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NRIQA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["demo", "--quick", "--tiny", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    # The plan comes first, before any work: data, split, model, method, probe, time.
    head = printed.split("probe: held-out")[0]
    for word in ("  data ", "  split ", "  model ", "  method ", "  probe ", "  time "):
        assert word in head, (word, printed)
    # the dataset's official split: its test and validation photos, the rest trains
    assert "validation 2 (astronaut, china), test 1 (flower)" in printed
    assert re.search(r"method\s+\d+ epoch\(s\) x \d+ steps of \d+", printed)
    assert re.search(r"trained model\s+SRCC -?\d\.\d{3}\s+PLCC -?\d\.\d{3}", printed)
    assert re.search(r"frozen probe\s+SRCC -?\d\.\d{3}\s+PLCC -?\d\.\d{3}", printed)
    for word in ("report ", "model ", "dataset ", "rm -rf"):
        assert word in printed, word
    assert str(tmp_path / "cache") in printed

    report = (out / "report.md").read_text()
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert set(pictures) >= {"scatter.png", "scatter_probe.png", "per_type.png", "gallery.png"}
    for name in pictures:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and min(im.size) > 100, name
    assert "Wall time" in report and "load averages" in report
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(pictures)
    assert (out / "model.safetensors").is_file()
    assert not (out / "checkpoints").exists(), "training checkpoints are kept only when asked"


def test_demo_names_its_distortion_sets_and_refuses_others(tmp_path, monkeypatch):
    from nriqa.errors import ConfigError
    from nriqa.reports.demo import run_demo

    monkeypatch.setenv("NRIQA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="allowed: artefacts, all"):
        run_demo(tmp_path / "run", distortions="sepia")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_cli_passes_the_distortion_set_and_defaults_to_artefacts(monkeypatch):
    import nriqa.reports.demo as demo
    from nriqa.data.synthetic import DISTORTION_SETS

    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda *a, **kw: calls.append(kw))
    assert main(["demo"]) == 0 and main(["demo", "--distortions", "all", "--quick"]) == 0
    assert [c["distortions"] for c in calls] == ["artefacts", "all"]
    assert [c["quick"] for c in calls] == [False, True]
    with pytest.raises(SystemExit):  # argparse refuses a set it does not know
        main(["demo", "--distortions", "sepia"])
    # the CLI's choices are the sets the builder knows (kept literal there for start-up time)
    assert set(DISTORTION_SETS) == {"artefacts", "all"}


def test_logistic_is_drawn_only_when_the_fit_is_sound():
    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 80)
    smooth = 0.2 + 0.6 / (1 + np.exp(-(x - 0.5) / 0.12)) + rng.normal(0, 0.02, x.size)
    assert sound_logistic(x, smooth) is not None
    step = np.where(x > 0.5, 0.9, 0.1) + rng.normal(0, 0.01, x.size)
    assert sound_logistic(x, step) is None, "a step is not a sound logistic fit"
    falling = 1 - smooth
    assert sound_logistic(x, falling) is None
    cloud = rng.random(x.size)
    assert sound_logistic(x, cloud) is None, "no curve through a shapeless cloud"


def test_gallery_picks_lowest_highest_and_biggest_misses():
    labels = np.linspace(0, 1, 20)
    preds = labels.copy()
    preds[7] = 0.95  # the one big miss
    frame = pd.DataFrame({"path": [f"/x/{i}.png" for i in range(20)], "prediction": preds,
                          "label": labels, "group": "g", "dist_type": "jpeg", "level": 3})
    items = gallery_items(frame, per_row=3)
    assert [i["path"] for i in items[:3]] == ["/x/0.png", "/x/1.png", "/x/2.png"]
    assert [i["path"] for i in items[3:6]] == ["/x/19.png", "/x/18.png", "/x/17.png"]
    assert items[6]["path"] == "/x/7.png"
    assert [i["row"] for i in items if i["row"]] == ["worst quality", "best quality",
                                                      "biggest misses"]
    assert "label 0.37 · predicted 0.95" in items[6]["caption"]


def test_tiny_demo_on_cached_frozen_features_shares_one_cache_between_probe_and_training(
        tmp_path, monkeypatch, capsys):
    """The `demo` recipe's path: a frozen CNN read through its per-stage statistics, the features
    computed once (the probe fills the cache, the decoder trains on it), one progress bar."""
    monkeypatch.setenv("NRIQA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    frozen = ["model.backbone=test_efficientnet", "model.img_size=null", "model.backbone_kwargs={}",
              "model.readout=stats", "model.freeze=['*']", "model.freeze_bn=true",
              "trainer.feature_cache=true", "data.test_patch_num=2", "data.hflip=false",
              "model.stats_stages=2"]
    assert main(["demo", "--tiny", "--output-dir", str(out), *frozen]) == 0
    captured = capsys.readouterr()
    assert "backbone frozen (untrained features, computed once and cached)" in captured.out
    assert re.search(r"method\s+2 epoch\(s\) x \d+ steps of 8 images x 2 cached 32 px crops", captured.out)
    assert re.search(r"trained model\s+SRCC -?\d\.\d{3}", captured.out)
    assert "features  " in captured.out
    assert re.search(r"epoch 2/2.*loss \d\.\d{4}, val SRCC -?\d\.\d{3}", captured.err)
    caches = [p for p in (tmp_path / "cache" / "features").iterdir() if p.is_dir()]
    assert len(caches) == 3, "train, validation and test parts: each computed once"
    results = (out / "results.json").read_text()
    assert "cached features of the frozen backbone" in results
    assert (out / "model.safetensors").is_file() and (out / "report.md").is_file()
