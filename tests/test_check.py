"""``check_dataset`` and the ``datasets`` sub-commands: every problem reported in one run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nriqa.cli import main
from nriqa.data import check
from nriqa.data.check import check_dataset
from nriqa.data.parsing.problems import BAD_ROW, DUPLICATE, LABEL_FILE, MISSING_FILE, UNREADABLE


def image_bytes(fmt: str, size: int = 48) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def clean(tmp_path) -> Path:
    (tmp_path / "img").mkdir()
    (tmp_path / "img/good.png").write_bytes(image_bytes("PNG"))
    (tmp_path / "img/good.jpg").write_bytes(image_bytes("JPEG"))
    (tmp_path / "labels.csv").write_text("path,score\nimg/good.png,3\nimg/good.jpg,4\n")
    return tmp_path


@pytest.fixture
def broken(clean) -> Path:
    """Every kind of problem at once: bad rows, a missing image, a duplicate, bad images."""
    png, jpg = image_bytes("PNG", 64), image_bytes("JPEG", 64)
    (clean / "img/corrupt.png").write_bytes(b"this is not an image at all" * 10)
    (clean / "img/cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    (clean / "img/cut.png").write_bytes(png[: len(png) // 2])
    (clean / "img/empty.jpg").write_bytes(b"")
    (clean / "labels.csv").write_text(
        "path,score\n"
        "img/good.png,3\n"        # 2
        "img/good.jpg,nan\n"      # 3 NaN score
        "img/corrupt.png,2\n"     # 4 undecodable
        "img/cut.jpg,4\n"         # 5 truncated JPEG
        "img/cut.png,1\n"         # 6 truncated PNG
        "img/empty.jpg\n"         # 7 too few fields
        "img/gone.jpg,2\n"        # 8 missing on disk
        "img/good.png,5\n"        # 9 duplicate of line 2
        "img/empty.jpg,bad\n"     # 10 non-numeric score
    )
    return clean


SCALE = {"low": 1, "high": 5}


def test_check_reports_every_problem_in_one_run(broken):
    report = check_dataset("csv", broken, **SCALE)
    assert not report.ok
    assert report.counts() == {BAD_ROW: 3, MISSING_FILE: 1, DUPLICATE: 1, UNREADABLE: 3}
    assert report.n_labelled == 4 and report.n_decoded == 1
    where = {(p.kind, p.where) for p in report.problems}
    assert {(BAD_ROW, "line 3"), (BAD_ROW, "line 7"), (BAD_ROW, "line 10"),
            (MISSING_FILE, "line 8"), (DUPLICATE, "line 9")} <= where
    unreadable = sorted(Path(p.source).name for p in report.problems if p.kind == UNREADABLE)
    assert unreadable == ["corrupt.png", "cut.jpg", "cut.png"]
    text = report.summary()
    for words in ("PROBLEMS: 8", "bad row: 3", "missing file: 1", "duplicate: 1",
                  "unreadable image: 3", "labels.csv: line 8", "cut.jpg"):
        assert words in text


def test_check_without_images_and_examples_cap(broken):
    report = check_dataset("csv", broken, verify_images=False, max_examples=1, **SCALE)
    assert report.counts() == {BAD_ROW: 3, MISSING_FILE: 1, DUPLICATE: 1}
    assert report.n_decoded is None
    assert "... and 2 more" in report.summary() and "not decoded" in report.summary()
    assert len(report.to_dict()["examples"][BAD_ROW]) == 1


def test_check_clean_dataset(clean):
    report = check_dataset("csv", clean, **SCALE)
    assert report.ok and report.n_decoded == 2
    assert report.summary().endswith("OK: no problems found")


def test_check_reports_any_decoder_failure(clean, monkeypatch):
    def fail(path):
        raise OSError("decoder exploded")

    monkeypatch.setattr(check, "load_image", fail)  # not a DataError: still the file's problem
    report = check_dataset("csv", clean, **SCALE)
    assert report.counts()[UNREADABLE] == 2
    assert "OSError: decoder exploded" in report.summary()


def test_check_unreadable_label_file(tmp_path):
    report = check_dataset("live", tmp_path)
    assert not report.ok and list(report.counts()) == [LABEL_FILE]
    assert "dmos_realigned.mat" in report.summary()
    (tmp_path / "labels.csv").write_text("file,score\na.jpg,1\n")
    report = check_dataset("csv", tmp_path, **SCALE)
    assert "missing column(s) ['path']" in report.problems[0].message


def test_check_notes_size_mismatch(tmp_path):
    (tmp_path / "distorted_images").mkdir()
    (tmp_path / "distorted_images/i01_01_1.bmp").write_bytes(b"")
    (tmp_path / "mos_with_names.txt").write_text("5.0 I01_01_1.bmp\n5.1 I01_01_2.bmp\n")
    report = check_dataset("tid2013", tmp_path, verify_images=False)
    assert report.counts() == {MISSING_FILE: 1}
    assert "should have 3000" in report.notes[0]


# ------------------------------------------------------------------------------------------
# Command line


def cli(*args: str) -> int:
    return main(["datasets", *args])


def test_cli_check_exit_codes_and_json(broken, clean, capsys, tmp_path_factory):
    options = ["-o", "low=1", "-o", "high=5"]
    assert cli("check", "csv", str(broken), *options) == 1
    assert "PROBLEMS: 8" in capsys.readouterr().out
    assert cli("check", "csv", str(broken), "--no-images", "--json", *options) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["counts"][MISSING_FILE] == 1
    assert out["examples"][BAD_ROW][0]["where"] == "line 3"
    other = tmp_path_factory.mktemp("clean")
    (other / "a.png").write_bytes(image_bytes("PNG"))
    (other / "mine.csv").write_text("file,mos\na.png,80\n")
    assert cli("check", "csv", str(other), "--label-file", "mine.csv", "-o", "path_column=file",
               "-o", "score-column=mos", "-o", "low=0", "-o", "high=100") == 0
    assert "OK" in capsys.readouterr().out


def test_cli_list_and_errors(capsys, tmp_path):
    assert cli("list") == 0
    out = capsys.readouterr().out
    assert "koniq10k" in out and "train/val/test" in out
    assert cli("list", "--json") == 0
    assert {r["name"] for r in json.loads(capsys.readouterr().out)} >= {"live", "embedded"}
    assert cli("check", "nosuchset", str(tmp_path)) == 2
    assert "unknown dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli("check", "csv", str(tmp_path), "-o", "novalue")
