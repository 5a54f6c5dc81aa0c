"""The shipped pretrained models: registry, verification, naming, the hub cache, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL
from PIL import Image

from nriqa.cli import main
from nriqa.config import load_config
from nriqa.errors import WeightsError
from nriqa.inference import zoo
from nriqa.inference.model_files import save_model
from nriqa.inference.scoring import Scorer
from nriqa.models import DEIQT

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def default_card():
    cards = zoo.registry()
    assert zoo.DEFAULT_MODEL in cards, f"the default model {zoo.DEFAULT_MODEL} is not shipped"
    return cards[zoo.DEFAULT_MODEL]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    cfg = load_config(None, TINY_MODEL)
    meta = {"format": "nriqa-deiqt-v1", "model": cfg.model.model_dump(mode="json"),
            "crop_size": 32, "test_patch_num": 2, "test_crops": "grid", "resize": "none",
            "small_image": "upscale"}
    return save_model(DEIQT.from_config(cfg.model), meta,
                      tmp_path_factory.mktemp("m") / "model.safetensors")


def test_shipped_file_matches_its_card(default_card):
    path = default_card.path()
    assert path.is_file() and path.stat().st_size < 26e6
    assert zoo.sha256_of(path) == default_card.sha256
    assert default_card.training_data["licence"] and default_card.metrics["test"]["srcc"] > 0


def test_sample_image_scores_its_recorded_value(default_card, tmp_path):
    """The card records the default model's score of a photo bundled with scikit-image."""
    check = default_card.check
    sample = sample_image(check["image"], tmp_path)
    scorer = Scorer.from_pretrained()
    assert abs(scorer.score_paths([sample])[0].score - check["score"]) < 1e-4
    assert abs(scorer.score_image(Image.open(sample)) - check["score"]) < 1e-4


def sample_image(name: str, folder: Path) -> Path:
    import skimage.data

    path = folder / f"{name}.png"
    Image.fromarray(getattr(skimage.data, name)()).save(path)
    return path


def test_models_list_and_show_print_the_cards_metrics(default_card, capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert zoo.DEFAULT_MODEL in out and f"{default_card.metrics['test']['srcc']:.3f}" in out
    assert main(["models", "show", "default"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["sha256"] == default_card.sha256 and shown["default"] is True


def test_a_damaged_or_replaced_weights_file_is_refused(default_card, tmp_path, monkeypatch):
    fake = tmp_path / default_card.file
    shutil.copyfile(default_card.path(), fake)
    with fake.open("r+b") as f:  # one flipped byte inside the weights
        f.seek(fake.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(zoo.ModelCard, "path", lambda self: fake)
    with pytest.raises(WeightsError, match=rf"{fake}.*sha256.*does not match"):
        Scorer.from_pretrained(default_card.name)
    fake.unlink()
    with pytest.raises(WeightsError, match="missing"):
        Scorer.from_pretrained(default_card.name)


def test_unknown_names_suggest_the_close_ones():
    with pytest.raises(WeightsError, match=rf"did you mean {zoo.DEFAULT_MODEL}"):
        zoo.resolve_model(zoo.DEFAULT_MODEL[:-1])
    with pytest.raises(WeightsError, match="model file not found"):
        zoo.resolve_model("no/such/model.safetensors")
    with pytest.raises(WeightsError, match="expected hf:OWNER/REPO/FILE"):
        zoo.resolve_model("hf:only-a-repo")


def _hub_cache(cache: Path, repo: str, filename: str, source: Path) -> None:
    """A Hugging Face cache laid out as huggingface_hub writes it, for one file."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    shutil.copyfile(source, folder / "snapshots" / commit / filename)


def test_hf_models_come_from_a_prefilled_cache_with_the_network_off(tiny_model, tmp_path):
    _hub_cache(tmp_path / "hub", "someone/iqa", "model.safetensors", tiny_model)
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(image)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    code = ("import sys; from nriqa.inference.scoring import Scorer; "
            "s = Scorer.from_pretrained(sys.argv[1]); print(s.score_paths([sys.argv[2]])[0].score)")
    run = subprocess.run([sys.executable, "-c", code, "hf:someone/iqa/model.safetensors", str(image)],
                         env=env, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    expected = Scorer.from_checkpoint(tiny_model).score_paths([image])[0].score
    assert float(run.stdout) == pytest.approx(expected, abs=1e-6)
    # a file that is not in the cache: a clear error, nothing downloaded
    missing = subprocess.run([sys.executable, "-m", "nriqa.cli", "score", str(image), "--model",
                              "hf:someone/iqa/other.safetensors"], env=env, capture_output=True,
                             text=True, cwd=ROOT)
    assert missing.returncode != 0 and "not in the local Hugging Face cache" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_score_without_a_model_uses_the_default_and_says_so(default_card, tmp_path, capsys):
    image = sample_image(default_card.check["image"], tmp_path)
    assert main(["score", str(image), "-o", str(tmp_path / "s.csv")]) == 0
    assert default_card.name in capsys.readouterr().err
    assert (tmp_path / "s.csv").read_text().count("\n") == 2
