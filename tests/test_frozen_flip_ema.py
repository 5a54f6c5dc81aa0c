"""The cached-feature head trainer's random flip (data.hflip) and weight EMA (optim.ema_decay)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_config, tiny_images
from test_frozen import FROZEN

from nriqa.config import load_config
from nriqa.data.splits import make_split
from nriqa.engine import frozen
from nriqa.engine.data import resolve_data_settings, subset
from nriqa.engine.train import fit
from nriqa.errors import ConfigError
from nriqa.inference.model_files import load_model
from nriqa.models import DEIQT


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return tiny_images(tmp_path_factory.mktemp("imgs"), n_groups=6, per_group=4)


def test_draw_views_keeps_one_of_each_crop_and_its_mirror():
    k, b = 3, 64
    # view v of image i holds the number 100 i + v: crops 0..k-1, then their mirrors k..2k-1
    glob = (100 * torch.arange(b)[:, None] + torch.arange(2 * k)).float()[..., None]
    tokens = glob[..., None].expand(b, 2 * k, 5, 1)
    g, t = frozen._draw_views(glob, tokens, torch.Generator().manual_seed(0))
    assert g.shape == (b, k, 1) and t.shape == (b, k, 5, 1)
    image, view = (g[..., 0] // 100).long(), (g[..., 0] % 100).long()
    assert torch.equal(image, torch.arange(b)[:, None].expand(b, k))  # rows stay with their image
    assert torch.equal(view % k, torch.arange(k).expand(b, k))  # crop j or its mirror, never another
    assert 0.3 < (view >= k).float().mean() < 0.7  # both drawn, about half each
    assert torch.equal(t[..., 0, 0], g[..., 0])  # tokens follow the same views


def test_hflip_caches_the_training_images_mirrored(tmp_path, table):
    cfg = tiny_config(tmp_path, *FROZEN, "data.hflip=true")
    split = make_split(table, mode="honest", seed=0)
    fit(cfg, table, split, tmp_path / "run")
    settings = resolve_data_settings(cfg)
    folder = frozen.cache_folder(cfg, tmp_path / "run")
    train = subset(table, split.train)
    cache = frozen.FeatureCache.for_run(cfg, train, settings, folder, mirrored=True)
    glob, tokens = cache.load()
    k = settings.test_patch_num
    assert glob.shape[:2] == (len(train), 2 * k)
    # the first K views are the plain cache's; the last K the same crops mirrored
    model = DEIQT.from_config(cfg.model).eval()
    item = cache.dataset(cfg, train, settings)[0]["image"]
    with torch.no_grad():
        g_plain, _ = model.backbone.raw_features(item[:k])
        g_mirror, _ = model.backbone.raw_features(item[:k].flip(-1))
    torch.testing.assert_close(glob[0, :k].float(), g_plain, atol=2e-2, rtol=2e-3)
    torch.testing.assert_close(glob[0, k:].float(), g_mirror, atol=2e-2, rtol=2e-3)
    assert not torch.allclose(glob[0, :k].float(), glob[0, k:].float(), atol=1e-3)
    # the validation part is cached as it is scored: without mirrors (data.test_flip is off)
    select = frozen.FeatureCache.for_run(cfg, subset(table, split.val), settings, folder)
    assert select.load()[0].shape[1] == k and not select.mirrored


def test_hflip_changes_the_training_and_stays_deterministic(tmp_path, table):
    split = make_split(table, mode="honest", seed=0)
    states = {}
    runs = {"plain": ["data.hflip=false"], "flip": ["data.hflip=true"], "flip2": ["data.hflip=true"],
            # the same 2K-view cache, every view averaged: what hflip must not reduce to
            "mean": ["data.hflip=false", "data.test_flip=true"]}
    for name, extra in runs.items():
        cfg = tiny_config(tmp_path, *FROZEN, *extra)
        states[name] = load_model(fit(cfg, table, split, tmp_path / name).model_path)[0].state_dict()
    key = "decoder.queries"
    assert torch.equal(states["flip"][key], states["flip2"][key])
    assert not torch.equal(states["flip"][key], states["plain"][key])
    assert not torch.equal(states["flip"][key], states["mean"][key])


def test_hflip_refuses_features_without_mirrors(tmp_path):
    cfg = tiny_config(tmp_path, *FROZEN, "data.hflip=true")  # 2 test crops: 4 views expected
    head_model = DEIQT.from_config(cfg.model).eval()
    with torch.no_grad():
        g, t = head_model.backbone.raw_features(torch.rand(8, 3, 32, 32))
    plain = (g.view(4, 2, -1).half(), t.view(4, 2, *t.shape[1:]).half(), torch.rand(4))
    with pytest.raises(ConfigError, match=r"mirrored views \(4 per image\), not 2"):
        frozen.train_head(cfg, frozen.CachedHead(head_model), plain, plain)


def test_ema_is_the_moving_average_of_the_trained_weights(tmp_path, table):
    decay = 0.9
    cfg = tiny_config(tmp_path, *FROZEN, "data.hflip=false", "optim.epochs=1",
                      f"optim.ema_decay={decay}")
    head_model = DEIQT.from_config(cfg.model).eval()
    head = frozen.CachedHead(head_model)
    n = 12
    with torch.no_grad():  # cached features of random crops, in the cache's shapes
        g, t = head_model.backbone.raw_features(torch.rand(2 * n, 3, 32, 32))
    feats = (g.view(n, 2, -1).half(), t.view(n, 2, *t.shape[1:]).half(), torch.rand(n))
    by_hand = {}

    evaluated = []

    class Follow:  # the EMA by hand, from the weights after each optimiser step
        def on_head_step(self, epoch, loss):
            now = {k: v.detach().clone().float() for k, v in head.state_dict().items()}
            for k, v in now.items():
                by_hand[k] = v if k not in by_hand else decay * by_hand[k] + (1 - decay) * v

        def on_head_epoch_model(self, epoch, scored):  # what is evaluated: the average
            evaluated.append({k: v.detach().clone() for k, v in scored.state_dict().items()})

    best, history = frozen.train_head(cfg, head, feats, feats, callbacks=(Follow(),))
    last = {k: v.detach().clone() for k, v in head.state_dict().items()}
    assert len(history) == 1 and len(evaluated) == 1
    for k, v in best.items():
        torch.testing.assert_close(v.float(), by_hand[k], atol=1e-6, rtol=1e-5)
        assert torch.equal(evaluated[0][k], v)
    # the epoch was judged on the average: its selection PLCC is the returned weights'
    head.load_state_dict(best)
    averaged = frozen.evaluate(frozen._scores(head, feats[0], feats[1]), feats[2].numpy())
    assert history[0]["select_plcc"] == pytest.approx(averaged["plcc"], abs=1e-6)
    # and it is not the last weights themselves
    assert not torch.allclose(best["decoder.queries"], last["decoder.queries"])


def test_ema_selects_and_exports_the_average(tmp_path, table):
    split = make_split(table, mode="honest", seed=0)
    cfg = tiny_config(tmp_path, *FROZEN, "optim.ema_decay=0.5")
    result = fit(cfg, table, split, tmp_path / "run")
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    plain = fit(tiny_config(tmp_path, *FROZEN), table, split, tmp_path / "plain")
    a = load_model(result.model_path)[0].state_dict()["decoder.queries"]
    b = load_model(plain.model_path)[0].state_dict()["decoder.queries"]
    assert not torch.equal(a, b) and len(res["history"]) == 3


def test_ema_outside_the_cached_trainer_is_refused(tmp_path, table):
    cfg = tiny_config(tmp_path, "optim.ema_decay=0.99")
    with pytest.raises(ConfigError, match="optim.ema_decay is supported with trainer.feature_cache"):
        fit(cfg, table, make_split(table, mode="honest", seed=0), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1"])
def test_ema_decay_must_be_inside_0_1(value):
    with pytest.raises(ConfigError, match="ema_decay"):
        load_config(None, [f"optim.ema_decay={value}"])
