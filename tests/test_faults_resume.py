"""Fault suite, training: killed with SIGKILL at a random step and resumed, a run ends exactly
where an uninterrupted one does; a resume never damages the run folder it continues."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import tiny_config, tiny_images
from safetensors.torch import load_file

from nriqa.data.splits import make_split
from nriqa.engine.train import fit
from nriqa.errors import ConfigError, WeightsError

TESTS = Path(__file__).resolve().parent
EPOCHS = 3
# One loader worker: with workers, the loader draws indices from the sampler as soon as Lightning
# creates its iterator (before set_epoch), which is where a resume went wrong.
WORKERS = "data.num_workers=1"

# Fits the same run as ``_run`` below, and kills itself with SIGKILL (no clean-up of any kind)
# right after optimizer step KILL_AT.
KILLED = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads({threads})
    import lightning as L
    from pathlib import Path
    from helpers import tiny_config, tiny_images
    from nriqa.data.splits import make_split
    from nriqa.engine.train import fit

    class Kill(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == {kill_at}:
                os.kill(os.getpid(), signal.SIGKILL)

    tmp = Path({tmp!r})
    table = tiny_images(tmp / "imgs")
    cfg = tiny_config(tmp, "optim.epochs={epochs}", "trainer.output_dir={out}", {workers!r})
    fit(cfg, table, make_split(table, mode="honest", seed=0), {out!r}, callbacks=(Kill(),))
""")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return tiny_images(tmp_path_factory.mktemp("rs") / "imgs")


def _run(tmp: Path, table, out: Path, *extra):
    cfg = tiny_config(tmp, f"optim.epochs={EPOCHS}", f"trainer.output_dir={out}", WORKERS, *extra)
    return fit(cfg, table, make_split(table, mode="honest", seed=0), out)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, table):
    tmp = tmp_path_factory.mktemp("full")
    return _run(tmp, table, tmp / "run")


@pytest.mark.slow
def test_killed_at_a_random_step_and_resumed_ends_exactly_as_uninterrupted(
        tmp_path, table, uninterrupted):
    last = torch.load(uninterrupted.out_dir / "checkpoints" / "last.ckpt", weights_only=True)
    steps_per_epoch = last["global_step"] // EPOCHS
    kill_at = int(os.environ.get("NRIQA_TEST_KILL_AT", 0)) or \
        random.Random(os.urandom(8)).randint(steps_per_epoch + 1, EPOCHS * steps_per_epoch - 1)
    out = tmp_path / "run"
    script = KILLED.format(tests=str(TESTS), threads=torch.get_num_threads(), kill_at=kill_at,
                           tmp=str(tmp_path), epochs=EPOCHS,
                           out=str(out), workers=WORKERS)
    killed = subprocess.run([sys.executable, "-c", script], cwd=TESTS.parent, capture_output=True,
                            text=True)
    assert killed.returncode == -9, f"kill at step {kill_at}: {killed.stderr[-2000:]}"
    assert (out / "checkpoints" / "last.ckpt").is_file() and not (out / "results.json").exists()
    logged = pd.read_csv(out / "logs" / "metrics.csv")

    resumed = _run(tmp_path, table, out, "trainer.resume=true")

    expected = load_file(str(uninterrupted.model_path))
    got = load_file(str(resumed.model_path))
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{key} (killed at step {kill_at})"
    for part in ("test", "test_last_epoch"):
        assert resumed.results[part] == uninterrupted.results[part], f"killed at step {kill_at}"
    assert resumed.results["selected_epoch"] == uninterrupted.results["selected_epoch"]
    # the killed run's log is kept: its rows up to the checkpoint, then the resumed ones
    metrics = pd.read_csv(out / "logs" / "metrics.csv")
    assert metrics["step"].max() == pd.read_csv(uninterrupted.out_dir / "logs" /
                                                 "metrics.csv")["step"].max()
    assert set(logged["step"].dropna()) & set(metrics["step"].dropna())
    assert metrics["train/loss_step"].notna().sum() == pd.read_csv(
        uninterrupted.out_dir / "logs" / "metrics.csv")["train/loss_step"].notna().sum()


def test_last_ckpt_is_written_every_epoch(uninterrupted):
    ckpt = torch.load(uninterrupted.out_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == EPOCHS - 1  # the last epoch, whichever epoch was the best


def test_a_mismatching_resume_fails_before_touching_the_run(tmp_path, table, uninterrupted):
    out = tmp_path / "run"
    _copy_run(uninterrupted.out_dir, out)
    before = (out / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"config.yaml: cannot resume with a different config: "
                                          r"model.width \(64 -> 32\)"):
        _run(tmp_path, table, out, "trainer.resume=true", "model.width=32")
    assert (out / "config.yaml").read_text() == before


def test_a_truncated_last_ckpt_is_named(tmp_path, table, uninterrupted):
    out = tmp_path / "run"
    _copy_run(uninterrupted.out_dir, out)
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:4096])
    with pytest.raises(WeightsError, match=rf"{last}: damaged or truncated checkpoint"):
        _run(tmp_path, table, out, "trainer.resume=true")


def test_train_sampler_starts_at_the_restored_epoch(table):
    from nriqa.engine.data import IQADataModule

    class Progress:  # what Lightning restores from a checkpoint before building the loaders
        fit_loop = type("F", (), {"epoch_progress": type("E", (), {
            "current": type("C", (), {"processed": 2})()})()})()

    cfg = tiny_config(Path("/unused"))
    data = IQADataModule(cfg, table, table, table)
    data.trainer = Progress()
    assert {epoch for epoch, _ in data.train_dataloader().sampler} == {2}


def _copy_run(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst)
