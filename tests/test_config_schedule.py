"""Typed configuration and the learning-rate schedule."""

from __future__ import annotations

import pytest

from nriqa.config import OptimConfig, list_recipes, load_config, parse_overrides
from nriqa.engine.schedule import lr_at
from nriqa.errors import ConfigError


def test_unknown_or_misspelt_key_is_rejected_by_name(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr' \(did you mean 'lr'\?\)"):
        load_config(None, ["optim.lrr=1e-3"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method:\n  qfm:\n    tau: 0.1\n")
    with pytest.raises(ConfigError, match=r"r.yaml: unknown key 'method.qfm.tau'.*tau_q"):
        load_config(recipe)
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(None, ["optim.lr=-1"])
    with pytest.raises(ConfigError, match="not divisible"):
        load_config(None, ["model.width=100", "model.heads=6"])


def test_overrides_parse_yaml_values_and_nest():
    assert parse_overrides(["a.b=1e-3", "a.c=[1, 2]", "d=true", "e=null"]) == {
        "a": {"b": 1e-3, "c": [1, 2]}, "d": True, "e": None}
    cfg = load_config("cpu_demo", ["optim.lr=0.001", "method.name=qfm", "method.qfm.alpha=0.25"])
    assert cfg.optim.lr == 0.001 and cfg.method.qfm.alpha == 0.25
    assert cfg.model.backbone == "tf_efficientnet_lite0"  # from the recipe
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["optim.lr"])


def test_every_bundled_recipe_validates():
    names = list_recipes()
    assert "cpu_demo" in names
    for name in names:
        load_config(name)


def test_unknown_recipe_suggests_a_name():
    with pytest.raises(ConfigError, match="cpu_demo"):
        load_config("cpu_dem")


def test_deiqt_schedule_values():
    cfg = OptimConfig()  # lr 2e-4, warm-up 3 epochs from 2e-7, x0.1 at epochs 3 and 6
    spe = 100
    assert lr_at(0, spe, cfg) == pytest.approx(2e-7)
    assert lr_at(150, spe, cfg) == pytest.approx(2e-7 + (2e-4 - 2e-7) * 0.5)
    assert lr_at(299, spe, cfg) == pytest.approx(2e-7 + (2e-4 - 2e-7) * 299 / 300)
    assert lr_at(300, spe, cfg) == pytest.approx(2e-5)  # straight to 0.1x after warm-up
    assert lr_at(599, spe, cfg) == pytest.approx(2e-5)
    assert lr_at(600, spe, cfg) == pytest.approx(2e-6)
    assert lr_at(899, spe, cfg) == pytest.approx(2e-6)


def test_cosine_and_constant_schedules():
    cos = OptimConfig(schedule="cosine", warmup_epochs=1, epochs=3)
    assert lr_at(10, 10, cos) == pytest.approx(2e-4)
    assert lr_at(20, 10, cos) == pytest.approx(2e-7 + 0.5 * (2e-4 - 2e-7))
    assert lr_at(30, 10, cos) == pytest.approx(2e-7)
    const = OptimConfig(schedule="constant", warmup_epochs=0)
    assert lr_at(500, 10, const) == 2e-4
