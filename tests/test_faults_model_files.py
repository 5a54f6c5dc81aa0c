"""Fault suite, model files: nothing in a model file runs, and every damaged or tampered file is
one line naming the file and the problem (rc != 0 from the CLI, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL
from PIL import Image
from safetensors.torch import load_file, save_file

from nriqa.cli import main
from nriqa.config import load_config
from nriqa.errors import WeightsError
from nriqa.inference.model_files import load_model, read_meta, save_model
from nriqa.inference.scoring import Scorer
from nriqa.models import DEIQT

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = load_config(None, TINY_MODEL)
    meta = {"format": "nriqa-deiqt-v1", "model": cfg.model.model_dump(mode="json"),
            "crop_size": 32, "test_patch_num": 2, "test_crops": "grid", "resize": "none",
            "small_image": "upscale"}
    return save_model(DEIQT.from_config(cfg.model), meta, tmp_path_factory.mktemp("m") / "m.safetensors")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


def _meta(path: Path) -> dict:
    return read_meta(path)


def _with_meta(good: Path, out: Path, meta) -> Path:
    """``good``'s weights with ``meta`` (a dict, or raw text) as the nriqa metadata."""
    text = meta if isinstance(meta, str) else json.dumps(meta)
    save_file(load_file(str(good)), str(out), metadata={"nriqa": text})
    return out


def _evil_ckpt(path: Path, marker: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"state_dict": {}, "nriqa_meta": {"format": "nriqa-deiqt-v1"}, "x": Evil()}, path)
    return path


def _one_line_error(capsys, name: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert name in err, err
    return err


# --------------------------------------------------------------------------- malicious pickle


def test_a_malicious_ckpt_is_refused_everywhere_and_nothing_runs(tmp_path, image, capsys):
    marker = tmp_path / "PWNED"
    evil = _evil_ckpt(tmp_path / "evil.ckpt", marker)
    with pytest.raises(WeightsError, match=r"evil\.ckpt: refused: its pickle would call posix\.system"):
        Scorer.from_checkpoint(evil, device="cpu")
    with pytest.raises(WeightsError, match="evil.ckpt"):
        load_model(evil)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,score\n{image.name},0.5\n")
    assert main(["evaluate", "--checkpoint", str(evil), "--dataset", "csv", "--root",
                 str(image.parent), "--label-file", str(labels), "-o", "low=0", "-o", "high=1",
                 "--quiet"]) != 0
    assert "refused" in _one_line_error(capsys, "evil.ckpt")
    run = subprocess.run([sys.executable, "-m", "nriqa.cli", "score", str(image), "--checkpoint",
                          str(evil), "--quiet"], cwd=ROOT, capture_output=True, text=True,
                         env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert f"{evil}: refused" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    # the same pickle under a .safetensors name is still never unpickled with code
    disguised = evil.rename(tmp_path / "evil.safetensors")
    with pytest.raises(WeightsError, match="evil.safetensors: refused"):
        load_model(disguised)
    assert not marker.exists()


def test_a_real_lightning_checkpoint_still_loads_without_pickled_code(tmp_path, good):
    model, meta = load_model(good)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "nriqa_meta": meta, "epoch": 3}, tmp_path / "best.ckpt")
    again, meta2 = load_model(tmp_path / "best.ckpt")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x)) and meta2 == meta


# --------------------------------------------------------------------------- damaged files


def _damaged(kind: str, good: Path, tmp: Path) -> Path:
    meta = _meta(good)
    out = tmp / f"{kind}.safetensors"
    if kind == "empty":
        out.write_bytes(b"")
    elif kind == "random":
        out.write_bytes(np.random.default_rng(1).bytes(4096))
    elif kind == "truncated":
        data = good.read_bytes()
        out.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "invalid-json":
        _with_meta(good, out, "{'format': nriqa")
    elif kind == "json-list":
        _with_meta(good, out, [meta])
    elif kind == "no-crop-size":
        _with_meta(good, out, {k: v for k, v in meta.items() if k != "crop_size"})
    elif kind == "no-model":
        _with_meta(good, out, {k: v for k, v in meta.items() if k != "model"})
    elif kind == "unknown-backbone":
        _with_meta(good, out, meta | {"model": meta["model"] | {"backbone": "resnet_9000"}})
    elif kind == "negative-crop":
        _with_meta(good, out, meta | {"crop_size": -5})
    elif kind == "bool-crop":
        _with_meta(good, out, meta | {"crop_size": True})
    elif kind == "zero-test-crops":
        _with_meta(good, out, meta | {"test_patch_num": 0})
    elif kind == "bad-resize":
        _with_meta(good, out, meta | {"resize": "huge"})
    elif kind == "tampered-weights":
        _with_meta(good, out, meta | {"model": meta["model"] | {"weights": "efficientnet-lite"}})
    elif kind == "tampered-mean":
        _with_meta(good, out, meta | {"normalise": meta["normalise"] | {"mean": [0.0, 0.0, 0.0]}})
    elif kind == "wrong-width":
        _with_meta(good, out, meta | {"model": meta["model"] | {"width": 32}})
    elif kind == "truncated-ckpt":
        model, meta = load_model(good)
        full = tmp / "full.ckpt"
        torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                    "nriqa_meta": meta}, full)
        out = tmp / "truncated.ckpt"
        out.write_bytes(full.read_bytes()[:5000])
    return out


DAMAGED = {
    "empty": "empty file", "random": "not a model file, or damaged",
    "truncated": "not a model file, or damaged", "invalid-json": "not valid JSON",
    "json-list": "must be a JSON object", "no-crop-size": "crop_size: missing",
    "no-model": "model: missing", "unknown-backbone": "unknown backbone 'resnet_9000'",
    "negative-crop": "crop_size: Input should be greater than 0",
    "bool-crop": "crop_size: Input should be a valid integer",
    "zero-test-crops": "test_patch_num: Input should be greater than or equal to 1",
    "bad-resize": "unknown resize policy 'huge'",
    "tampered-weights": "metadata disagree: model.weights='efficientnet-lite'",
    "tampered-mean": "metadata disagree", "wrong-width": "weights do not fit the recorded model",
    "truncated-ckpt": "damaged or truncated checkpoint",
}


@pytest.mark.parametrize("kind", list(DAMAGED))
def test_a_damaged_model_file_is_one_named_line(kind, good, image, tmp_path, capsys):
    bad = _damaged(kind, good, tmp_path)
    with pytest.raises(WeightsError) as err:
        Scorer.from_checkpoint(bad, device="cpu")
    message = str(err.value)
    assert message.startswith(f"{bad}: ") and DAMAGED[kind] in message and "\n" not in message
    assert main(["score", str(image), "--checkpoint", str(bad), "--quiet"]) != 0
    assert DAMAGED[kind] in _one_line_error(capsys, bad.name)


def test_the_cli_line_for_a_damaged_file(good, image, tmp_path, capsys):
    bad = _damaged("unknown-backbone", good, tmp_path)
    assert main(["score", str(image), "--checkpoint", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"nriqa: error: {bad}: bad nriqa metadata: model: Value error, unknown backbone "
        "'resnet_9000' (not a timm model name)")


def test_a_file_without_recorded_normalisation_still_loads(good, tmp_path):
    """Files written before the normalisation was recorded take it from model.weights."""
    old = _with_meta(good, tmp_path / "old.safetensors",
                     {k: v for k, v in _meta(good).items() if k != "normalise"})
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_model(old)[0](x), load_model(good)[0](x))


def test_save_model_refuses_incomplete_metadata(good, tmp_path):
    model, meta = load_model(good)
    with pytest.raises(WeightsError, match="crop_size: missing"):
        save_model(model, {k: v for k, v in meta.items() if k != "crop_size"}, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


# --------------------------------------------------------------------------- score range


def test_scores_are_the_models_raw_output_even_outside_0_1(good, image):
    """README: scores are on the training labels' [0, 1] scale but not clamped to it."""
    scorer = Scorer.from_checkpoint(good, device="cpu")
    with torch.no_grad():
        scorer.model.decoder.head.weight *= 1000.0  # a model that predicts far outside [0, 1]
    score = scorer.score_paths([image])[0].score
    with torch.no_grad():
        crops = scorer.policy.crops(Image.open(image))[None]
        raw = float(scorer.model.score_crops(crops)[0])
    assert score == raw and not 0 <= score <= 1
