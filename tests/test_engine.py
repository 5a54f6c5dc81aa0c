"""Training engine, protocol runner and scoring, end to end on tiny models and images."""

from __future__ import annotations

import json
import socket

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import tiny_config, tiny_images

from nriqa.data.splits import make_split
from nriqa.engine.data import IQADataModule, resolve_data_settings, subset
from nriqa.engine.module import IQAModule
from nriqa.engine.sampling import EvalSampler, TrainSampler
from nriqa.engine.train import build_trainer, fit
from nriqa.inference.model_files import load_model
from nriqa.models import DEIQT


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return tiny_images(tmp_path_factory.mktemp("imgs"))


def _state(path):
    return {k: v for k, v in load_model(path)[0].state_dict().items()}


def test_fit_selects_tests_and_exports(tmp_path, table):
    cfg = tiny_config(tmp_path)
    split = make_split(table, mode="honest", seed=0)
    result = fit(cfg, table, split, tmp_path / "run")
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["protocol"] == "honest" and res["selection"] == "best val PLCC"
    assert res["test"]["n"] == len(split.test) and set(res["test"]) >= {"srcc", "plcc", "krcc", "rmse"}
    assert res["sizes"] == {"train": len(split.train), "test": len(split.test), "select": len(split.val)}
    preds = pd.read_csv(tmp_path / "run" / "test_predictions.csv")
    assert sorted(preds["path"]) == sorted(table["path"].iloc[split.test])
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert (tmp_path / "run" / "logs" / "metrics.csv").is_file()
    model, meta = load_model(result.model_path)
    assert meta["test_patch_num"] == 2 and meta["crop_size"] == 32


def test_paper_protocol_selects_on_test_and_says_so(tmp_path, table):
    cfg = tiny_config(tmp_path, "split.protocol=paper")
    split = make_split(table, mode="paper", seed=0)
    res = fit(cfg, table, split, tmp_path / "run").results
    assert "optimistic" in res["selection"] and res["sizes"]["select"] == res["sizes"]["test"]
    # the selection part (here the test part) is logged as select/*, never as a validation part
    logged = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv").columns
    assert {"select/plcc", "select/srcc", "test/plcc"} <= set(logged)
    assert not [c for c in logged if c.startswith("val/")]


def test_resume_after_interruption_ends_where_an_uninterrupted_run_does(tmp_path, table):
    split = make_split(table, mode="honest", seed=0)
    full = fit(tiny_config(tmp_path / "a", "optim.epochs=3", "trainer.output_dir=x"), table, split,
               tmp_path / "full")
    # "killed" after epoch 1: its last.ckpt is all that survives, then --resume continues it
    fit(tiny_config(tmp_path / "b", "optim.epochs=1"), table, split, tmp_path / "resumed")
    (tmp_path / "resumed" / "checkpoints" / "best.ckpt").unlink()
    resumed = fit(tiny_config(tmp_path / "b", "optim.epochs=3", "trainer.resume=true"), table,
                  split, tmp_path / "resumed")
    last_full = torch.load(tmp_path / "full/checkpoints/last.ckpt", weights_only=True)
    last_resumed = torch.load(tmp_path / "resumed/checkpoints/last.ckpt", weights_only=True)
    assert last_full["global_step"] == last_resumed["global_step"] > 0
    for key, value in last_full["state_dict"].items():
        assert torch.allclose(value, last_resumed["state_dict"][key], atol=1e-6), key
    assert full.results["test_last_epoch"] == pytest.approx(resumed.results["test_last_epoch"])


def test_train_sampler_covers_every_item_once_per_epoch_across_ranks():
    keys = [k for r in range(3) for k in TrainSampler(10, seed=1, rank=r, world=3)]
    assert len(keys) == 12 and {i for _, i in keys} == set(range(10))
    s = TrainSampler(10, seed=1, rank=0, world=1)
    first = [i for _, i in s]
    s.set_epoch(1)
    assert [i for _, i in s] != first and all(e == 1 for e, _ in s)
    shards = [list(EvalSampler(7, rank=r, world=3)) for r in range(3)]
    assert all(len(x) == 3 for x in shards) and set(sum(shards, [])) == set(range(7))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes_give_the_same_test_metrics(tmp_path, table, monkeypatch):
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    cfg = tiny_config(tmp_path, "data.eval_batch_size=2")
    torch.manual_seed(0)
    model = DEIQT.from_config(cfg.model)
    settings = resolve_data_settings(cfg)
    test = subset(table, np.arange(len(table) - 1))  # 23 images: uneven over 2 ranks
    results = {}
    for devices, strategy in ((1, "auto"), (2, "ddp_spawn")):
        cfg.trainer.devices, cfg.trainer.strategy = devices, strategy
        module = IQAModule(cfg, model=model)
        data = IQADataModule(cfg, test=test, settings=settings)
        trainer = build_trainer(cfg, tmp_path / f"d{devices}", [])
        results[devices] = trainer.test(module, datamodule=data, verbose=False)[0]
    assert results[1]["test/srcc"] == pytest.approx(results[2]["test/srcc"], abs=1e-6)
    assert results[1]["test/plcc"] == pytest.approx(results[2]["test/plcc"], abs=1e-6)
    assert results[1]["test/rmse"] == pytest.approx(results[2]["test/rmse"], abs=1e-6)


def test_infer_with_best_compares_student_and_teacher_on_the_selection_part(tmp_path, table):
    cfg = tiny_config(tmp_path, "method.name=lml", "method.lml.crops=2", "method.lml.infer_with=best",
                      "method.lml.momentum=0.5")
    split = make_split(table, mode="honest", seed=0)
    result = fit(cfg, table, split, tmp_path / "run")
    assert result.results["exported"] in ("student", "lml teacher")
    model, _ = load_model(result.model_path)
    preds = pd.read_csv(tmp_path / "run" / "test_predictions.csv")
    # the reported test metrics are those of the exported network
    from nriqa.engine.train import predict_metrics

    metrics = predict_metrics(model, subset(table, split.test), cfg, resolve_data_settings(cfg))
    assert metrics["plcc"] == pytest.approx(result.results["test"]["plcc"], abs=1e-5)
    assert len(preds) == len(split.test)


def test_qfm_teachers_are_fitted_once_per_split_when_shared(tmp_path, table):
    split = make_split(table, mode="honest", seed=0)
    shared = f"method.qfm.teacher_dir={tmp_path / 'teachers'}"
    fit(tiny_config(tmp_path, "method.name=qfm", shared, "optim.epochs=1"), table, split, tmp_path / "a")
    fit(tiny_config(tmp_path, "method.name=qfm", shared, "optim.epochs=1", "method.qfm.alpha=1"),
        table, split, tmp_path / "b")
    teachers = list((tmp_path / "teachers").iterdir())
    assert len(teachers) == 1 and (teachers[0] / "model.safetensors").is_file()
    other = make_split(table, mode="honest", seed=1)
    fit(tiny_config(tmp_path, "method.name=qfm", shared, "optim.epochs=1"), table, other, tmp_path / "c")
    assert len(list((tmp_path / "teachers").iterdir())) == 2


def test_config_mistakes_are_named_errors(tmp_path, table):
    from nriqa.errors import ConfigError, DataError, ImageError
    from nriqa.protocol.runner import run_protocol

    split = make_split(table, mode="honest", seed=0, ratios=(0.9, 0, 0.1))
    with pytest.raises(ConfigError, match="needs a validation part"):
        fit(tiny_config(tmp_path), table, split, tmp_path / "run")
    with pytest.raises(ConfigError, match="n_splits=1"):
        run_protocol(tiny_config(tmp_path, f"split.file={tmp_path / 's.json'}", "protocol.n_splits=2"))
    # an error re-raised from a DataLoader worker is rebuilt from its message alone
    err = ImageError("/data/x.jpg", "corrupt")
    again = type(err)(str(err))
    assert isinstance(again, DataError) and str(again) == "/data/x.jpg: corrupt"


def test_unused_backbone_parameters_are_frozen_for_ddp():
    from nriqa.models import Backbone

    bb = Backbone("convnext_atto")
    frozen = [n for n, p in bb.net.named_parameters() if not p.requires_grad]
    assert frozen == ["head.norm.weight", "head.norm.bias"]
    c, tokens = bb(torch.rand(1, 3, 64, 64))
    (c.sum() + tokens.sum()).backward()
    assert all(p.grad is not None for p in bb.net.parameters() if p.requires_grad)


def test_freeze_bn_keeps_every_batchnorm_statistic_through_training(tmp_path, table):
    """Lightning sets each submodule's training flag itself: the freeze must hold regardless."""
    cfg = tiny_config(tmp_path, "model.backbone=test_efficientnet", "model.img_size=null",
                      "model.backbone_kwargs={}", "model.freeze_bn=true", "optim.epochs=1")
    split = make_split(table, mode="honest", seed=0)
    start = DEIQT.from_config(cfg.model).state_dict()
    result = fit(cfg, table, split, tmp_path / "run")
    trained = load_model(result.model_path)[0].state_dict()
    bn_buffers = [k for k in start if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(bn_buffers) >= 3 * 10
    for key in bn_buffers:
        assert torch.equal(trained[key], start[key]), key
    # the weights did train
    assert any(not torch.equal(trained[k], start[k]) for k in start if k.startswith("decoder."))
