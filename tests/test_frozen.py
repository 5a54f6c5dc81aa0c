"""Training the decoder on cached features of a frozen backbone (trainer.feature_cache)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import tiny_config, tiny_images

from nriqa.data.splits import make_split
from nriqa.engine import frozen
from nriqa.engine.data import eval_dataset, resolve_data_settings, subset
from nriqa.engine.train import fit
from nriqa.errors import ConfigError
from nriqa.inference.model_files import load_model
from nriqa.inference.scoring import Scorer
from nriqa.models import DEIQT

FROZEN = ["model.backbone=test_efficientnet", "model.img_size=null", "model.backbone_kwargs={}",
          "model.freeze=['*']", "model.freeze_bn=true", "trainer.feature_cache=true",
          "data.patch_num=2", "optim.epochs=3", "optim.lr=1e-3", "data.hflip=false"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return tiny_images(tmp_path_factory.mktemp("imgs"), n_groups=6, per_group=4)


def test_needs_a_fully_frozen_backbone(tmp_path, table):
    cfg = tiny_config(tmp_path, "trainer.feature_cache=true")
    with pytest.raises(ConfigError, match=r"model.freeze=\['\*'\].*freeze_bn"):
        fit(cfg, table, make_split(table, mode="honest", seed=0), tmp_path / "run")


@pytest.mark.parametrize("readout", [[], ["model.readout=stats", "model.token_pool=2"],
                                     ["model.readout=stats", "model.stats_stages=2"]],
                         ids=["default", "stats", "stats-stages"])
def test_trains_selects_and_tests_the_exported_network(tmp_path, table, readout):
    cfg = tiny_config(tmp_path, *FROZEN, *readout)
    split = make_split(table, mode="honest", seed=0)
    result = fit(cfg, table, split, tmp_path / "run")
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["selection"] == "best val PLCC" and len(res["history"]) == 3
    assert res["selected_epoch"] == max(res["history"], key=lambda h: h["select_plcc"])["epoch"]
    # the backbone left untouched, the decoder trained
    model, meta = load_model(result.model_path)
    torch.manual_seed(cfg.trainer.seed)
    start = DEIQT.from_config(cfg.model).state_dict()
    trained = model.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in start.items() if k.startswith("backbone.net."))
    assert not torch.equal(trained["decoder.queries"], start["decoder.queries"])
    # the reported test metrics are those of the exported file, scored as `nriqa score` does
    scorer = Scorer.from_checkpoint(result.model_path)
    test = subset(table, split.test)
    scores = np.array([r.score for r in scorer.score_paths(list(test["path"]))])
    preds = np.loadtxt(tmp_path / "run" / "test_predictions.csv", delimiter=",", skiprows=1,
                       usecols=1)
    np.testing.assert_allclose(scores, preds, atol=1e-5)
    assert meta["test_patch_num"] == 2


def test_deterministic_and_cache_resumes_to_the_same_features(tmp_path, table, monkeypatch):
    monkeypatch.setattr(frozen, "CHUNK", 4)
    cfg = tiny_config(tmp_path, *FROZEN)
    settings = resolve_data_settings(cfg)
    model = DEIQT.from_config(cfg.model)
    whole = frozen.FeatureCache.for_run(cfg, table, settings, tmp_path / "a")
    whole.fill(model, eval_dataset(cfg, table, settings), 4, 0, False)

    class Dies:  # an extraction killed after the first two chunks
        def __init__(self, ds):
            self.ds = ds

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            if i >= 8:
                raise RuntimeError("killed")
            return self.ds[i]

    resumed = frozen.FeatureCache.for_run(cfg, table, settings, tmp_path / "b")
    with pytest.raises(RuntimeError, match="killed"):
        resumed.fill(model, Dies(eval_dataset(cfg, table, settings)), 4, 0, False)
    assert json.loads(resumed.manifest.read_text())["done"] == 8
    resumed.fill(model, eval_dataset(cfg, table, settings), 4, 0, False)
    for a, b in zip(whole.load(), resumed.load()):
        assert torch.equal(a, b)

    split = make_split(table, mode="honest", seed=0)
    one = fit(cfg, table, split, tmp_path / "one").model_path
    two = fit(cfg, table, split, tmp_path / "two").model_path
    assert all(torch.equal(load_model(one)[0].state_dict()[k], v)
               for k, v in load_model(two)[0].state_dict().items())


@pytest.mark.parametrize("readout", [[], ["model.readout=stats"]], ids=["default", "stats"])
def test_optimiser_decays_every_matrix_of_the_cached_head(tmp_path, readout):
    """The shared AdamW groups, without DEIQT's name exemptions, are the frozen loop's own rule:
    decay on every tensor of two or more dimensions (the panel queries included)."""
    cfg = tiny_config(tmp_path, *FROZEN, *readout)
    head = frozen.CachedHead(DEIQT.from_config(cfg.model))
    params = [p for p in head.parameters() if p.requires_grad]
    decay, no_decay = (g["params"] for g in frozen.adamw(head.named_parameters(), cfg.optim,
                                                         no_decay_names=()).param_groups)
    assert [id(p) for p in decay] == [id(p) for p in params if p.ndim >= 2]
    assert [id(p) for p in no_decay] == [id(p) for p in params if p.ndim < 2]
    assert any(n.endswith("queries") for n, p in head.named_parameters() if p.ndim >= 2)


def test_checks_trainer_settings_and_resume_before_writing(tmp_path, table):
    split = make_split(table, mode="honest", seed=0)
    cfg = tiny_config(tmp_path, *FROZEN, "trainer.accelerator=tpu")
    with pytest.raises(ConfigError, match="trainer.accelerator='tpu'"):
        fit(cfg, table, split, tmp_path / "tpu")
    assert not (tmp_path / "tpu").exists()
    fit(tiny_config(tmp_path, *FROZEN, "optim.epochs=1"), table, split, tmp_path / "run")
    changed = tiny_config(tmp_path, *FROZEN, "optim.epochs=1", "optim.lr=1e-2", "trainer.resume=true")
    with pytest.raises(ConfigError, match=r"cannot resume with a different config: optim.lr"):
        fit(changed, table, split, tmp_path / "run")


def test_every_cached_crop_is_trained_against_its_images_label(tmp_path):
    """The first step's loss (before any update) is the mean over images and crops of each crop's
    loss against the image's label, not the loss of the image's mean crop score."""
    cfg = tiny_config(tmp_path, *FROZEN, "optim.epochs=1", "data.batch_size=6")
    model = DEIQT.from_config(cfg.model).eval()
    head = frozen.CachedHead(model)
    n, k = 6, 2
    with torch.no_grad():
        g, t = model.backbone.raw_features(torch.rand(n * k, 3, 32, 32))
    g, t = g.view(n, k, -1), t.view(n, k, *t.shape[1:])
    g[:, 1] += 3.0  # the second crop looks very different from the first
    g, t, y = g.half(), t.half(), torch.rand(n)
    with torch.no_grad():
        crops = head.crop_scores(g, t)
    assert not torch.allclose(crops[:, 0], crops[:, 1])  # the two crops score differently
    torch.testing.assert_close(head(g, t), crops.mean(1))
    seen = []

    class First:
        def on_head_step(self, epoch, loss):
            seen.append(loss)

    frozen.train_head(cfg, head, (g, t, y), (g, t, y), callbacks=(First(),))
    loss = torch.nn.SmoothL1Loss(beta=cfg.optim.loss_beta)
    per_crop = float(loss(crops, y[:, None].expand(n, k)))
    image_mean = float(loss(crops.mean(1), y))
    assert seen[0] == pytest.approx(per_crop, rel=1e-6)
    assert per_crop - image_mean > 100 * 1e-6 * per_crop  # the two rules are told apart
