"""Fault suite, configuration: strict types, trainer settings checked before anything is written,
``base:`` chains resolved from the including file and cycles named."""

from __future__ import annotations

import pytest

from nriqa.cli import main
from nriqa.config import load_config
from nriqa.errors import ConfigError


@pytest.mark.parametrize("override, where", [
    ("data.crop_size=true", "data.crop_size"),
    ("data.batch_size=false", "data.batch_size"),
    ("data.crop_size=22.5", "data.crop_size"),
    ("data.hflip=1", "data.hflip"),
    ("optim.lr=true", "optim.lr"),
    ("optim.epochs='3'", "optim.epochs"),
    ("trainer.resume=1", "trainer.resume"),
    ("trainer.devices=abc", "trainer.devices"),
    ("trainer.devices=0", "trainer.devices"),
    ("trainer.accelerator=quantum", "trainer.accelerator"),
])
def test_a_wrong_type_is_a_named_error(override, where):
    with pytest.raises(ConfigError, match=rf"^{where}: "):
        load_config(None, [override])


def test_the_usual_spellings_still_load(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 2e-4\n  epochs: 3\ndata:\n  crop_size: 64\n  hflip: no\n")
    cfg = load_config(recipe, ["trainer.devices=2", "trainer.limit_train_batches=0.5",
                               "optim.warmup_epochs=1", "trainer.devices='0,1'"])
    assert cfg.optim.lr == 2e-4 and cfg.optim.warmup_epochs == 1.0 and cfg.data.hflip is False
    assert cfg.trainer.devices == "0,1" and cfg.trainer.limit_train_batches == 0.5


@pytest.mark.parametrize("override", ["trainer.accelerator=tpu", "trainer.accelerator=gpu",
                                      "trainer.strategy=nonsense"])
def test_trainer_settings_this_machine_cannot_run_fail_before_anything_is_written(
        override, tmp_path, capsys):
    import torch

    if override.endswith("gpu") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    rc = main(["train", "-c", "cpu_demo", f"trainer.output_dir={out}", override,
               "trainer.devices=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"trainer.{override.split('.')[1].split('=')[0]}=" in err
    assert not out.exists()


def test_a_base_cycle_is_named_with_its_files(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match="cycle") as err:
        load_config(tmp_path / "a.yaml")
    assert str(err.value).endswith(f"{tmp_path / 'a.yaml'} -> {tmp_path / 'b.yaml'} -> "
                                   f"{tmp_path / 'a.yaml'}")


def test_a_relative_base_is_read_from_the_including_files_folder(tmp_path, monkeypatch):
    folder = tmp_path / "recipes" / "mine"
    folder.mkdir(parents=True)
    (folder / "common.yaml").write_text("base: cpu_demo\noptim:\n  epochs: 7\n")
    (folder / "run.yaml").write_text("base: common.yaml\nname: mine\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "common.yaml").write_text("optim:\n  epochs: 99\n")  # must not be picked up
    monkeypatch.chdir(elsewhere)
    cfg = load_config(folder / "run.yaml")
    assert cfg.name == "mine" and cfg.optim.epochs == 7
    assert cfg.data.dataset == load_config("cpu_demo").data.dataset


def test_a_missing_base_names_the_including_file(tmp_path):
    (tmp_path / "run.yaml").write_text("base: nothere.yaml\n")
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'run.yaml'}: base recipe 'nothere.yaml'"):
        load_config(tmp_path / "run.yaml")
