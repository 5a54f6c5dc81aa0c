"""LML-IQA pictures: saliency maps with crops, t-SNE of crop embeddings, ``nriqa analyze``."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from helpers import tiny_config, tiny_images
from PIL import Image

from nriqa.engine.data import resolve_data_settings
from nriqa.engine.module import IQAModule
from nriqa.inference.model_files import inference_meta, save_model
from nriqa.reports.saliency import (
    crop_embeddings,
    embedding_plot,
    embedding_stats,
    load_networks,
    plot_saliency,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny images and an LML-IQA module whose teacher differs from its student."""
    tmp = tmp_path_factory.mktemp("pictures")
    table = tiny_images(tmp / "img", n_groups=3, per_group=2, size=40)
    cfg = tiny_config(tmp, "method.name=lml", "method.lml.momentum=0.5")
    torch.manual_seed(0)
    module = IQAModule(cfg)
    method = module.methods[0]
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    method.after_optimizer_step(module.model)
    return tmp, table, cfg, module


def is_png(path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


@pytest.mark.parametrize("kind", ["decoder", "vit-cls", "spectral"])
def test_plot_saliency_writes_a_png(tiny, kind):
    tmp, table, _cfg, module = tiny
    out = plot_saliency(module.methods[0].teacher, list(table["path"][:2]), tmp / f"sal_{kind}.png",
                        k=3, seed=1, saliency=kind)
    width, height = is_png(out)
    assert width > 400 and height > 400
    with pytest.raises(ValueError, match="saliency must be"):
        plot_saliency(module.model, list(table["path"][:1]), tmp / "x.png", saliency="random")


def test_embedding_plot_writes_a_png_with_stats(tiny):
    tmp, table, _cfg, module = tiny
    method = module.methods[0]
    result = embedding_plot(module.model, method.teacher, table, tmp / "emb.png",
                            projector_after=method.teacher_projector, features_before="backbone",
                            crops_per_image=3, max_images=5, seed=0)
    assert is_png(result["path"]) and result["images"] == 5 and result["crops"] == 15
    for part in ("before", "after"):
        assert set(result[part]) == {"within_image_cos", "between_image_cos", "silhouette_image"}
    emb, image, label = crop_embeddings(module.model, table.iloc[:3], method.projector,
                                        crops_per_image=2)
    assert emb.shape == (6, 128) and image.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.allclose(torch.from_numpy(emb).norm(dim=1), torch.ones(6), atol=1e-5)
    assert label.tolist() == pd.Series(table["label"][:3]).repeat(2).tolist()
    stats = embedding_stats(emb, image)
    assert -1 <= stats["silhouette_image"] <= 1


def write_ckpt(tiny):
    """A Lightning-style checkpoint of the LML module (what ModelCheckpoint writes)."""
    tmp, _table, cfg, module = tiny
    path = tmp / "lml.ckpt"
    meta = inference_meta(cfg, resolve_data_settings(cfg))
    torch.save({"state_dict": module.state_dict(), "nriqa_meta": meta}, path)
    return path, meta


def test_load_networks_reads_student_teacher_and_projectors(tiny):
    _tmp, _table, _cfg, module = tiny
    path, meta = write_ckpt(tiny)
    nets = load_networks(path)
    method = module.methods[0]
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(nets.student(x), module.model.eval()(x), atol=1e-6)
        assert torch.allclose(nets.teacher(x), method.teacher(x), atol=1e-6)
        feats = torch.randn(2, 64)
        assert torch.allclose(nets.projector(feats), method.projector(feats), atol=1e-6)
        assert torch.allclose(nets.teacher_projector(feats), method.teacher_projector(feats), atol=1e-6)
    assert nets.pick("auto")[2] == "teacher" and nets.pick("student")[2] == "student"
    exported = save_model(module.model, meta, path.with_suffix(".safetensors"))
    plain = load_networks(exported)
    assert plain.teacher is None and plain.projector is None and plain.pick("auto")[2] == "student"


def test_cli_analyze_saliency_and_embeddings(tiny, capsys):
    from nriqa.cli import main

    tmp, table, _cfg, _module = tiny
    ckpt, _ = write_ckpt(tiny)
    out = tmp / "cli_sal.png"
    assert main(["analyze", "saliency", "--checkpoint", str(ckpt), *map(str, table["path"][:2]),
                 "--output", str(out), "--crops", "3", "--device", "cpu"]) == 0
    assert is_png(out)
    assert json.loads(capsys.readouterr().out)["network"] == "teacher"

    # a CSV dataset of the tiny images (paths relative to the label file's folder)
    labels = tmp / "img" / "labels.csv"
    pd.DataFrame({"path": [p.split("/")[-1] for p in table["path"]],
                  "score": table["score"]}).to_csv(labels, index=False)
    out = tmp / "cli_emb.png"
    assert main(["analyze", "embeddings", "--checkpoint", str(ckpt), "--backbone-only",
                 "--dataset", "csv", "--root", str(tmp / "img"), "--option", "low=0",
                 "--option", "high=1", "--max-images", "4", "--crops", "3",
                 "--output", str(out), "--device", "cpu"]) == 0
    assert is_png(out)
    printed = json.loads(capsys.readouterr().out)
    assert printed["images"] == 4 and printed["crops"] == 12
    out = tmp / "cli_emb_before.png"
    assert main(["analyze", "embeddings", "--checkpoint", str(ckpt), "--before", str(ckpt),
                 "--dataset", "csv", "--root", str(tmp / "img"), "--option", "low=0",
                 "--option", "high=1", "--max-images", "4", "--crops", "2",
                 "--output", str(out), "--device", "cpu"]) == 0
    assert is_png(out)
