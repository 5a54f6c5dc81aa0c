"""The semantic-noise analysis: pair statistics on hand-made cases, features, figure and command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import tiny_images

from nriqa.cli import main
from nriqa.reports.semantic_noise import (
    cosine_distances,
    extract_features,
    pair_statistics,
    plot_semantic_noise,
    sample_pairs,
)


def test_share_of_close_pairs_with_different_quality_on_a_hand_made_case():
    # two tight clusters far apart: the two close pairs are (0,1) and (2,3)
    features = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    labels = np.array([0.0, 0.9, 0.5, 0.55])  # (0,1) differ by 0.9, (2,3) by 0.05
    st = pair_statistics(features, labels, close_quantile=0.3, quality_threshold=0.2)
    assert st.n_pairs == 6 and not st.sampled and st.n_close == 2
    assert st.share == pytest.approx(0.5)
    # all pairs: |dq| = .9 .5 .55 .4 .35 .05 -> 5 of 6 above 0.2
    assert st.share_all == pytest.approx(5 / 6)
    assert st.close_distance < 0.01
    st = pair_statistics(features, labels, close_quantile=0.3, quality_threshold=0.95)
    assert st.share == 0.0
    labels = np.array([0.0, 0.9, 0.1, 0.8])  # both close pairs now differ a lot
    assert pair_statistics(features, labels, close_quantile=0.3).share == 1.0


def test_cosine_distance_and_pair_sampling():
    f = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    i, j, sampled = sample_pairs(3)
    assert not sampled and list(zip(i, j)) == [(0, 1), (0, 2), (1, 2)]
    assert np.allclose(cosine_distances(f, i, j), [1.0, 2.0, 1.0])
    i, j, sampled = sample_pairs(1000, max_pairs=5000, seed=3)
    assert sampled and len(i) == 5000 and (i != j).all() and i.max() < 1000 and j.max() < 1000
    i2, j2, _ = sample_pairs(1000, max_pairs=5000, seed=3)
    assert np.array_equal(i, i2) and np.array_equal(j, j2)
    rng = np.random.default_rng(0)
    feats, labels = rng.normal(size=(1000, 8)), rng.random(1000)
    a = pair_statistics(feats, labels, max_pairs=5000, seed=1)
    b = pair_statistics(feats, labels, max_pairs=5000, seed=1)
    assert a.sampled and a.n_pairs == 5000 and a.share == b.share
    assert abs(a.n_close - 250) <= 5  # 5 % of the pairs


def test_extract_features_centre_crop_and_mean_over_test_crops(tmp_path):
    from nriqa.models import Backbone

    table = tiny_images(tmp_path / "img", n_groups=2, per_group=2)
    torch.manual_seed(0)
    net = Backbone("resnet10t", weights="none")
    centre = extract_features(net, table, {"crop_size": 32}, device="cpu")
    assert centre.shape == (4, net.feature_dim)
    from nriqa.data.dataset import IQADataset
    from nriqa.data.policy import CropPolicy

    crops = torch.stack([IQADataset(table, train=False, policy=CropPolicy(32, 3))[i]["image"]
                         for i in range(4)])
    with torch.no_grad():
        expected = net.eval()(crops.flatten(0, 1))[0].view(4, 3, -1).mean(1).numpy()
        first = net(crops[:, 0])[0].numpy()
    mean = extract_features(net, table, {"crop_size": 32, "test_patch_num": 3}, crops="test",
                            device="cpu")
    assert np.allclose(mean, expected, atol=1e-5)
    one = IQADataset(table, train=False, policy=CropPolicy(32, 1))[0]["image"]
    with torch.no_grad():
        assert np.allclose(centre[0], net(one)[0][0].numpy(), atol=1e-5)
    assert not np.allclose(first, mean)


def test_plot_has_one_panel_per_model(tmp_path):
    import matplotlib.image as mpimg

    rng = np.random.default_rng(0)
    a = pair_statistics(rng.normal(size=(40, 4)), rng.random(40), name="a")
    b = pair_statistics(rng.normal(size=(40, 4)), rng.random(40), name="b")
    one = mpimg.imread(plot_semantic_noise(a, tmp_path / "one.png"))
    two = mpimg.imread(plot_semantic_noise([a, b], tmp_path / "two.png"))
    assert two.shape[1] > 1.8 * one.shape[1]  # side by side


def test_cli_writes_png_and_json_for_a_backbone_and_checkpoints(tmp_path):
    from helpers import TINY_MODEL

    from nriqa.config import load_config
    from nriqa.inference.model_files import inference_meta, save_model
    from nriqa.models import DEIQT

    table = tiny_images(tmp_path / "data", n_groups=3, per_group=3)
    rel = [p.split("/data/", 1)[1] for p in table["path"]]
    (tmp_path / "data" / "labels.csv").write_text(
        "path,score,group\n" + "".join(f"{p},{s},{g}\n" for p, s, g in
                                       zip(rel, table["score"], table["group"])))
    cfg = load_config(None, [*TINY_MODEL, "data.crop_size=32"])
    ckpt = tmp_path / "tiny.safetensors"
    from nriqa.engine.data import DataSettings

    save_model(DEIQT.from_config(cfg.model), inference_meta(cfg, DataSettings(1, 1, "none")), ckpt)
    assert main([
        "analyze", "semantic-noise", "--dataset", "csv", "--root", str(tmp_path / "data"),
        "--option", "low=0", "--option", "high=1", "--option", "group_column=group",
        "--backbone", "resnet10t", "--weights", "none", "--crop-size", "32",
        "--checkpoint", str(ckpt), "--checkpoint", str(ckpt), "--max-images", "8",
        "--device", "cpu", "--output", str(tmp_path / "fig.png"), "--json",
        str(tmp_path / "stats.json")]) == 0
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["images"] == 8 and len(stats["panels"]) == 3
    assert stats["panels"][0]["name"].startswith("resnet10t")
    assert all(p["n_pairs"] == 28 for p in stats["panels"])
    assert stats["panels"][1]["share"] == stats["panels"][2]["share"]  # the same model twice
    assert stats["panels"][0]["close_quantile"] == 0.05  # pair_statistics' defaults
    assert stats["panels"][0]["quality_threshold"] == 0.2


def test_cli_needs_a_network_and_takes_the_pair_options(tmp_path, capsys):
    assert main(["analyze", "semantic-noise", "--dataset", "csv"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    table = tiny_images(tmp_path / "data", n_groups=2, per_group=3)
    rel = [p.split("/data/", 1)[1] for p in table["path"]]
    (tmp_path / "data" / "labels.csv").write_text(
        "path,score\n" + "".join(f"{p},{s}\n" for p, s in zip(rel, table["score"])))
    assert main(["analyze", "semantic-noise", "--dataset", "csv", "--root",
                 str(tmp_path / "data"), "--option", "low=0", "--option", "high=1",
                 "--backbone", "resnet10t", "--weights", "none", "--crop-size", "32",
                 "--close-quantile", "0.5", "--quality-threshold", "1e-1", "--max-pairs", "10",
                 "--device", "cpu", "--output", str(tmp_path / "fig.png"), "--json",
                 str(tmp_path / "stats.json")]) == 0
    panel = json.loads((tmp_path / "stats.json").read_text())["panels"][0]
    assert panel["close_quantile"] == 0.5 and panel["quality_threshold"] == 0.1
    assert panel["n_pairs"] == 10 and panel["sampled"]  # 15 pairs > --max-pairs 10
