"""Fault suite, written files: one atomic writer, fsync'd, with the umask's permissions, and no
stray temporary file after an exception or SIGTERM."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import TINY_MODEL

import nriqa.io as nio
from nriqa.config import load_config, save_config
from nriqa.io import atomic_write, atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_new_files_get_the_umasks_permissions(tmp_path, umask, mask):
    umask(mask)
    path = atomic_write_text(tmp_path / "a.txt", "x")
    assert _mode(path) == 0o666 & ~mask


def test_an_existing_file_keeps_its_permissions(tmp_path, umask):
    path = tmp_path / "scores.csv"
    path.write_text("old")
    path.chmod(0o644)
    umask(0o077)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and _mode(path) == 0o644


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_every_nriqa_writer_follows_the_umask(tmp_path, umask, mask):
    """umask 022 -> 0644, 027 -> 0640, 002 -> 0664: as ``open(path, "w")`` would give."""
    from types import SimpleNamespace

    from nriqa.data.splits import make_split
    from nriqa.data.table import Scale, make_table
    from nriqa.inference.model_files import save_model
    from nriqa.inference.stream import ScoreWriter
    from nriqa.models import DEIQT
    from nriqa.reports.report import write_scores

    umask(mask)
    cfg = load_config(None, TINY_MODEL)
    save_config(cfg, tmp_path / "config.yaml")
    atomic_write_json(tmp_path / "results.json", {"a": 1})
    meta = {"format": "nriqa-deiqt-v1", "model": cfg.model.model_dump(mode="json"),
            "crop_size": 32, "test_patch_num": 1}
    save_model(DEIQT.from_config(cfg.model), meta, tmp_path / "model.safetensors")
    images = [tmp_path / f"i{i}.png" for i in range(6)]
    table = make_table(images, [i / 5 for i in range(6)], Scale(0, 1, True), source=str(tmp_path))
    make_split(table, mode="honest", seed=0).to_json(tmp_path / "split.json", table, tmp_path)
    result = SimpleNamespace(path="a.png", score=0.5, error="", backend="torch")
    write_scores([result], tmp_path / "scores.csv")  # written whole (evaluate, demo)
    streamed = ScoreWriter(tmp_path / "streamed.csv")  # `nriqa score`, batch by batch
    streamed.write([result])
    streamed.close()
    written = ("config.yaml", "results.json", "model.safetensors", "split.json", "scores.csv",
               "streamed.csv")
    assert {name: oct(_mode(tmp_path / name)) for name in written} == {
        name: oct(0o666 & ~mask) for name in written}
    assert (tmp_path / "scores.csv").read_text().splitlines()[1] == "a.png,0.5,,torch"
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_file_and_its_folder_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def record(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(nio.os, "fsync", record)
    path = atomic_write_text(tmp_path / "a.txt", "x")
    assert path.read_text() == "x" and str(tmp_path) in synced  # the folder, after the rename
    assert any(Path(p).name.startswith(".a.txt.") for p in synced)  # the data, before it


def test_an_exception_leaves_no_temporary_file_and_the_old_file_intact(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old")

    def fail(tmp: Path):
        tmp.write_text("half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_sigterm_mid_write_leaves_no_temporary_file(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from nriqa.io import atomic_write

        def slow(tmp):
            tmp.write_text("half")
            print("writing", flush=True)
            time.sleep(60)

        atomic_write({str(tmp_path / 'out.txt')!r}, slow)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert len(list(tmp_path.glob(".out.txt.*.tmp"))) == 1  # mid-write
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert list(tmp_path.iterdir()) == []


def test_the_lightning_checkpoint_writer_is_atomic(tmp_path, umask):
    from nriqa.engine.train import AtomicCheckpointIO

    umask(0o002)
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 1}, tmp_path / "last.ckpt")
    assert _mode(tmp_path / "last.ckpt") == 0o664 and not list(tmp_path.glob(".*.tmp"))
    assert torch.equal(io.load_checkpoint(tmp_path / "last.ckpt")["state_dict"]["w"], torch.ones(2))
