"""Recipes without copies (issue 8): one recipe per method, the dataset chosen by data.dataset.

``data/recipes_before_issue8.json`` holds, for each of the 37 recipes nriqa shipped before,
the recipe as its ``base:`` chain merged it (read once from commit b166128 with that commit's
``_read_recipe``). Validated by today's ``RunConfig`` it gives the config the old recipe resolved
to; each must equal what the new recipes give, field for field (``model_dump``), except that the
new recipes leave ``data.patch_num``/``test_patch_num``/``resize`` to the dataset table where
the old ones restated it: those three are compared as the values the loaders use
(``resolve_data_settings``), on both sides.
"""

import itertools
import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from nriqa import config
from nriqa.config import RunConfig, list_recipes, load_config, recipe_path, renamed_recipe
from nriqa.engine.data import resolve_data_settings
from nriqa.errors import ConfigError

BEFORE = json.loads((Path(__file__).parent / "data" / "recipes_before_issue8.json").read_text())
METHOD_RECIPES = ("deiqt", "qfm", "lml", "qfm_lml")
KEPT = ("demo", "cpu_demo", "cpu_biq2021", "qfm_cpu", "lml_cpu", "zoo_biq2021_lite0")


def resolved(cfg: RunConfig) -> dict:
    """The config's fields, with the dataset table's crop and resize defaults filled in."""
    out = cfg.model_dump(mode="json")
    settings = resolve_data_settings(cfg)
    out["data"] |= {"patch_num": settings.patch_num, "test_patch_num": settings.test_patch_num,
                    "resize": settings.resize}
    return out


def test_the_recipes_are_one_per_method_plus_the_cpu_ones():
    assert sorted(list_recipes()) == sorted((*METHOD_RECIPES, *KEPT))
    assert len(BEFORE) == 37 and sum(renamed_recipe(n) is not None for n in BEFORE) == 32


# Deliberate changes to a recipe since then, each with its reason; everything else must stay.
CHANGED_SINCE = {
    # the shipped model's second version (docs/models.md): head recipe chosen on validation
    "zoo_biq2021_lite0": {"data": {"hflip": True, "test_flip": True}, "optim": {"ema_decay": 0.998}},
}


@pytest.mark.parametrize("old", sorted(BEFORE))
def test_every_old_recipe_resolves_as_before(old, caplog):
    raw = BEFORE[old]
    for section, fields in CHANGED_SINCE.get(old, {}).items():
        raw = raw | {section: raw.get(section, {}) | fields}
    expected = resolved(RunConfig.model_validate(raw))
    renamed = renamed_recipe(old)
    if renamed is None:
        assert resolved(load_config(old)) == expected
        return
    method, dataset = renamed
    assert resolved(load_config(method, [f"data.dataset={dataset}"])) == expected
    config._say_renamed.cache_clear()
    with caplog.at_level(logging.WARNING, logger="nriqa.config"):
        assert resolved(load_config(old)) == expected  # the old name still works ...
        load_config(old)
    assert f"-c {method} data.dataset={dataset}" in caplog.text  # ... and names the new way
    assert caplog.text.count("is now") == 1  # once, not once per load


def test_key_fields_of_the_old_recipes():
    """A few values stated outright, so that the expected data above is not its own witness."""
    livec = load_config("deiqt", ["data.dataset=livec"])
    assert livec.name == "deiqt_livec" and livec.trainer.output_dir == "runs/deiqt_livec"
    assert resolve_data_settings(livec).patch_num == 10 and livec.data.batch_size == 64
    assert livec.split.protocol == "paper" and livec.model.weights == "hub"
    assert livec.optim.lr == 2e-4 and livec.optim.epochs == 9 and livec.protocol.n_splits == 10
    spaq = load_config("qfm", ["data.dataset=spaq"])
    assert spaq.name == "qfm_spaq" and spaq.method.name == "qfm"
    assert resolve_data_settings(spaq).resize == "aspect:384x512"
    both = load_config("qfm_lml", ["data.dataset=tid2013"])
    assert both.method.name == "qfm+lml" and both.data.batch_size * both.method.lml.crops == 64
    assert both.trainer.output_dir == "runs/qfm_lml_tid2013"


def test_overrides_win_over_the_dataset_placeholders():
    cfg = load_config("lml", ["data.dataset=csiq", "name=mine"])
    assert cfg.name == "mine" and cfg.trainer.output_dir == "runs/mine"
    cfg = load_config("deiqt_csiq", ["trainer.output_dir=out/x", "data.patch_num=5"])
    assert cfg.trainer.output_dir == "out/x" and cfg.data.patch_num == 5
    assert load_config("deiqt").name == "deiqt_embedded"  # no dataset chosen: the default one


def test_a_user_recipe_may_name_an_old_recipe_as_its_base(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: lml_koniq10k\noptim:\n  epochs: 2\n")
    cfg = load_config(mine)
    assert cfg.data.dataset == "koniq10k" and cfg.method.name == "lml" and cfg.optim.epochs == 2
    assert cfg.name == "lml_koniq10k"


def test_a_misspelt_old_name_is_still_an_error_with_a_hint():
    with pytest.raises(ConfigError, match="no recipe 'deiqt_livecc'"):
        load_config("deiqt_livecc")


@pytest.mark.parametrize("name", list_recipes())
def test_each_recipe_opens_with_a_sentence_saying_what_it_is_for(name):
    lines = recipe_path(name).read_text().splitlines()
    assert lines[0].startswith("# ") and len(lines[0]) > 30
    block = " ".join(line[1:].strip() for line in itertools.takewhile(
        lambda line: line.startswith("#"), lines))
    first = re.split(r"(?<=[.!?])\s+(?=[A-Z])", block, maxsplit=1)[0]
    assert first.endswith(".") and len(first) < 160, first  # one short sentence, not a run-on


@pytest.mark.parametrize("name", list_recipes())
def test_recipes_restate_no_default(name):
    """Only what differs from the config's defaults (or from the base recipe) is written down."""
    raw = yaml.safe_load(recipe_path(name).read_text())
    base = load_config(raw["base"]).model_dump(mode="json") if "base" in raw else (
        RunConfig().model_dump(mode="json"))
    for section, values in raw.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if not isinstance(value, dict):
                    assert base[section].get(key) != value, f"{name}: {section}.{key} restates {value!r}"
    if name in METHOD_RECIPES:  # crops and resize: the dataset table's
        assert "patch_num" not in raw.get("data", {}) and "resize" not in raw.get("data", {})
