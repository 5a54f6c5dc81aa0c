"""``nriqa score`` on folders of any size: streamed rows, resume after a kill, outputs and options
checked before any work, quoted CSV on stdout."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import photo_folder, tiny_model_file

from nriqa.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "m.safetensors")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    photo_folder(folder, n=6)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return folder


def _score(*args):
    return main(["score", *map(str, args), "--quiet", "--backend", "torch"])


def _csv_rows(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(), newline="")))


def test_stdout_csv_is_quoted_and_names_the_backend(model_file, tmp_path, capsys):
    folder = photo_folder(tmp_path / "odd", n=2)[0].parent
    (folder / "p00.png").rename(folder / 'a, "quoted" name.png')
    assert _score(folder, "--checkpoint", model_file) == 0
    captured = capsys.readouterr()
    rows = _csv_rows_from_text(captured.out)
    assert rows[0] == ["path", "score", "error", "backend"] and len(rows) == 3
    assert {r[0] for r in rows[1:]} == {str(folder / 'a, "quoted" name.png'), str(folder / "p01.png")}
    assert all(len(r) == 4 and r[3] == "torch" and float(r[1]) == float(r[1]) for r in rows[1:])
    assert "with backend torch" in captured.err


def _csv_rows_from_text(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def _bad_output_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "a_file").write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    # root may write anywhere a mode forbids; /proc/self takes no new files from anyone
    unwritable = locked if os.geteuid() != 0 else Path("/proc/self")
    return {
        "unknown extension": (tmp_path / "out.txt", "unknown output format '.txt'; allowed: .csv, .jsonl, .json"),
        "a folder": (tmp_path / "folder.csv", "is a folder, not a file"),
        "a file as parent": (tmp_path / "a_file" / "out.csv", "a_file is a file, not a folder"),
        "unwritable folder": (unwritable / "out.csv", "cannot write in"),
    }


def test_bad_outputs_fail_in_one_line_before_any_work(photos, tmp_path, capsys):
    # A missing model file: a bad output must be reported first, so nothing was loaded or scored.
    missing_model = tmp_path / "never_loaded.safetensors"
    for case, (out, message) in _bad_output_cases(tmp_path).items():
        rc = _score(photos, "--checkpoint", missing_model, "-o", out)
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1, (case, err)
        assert "never_loaded" not in err
    html = _score(photos, "--checkpoint", missing_model, "--html", tmp_path / "g.png")
    assert html == 2 and "--html" in capsys.readouterr().err


def test_bad_options_fail_in_one_line(model_file, photos, tmp_path, capsys):
    cases = {("--batch-size", "0"): "--batch-size 0: must be at least 1",
             ("--workers", "-1"): "--workers -1: must be 0",
             ("--device", "nonsense"): "--device nonsense: not a device"}
    if not torch.cuda.is_available():
        cases[("--device", "cuda")] = "--device cuda: no CUDA GPU is available"
    for option, message in cases.items():
        rc = _score(photos, "--checkpoint", model_file, "-o", tmp_path / "o.csv", *option)
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1, (option, err)
        assert not (tmp_path / "o.csv").exists()
    assert _score(photos, "--checkpoint", model_file, "--resume") == 2
    assert "--resume needs --output" in capsys.readouterr().err


def test_a_second_run_on_one_output_needs_resume_or_overwrite(model_file, photos, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert _score(photos, "--checkpoint", model_file, "-o", out) == 0
    first = out.read_text()
    assert _score(photos, "--checkpoint", model_file, "-o", out) == 2
    err = capsys.readouterr().err
    assert "already exists; pass --resume to continue it or --overwrite to replace it" in err
    assert out.read_text() == first
    assert _score(photos, "--checkpoint", model_file, "-o", out, "--overwrite") == 0
    assert out.read_text() == first
    assert _score(photos, "--checkpoint", model_file, "-o", out, "--resume") == 0
    assert out.read_text() == first  # nothing left to do, nothing appended
    assert "0 image(s)" in capsys.readouterr().err


def test_streamed_file_follows_the_umask(model_file, photos, tmp_path):
    old = os.umask(0o027)
    try:
        assert _score(photos, "--checkpoint", model_file, "-o", tmp_path / "u.jsonl") == 0
    finally:
        os.umask(old)
    assert (tmp_path / "u.jsonl").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json"])
def test_resume_repairs_a_partial_last_line_and_completes_the_rows(model_file, photos, tmp_path, suffix):
    full, part = tmp_path / f"full{suffix}", tmp_path / f"part{suffix}"
    assert _score(photos, "--checkpoint", model_file, "-o", full) == 0
    text = full.read_text()
    if suffix == ".json":
        rows = json.loads(text)
        part.write_text(json.dumps(rows[:3]))
    else:
        lines = text.splitlines(keepends=True)
        keep = 4 if suffix == ".csv" else 3  # header + 3 rows / 3 rows
        part.write_text("".join(lines[:keep]) + lines[keep][: len(lines[keep]) // 2])
    assert _score(photos, "--checkpoint", model_file, "-o", part, "--resume") == 0
    assert part.read_text() == text


def _kill_after_rows(cmd: list[str], out: Path, rows: int, timeout: float = 600) -> int:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= rows + 1:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode


@pytest.mark.slow
def test_scoring_killed_part_way_resumes_to_exactly_the_uninterrupted_rows(tmp_path):
    # 25 crops per image at batch size 1 keep the run long enough to be killed part-way. Only the
    # killed run is a subprocess (start-up is most of its time); the others run in this process.
    model = tiny_model_file(tmp_path / "m25.safetensors", patch_num=25)
    folder = tmp_path / "many"
    photo_folder(folder, n=40)
    full, killed = tmp_path / "full.csv", tmp_path / "killed.csv"
    args = ["score", str(folder), "--checkpoint", str(model), "--batch-size", "1",
            "--backend", "torch", "--quiet"]
    assert main([*args, "-o", str(full)]) == 0
    expected = _csv_rows(full)
    assert len(expected) == 41

    rc = _kill_after_rows([sys.executable, "-m", "nriqa.cli", *args, "-o", str(killed)], killed,
                          rows=3)
    assert rc == -signal.SIGKILL, "the run ended before it could be killed"
    assert killed.read_bytes().endswith(b"\n")  # never half a row
    partial = _csv_rows(killed)
    assert partial[0] == expected[0] and 3 <= len(partial) - 1 < 40
    assert partial == expected[: len(partial)]  # the rows written are the uninterrupted run's

    assert main([*args, "-o", str(killed), "--resume"]) == 0
    resumed = _csv_rows(killed)
    assert resumed == expected  # every row once, in order, with the same scores
    assert len({r[0] for r in resumed[1:]}) == 40


def test_resume_onto_a_foreign_file_fails_before_any_work(photos, tmp_path, capsys):
    out = tmp_path / "other.csv"
    out.write_text("name,value\na.png,1\n")
    rc = _score(photos, "--checkpoint", tmp_path / "never_loaded.safetensors", "-o", out, "--resume")
    err = capsys.readouterr().err
    assert rc == 2 and "cannot resume: its columns are ['name', 'value']" in err
    assert err.count("\n") == 1 and out.read_text() == "name,value\na.png,1\n"
