"""The method seam: a method registered from a test file alone trains through the normal engine;
names are checked against the registry; the old ``method.name`` spelling still reads."""

from __future__ import annotations

import json
import os
import socket
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import yaml
from helpers import tiny_config, tiny_images

from nriqa.config import Float, Section, load_config
from nriqa.data.splits import make_split
from nriqa.engine.module import IQAModule
from nriqa.engine.train import fit
from nriqa.errors import ConfigError
from nriqa.methods import (
    Method,
    ablatable_methods,
    ablation_variants,
    build_methods,
    check_methods,
    method_config,
    prepare_methods,
    register_method,
    registered_methods,
    unregister_method,
)
from nriqa.methods.lml import LMLMethod
from nriqa.methods.qfm import QFMMethod
from nriqa.models import DEIQT
from nriqa.protocol import ablation

CALLS: dict[str, list] = {}


class ToyConfig(Section):
    weight: Float = 0.1


class Toy(Method):
    """A tiny extra loss (the squared mean score, weighted) that counts its steps."""

    def __init__(self, cfg, model, context):
        super().__init__()
        self.weight = method_config(cfg, self.name).weight
        self.context_keys = sorted(context)
        self.steps = 0
        CALLS.setdefault("built", []).append(self)

    @classmethod
    def prepare(cls, cfg, parts, out_dir, settings, fit_fn):
        CALLS.setdefault("prepare", []).append((sorted(parts), callable(fit_fn)))
        return {"toy_fact": 42}

    def on_fit_start(self, hooks):
        CALLS.setdefault("fit_start", []).append(hooks.model)

    def extra_loss(self, ctx):
        self.steps += 1
        ctx.count(forward_crops=1)  # one pretend extra pass, to see it counted
        loss = ctx.out.score.float().mean() ** 2
        return ctx.add_term("toy", loss, self.weight), {"toy_steps": float(self.steps)}


@pytest.fixture
def toy():
    CALLS.clear()
    register_method("toy", config=ToyConfig,
                    ablations=[("deiqt", ["method.names=[]"]), ("toy", ["method.names=[toy]"])])(Toy)
    yield Toy
    unregister_method("toy")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return tiny_images(tmp_path_factory.mktemp("imgs"))


def test_a_method_registered_from_a_test_file_trains_one_step_through_the_engine(tmp_path, table,
                                                                                toy):
    cfg = tiny_config(tmp_path, "method.names=[toy]", "method.options.toy.weight=0.5",
                      "optim.epochs=1", "trainer.limit_train_batches=1")
    result = fit(cfg, table, make_split(table, mode="honest", seed=0), tmp_path / "run")
    (method,) = CALLS["built"]
    assert method.weight == 0.5 and method.steps == 1
    assert CALLS["prepare"] == [(["select", "test", "train"], True)]
    assert "toy_fact" in method.context_keys and "train_table" in method.context_keys
    assert len(CALLS["fit_start"]) == 1 and isinstance(CALLS["fit_start"][0], torch.nn.Module)
    assert result.results["method"] == "toy"
    own = result.results["compute"]["own"]
    assert own["forward_crops"] == own["backward_crops"] + 1  # the toy's counted pass
    logs = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    assert logs["train/toy_steps_step"].dropna().tolist() == [1.0]
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.method.names == ["toy"] and saved.method.options == {"toy": {"weight": 0.5}}
    assert json.loads((tmp_path / "run" / "results.json").read_text())["method"] == "toy"


def test_a_plugin_method_gets_its_ablations_and_option_errors_from_the_registry(tmp_path, toy):
    assert "toy" in registered_methods() and "toy" in ablatable_methods()
    assert ablation.variants("toy") == [("deiqt", ["method.names=[]"]), ("toy", ["method.names=[toy]"])]
    with pytest.raises(ConfigError, match=r"method.options.toy.*unknown key 'method.options.toy.wieght'"):
        check_methods(load_config(None, ["method.names=[toy]", "method.options.toy.wieght=1"]))
    with pytest.raises(ConfigError, match=r"method.options.toy: weight"):
        check_methods(load_config(None, ["method.names=[toy]", "method.options.toy.weight=abc"]))
    # no section of its own given: the registered defaults
    assert method_config(load_config(None, ["method.names=[toy]"]), "toy").weight == 0.1
    with pytest.raises(ValueError, match="already registered"):
        register_method("toy")(type("Other", (Method,), {}))


def test_unknown_methods_are_named_errors_listing_the_registered_ones(tmp_path, table):
    cfg = load_config(None, ["method.names=[qfm, nope]"])
    with pytest.raises(ConfigError, match=r"unknown method 'nope'; registered: \['lml', 'qfm'"):
        check_methods(cfg)
    cfg = tiny_config(tmp_path, "method.name=nope")  # the old spelling: checked the same way
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        fit(cfg, table, make_split(table, mode="honest", seed=0), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # before anything is written
    with pytest.raises(ConfigError, match="method.options.nope: no method 'nope' is registered"):
        check_methods(load_config(None, ["method.options.nope.x=1"]))
    with pytest.raises(ConfigError, match="qfm has its own section, method.qfm"):
        check_methods(load_config(None, ["method.names=[qfm]", "method.options.qfm.alpha=1"]))
    with pytest.raises(ConfigError, match="no ablations for 'nope'|unknown method 'nope'"):
        ablation_variants("nope")


@pytest.mark.parametrize(("old", "names"), [("deiqt", []), ("qfm", ["qfm"]), ("lml", ["lml"]),
                                            ("qfm+lml", ["qfm", "lml"])])
def test_the_old_method_name_still_reads_and_prints_the_same(old, names):
    cfg = load_config(None, [f"method.name={old}"])
    assert cfg.method.names == names and cfg.method.name == old
    assert load_config(None, [f"method.names={names}"]).method.name == old
    again = load_config(None, cfg.model_dump(mode="json"))  # a saved config.yaml reads back
    assert again.method.names == names
    assert load_config(None, [f"method.name={old}", f"method.names={names}"]).method.names == names


def test_old_and_new_spellings_that_disagree_or_repeat_are_errors():
    with pytest.raises(ConfigError, match="method.name gives .'qfm'. and method.names"):
        load_config(None, ["method.name=qfm", "method.names=[lml]"])
    with pytest.raises(ConfigError, match="named twice"):
        load_config(None, ["method.names=[lml, lml]"])
    with pytest.raises(ConfigError, match=r"method.names=\[\] trains it"):
        load_config(None, ["method.names=[deiqt]"])
    assert load_config(None, ["method.names=qfm+lml"]).method.names == ["qfm", "lml"]


@pytest.mark.parametrize("names", [["qfm", "lml"], ["lml", "qfm"]])
def test_composed_methods_are_built_and_run_in_the_order_named(tmp_path, names):
    cfg = tiny_config(tmp_path, f"method.names=[{','.join(names)}]", "method.qfm.teacher=false",
                      "method.lml.crops=2", "method.lml.saliency=random")
    methods = build_methods(cfg, DEIQT.from_config(cfg.model), {"train_size": 8})
    kinds = {"qfm": QFMMethod, "lml": LMLMethod}
    assert [type(m) for m in methods] == [kinds[n] for n in names]
    assert [m.name for m in methods] == names
    module = IQAModule(cfg, context={"train_size": 8})
    assert [m.name for m in module.methods] == names and module.crops_per_image == 2
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randint(0, 256, (2, 2, 3, 32, 32), generator=g, dtype=torch.uint8),
             "label": torch.tensor([0.2, 0.8]), "group": torch.tensor([0, 1]),
             "index": torch.tensor([0, 1])}
    _, logs, ctx = module.step_loss(batch)
    assert list(ctx.terms) == ["regression", "contrastive"]  # QFM's memory is still empty
    # each method's values are logged in the order the methods ran
    order = [k.split("/")[1].split("_")[0] for k in logs if k.startswith(("train/qfm", "train/lml"))]
    assert list(dict.fromkeys(order)) == names


def test_lml_ablations_drop_the_vit_only_variant_on_a_cnn(tmp_path):
    vit = tiny_config(tmp_path)  # the tiny ViT has a CLS token
    cnn = tiny_config(tmp_path, "model.backbone=test_efficientnet", "model.img_size=null",
                      "model.backbone_kwargs={}")
    assert "lml-vit-cls" in dict(ablation_variants("lml", vit))
    assert "lml-vit-cls" not in dict(ablation_variants("lml", cnn))
    assert len(ablation_variants("lml", cnn)) == len(ablation_variants("lml")) - 1
    assert len(ablation_variants("qfm", cnn)) == 14


def test_the_engine_keeps_what_a_method_syncs_itself_out_of_ddp_broadcasts(tmp_path, monkeypatch):
    """QFM-IQM's memory (``unsynced_modules``) leaves DDP's buffer broadcast; the engine does it,
    the method never sees the trainer."""
    cfg = tiny_config(tmp_path, "method.names=[qfm]", "method.qfm.teacher=false",
                      "method.qfm.warm_start=none")
    module = IQAModule(cfg, context={"train_size": 8})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(os.environ, "MASTER_ADDR", "127.0.0.1")
    monkeypatch.setitem(os.environ, "MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(module)
        module._trainer = SimpleNamespace(strategy=SimpleNamespace(model=wrapped))
        module._exclude_unsynced_from_ddp()
    finally:
        module._trainer = None
        dist.destroy_process_group()
    memory_buffers = {f"methods.0.memory.{n}" for n, _ in module.methods[0].memory.named_buffers()}
    assert memory_buffers and memory_buffers <= wrapped.parameters_to_ignore
    assert not any(".model." in n or n.startswith("model.") for n in wrapped.parameters_to_ignore)


def test_ablation_runs_a_plugin_methods_variants_over_an_old_style_recipe(tmp_path, toy):
    imgs = tiny_images(tmp_path / "imgs")
    imgs[["path", "score", "group"]].to_csv(tmp_path / "labels.csv", index=False)
    raw = tiny_config(tmp_path, f"data.root={tmp_path}", f"data.label_file={tmp_path / 'labels.csv'}",
                      "data.options={path_column: path, score_column: score, group_column: group, "
                      "low: 0, high: 1}", "protocol.n_splits=1", "optim.epochs=1",
                      "trainer.limit_train_batches=1").model_dump(mode="json")
    del raw["method"]["names"]
    raw["method"]["name"] = "toy"  # the old spelling; the variants say method.names
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    table = ablation.run_ablation(str(recipe), "toy", ["method.options.toy.weight=0.3"],
                                  tmp_path / "abl")
    assert table["variant"].tolist() == ["deiqt", "toy"]
    assert (tmp_path / "abl" / "ablation.md").is_file()
    for variant, names in (("deiqt", []), ("toy", ["toy"])):
        saved = load_config(tmp_path / "abl" / variant / "config.yaml")
        assert saved.method.names == names and saved.method.options["toy"] == {"weight": 0.3}
        # what every variant shares: QFM-IQM's teacher folder, from the registry
        assert saved.method.qfm.teacher_dir == str(tmp_path / "abl" / "teachers")
    assert [m.weight for m in CALLS["built"]] == [0.3]  # only the toy variant built the toy


def test_a_method_without_settings_and_prepare_clashes(tmp_path, toy):
    class Bare(Method):
        @classmethod
        def prepare(cls, cfg, parts, out_dir, settings, fit_fn):
            return {"toy_fact": 0}

    register_method("bare")(Bare)
    try:
        cfg = load_config(None, ["method.names=[bare]"])
        assert method_config(cfg, "bare") is None and build_methods(cfg, None)[0].name == "bare"
        with pytest.raises(ConfigError, match="method.options.bare: the bare method takes no settings"):
            check_methods(load_config(None, ["method.names=[bare]", "method.options.bare.x=1"]))
        both = load_config(None, ["method.names=[toy, bare]"])
        with pytest.raises(ConfigError, match=r"bare prepares \['toy_fact'\], already prepared"):
            prepare_methods(both, {"train": None}, tmp_path, None, fit)
    finally:
        unregister_method("bare")
    assert "bare" not in registered_methods()
