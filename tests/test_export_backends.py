"""Export (ONNX, half-precision safetensors) and the scoring backends: same scores everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import photo_folder, tiny_model_file

from nriqa.cli import main
from nriqa.errors import NriqaError
from nriqa.inference.model_files import load_model, read_meta
from nriqa.inference.scoring import Scorer

pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")
pytest.importorskip("onnx", reason="the onnx extra (onnx) is not installed")

from nriqa.inference.export import export_model, read_onnx_meta  # noqa: E402


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "m.safetensors")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = photo_folder(folder, n=7)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return [*paths, folder / "broken.jpg"]


@pytest.fixture(scope="module")
def onnx_file(model_file, tmp_path_factory):
    return export_model(model_file, "onnx", tmp_path_factory.mktemp("onnx") / "m.onnx")


def _scores(results):
    return np.array([r.score for r in results])


def test_onnx_export_carries_the_metadata_and_scores_like_torch(model_file, onnx_file, photos):
    assert read_onnx_meta(onnx_file) == read_meta(model_file)
    torch_results = Scorer.from_checkpoint(model_file, device="cpu").score_paths(photos)
    onnx_results = Scorer.from_checkpoint(onnx_file, device="cpu",
                                          backend="auto").score_paths(photos)
    assert [r.path for r in onnx_results] == [r.path for r in torch_results]
    assert {r.backend for r in torch_results} == {"torch"}
    assert {r.backend for r in onnx_results} == {"onnxruntime"}
    assert [bool(r.error) for r in onnx_results] == [bool(r.error) for r in torch_results]
    good = ~np.isnan(_scores(torch_results))
    assert good.sum() == 7 and np.isnan(_scores(onnx_results)[~good]).all()
    assert np.abs(_scores(onnx_results)[good] - _scores(torch_results)[good]).max() <= 1e-4


def test_reblur_stats_model_exports_and_scores_like_torch(photos, tmp_path):
    # The demo's readout: a CNN's stage statistics and their change when the crop is re-blurred
    # or median-filtered.
    path = tiny_model_file(tmp_path / "reblur.safetensors", overrides=(
        "model.backbone=test_efficientnet", "model.backbone_kwargs={}", "model.img_size=null",
        "model.readout=stats", "model.stats_stages=2", "model.stats_reblur=1.0",
        "model.stats_denoise=true"))
    onnx = export_model(path, "onnx", tmp_path / "reblur.onnx")
    torch_scores = _scores(Scorer.from_checkpoint(path, device="cpu").score_paths(photos[:-1]))
    onnx_scores = _scores(Scorer.from_checkpoint(onnx, device="cpu").score_paths(photos[:-1]))
    assert np.isfinite(torch_scores).all()
    assert np.abs(onnx_scores - torch_scores).max() <= 1e-4


def test_onnx_graph_has_a_dynamic_batch_of_uint8_crops(model_file, onnx_file):
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [3, 32, 32]
    assert isinstance(inp.shape[0], str) and isinstance(out.shape[0], str)
    model, _ = load_model(model_file)
    crops = torch.randint(0, 256, (11, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        ref = model(crops).numpy()
    got = session.run(None, {"crops": crops.numpy()})[0]
    assert got.shape == (11,) and np.abs(got - ref).max() <= 1e-4


def test_in_memory_onnxruntime_backend_equals_torch(model_file, photos):
    torch_scorer = Scorer.from_checkpoint(model_file, device="cpu")
    ort_scorer = Scorer.from_checkpoint(model_file, device="cpu", backend="onnxruntime")
    ref, got = _scores(torch_scorer.score_paths(photos)), _scores(ort_scorer.score_paths(photos))
    good = ~np.isnan(ref)
    assert np.abs(got[good] - ref[good]).max() <= 1e-4
    img = photos[1]
    from PIL import Image

    # every entry point of one backend gives that backend's score
    assert ort_scorer.score_image(Image.open(img)) == got[1]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_scores_exactly_equal_across_batch_sizes_and_workers(model_file, photos, backend):
    runs = {}
    for batch_size, workers in [(1, 0), (3, 0), (8, 0), (2, 2)]:
        scorer = Scorer.from_checkpoint(model_file, device="cpu", backend=backend,
                                        batch_size=batch_size, num_workers=workers)
        runs[(batch_size, workers)] = _scores(scorer.score_paths(photos))
    first = runs[(1, 0)]
    for key, scores in runs.items():
        np.testing.assert_array_equal(scores, first, err_msg=f"batch/workers {key}")


def test_half_precision_safetensors_export(model_file, photos, tmp_path):
    out = export_model(model_file, "safetensors", tmp_path / "half.safetensors", half=True)
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(out)).values()} == {torch.float16}
    assert read_meta(out) == read_meta(model_file)
    assert out.stat().st_size < 0.6 * model_file.stat().st_size
    full = _scores(Scorer.from_checkpoint(model_file, device="cpu").score_paths(photos[:3]))
    half = _scores(Scorer.from_checkpoint(out, device="cpu").score_paths(photos[:3]))
    assert np.abs(half - full).max() < 1e-2


def test_cli_export_and_its_errors(model_file, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert main(["export", str(model_file), "--format", "onnx", "-o", str(out)]) == 0
    assert out.is_file() and f"exported: {out}" in capsys.readouterr().out
    assert main(["export", str(model_file), "--format", "onnx", "--half"]) == 2
    assert "--half applies to --format safetensors" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.safetensors"), "--format", "onnx"]) == 2
    assert "none.safetensors: checkpoint not found" in capsys.readouterr().err
    with pytest.raises(NriqaError, match="runs with backend onnxruntime, not torch"):
        Scorer.from_checkpoint(out, backend="torch")


def test_onnx_file_without_nriqa_metadata_is_refused(model_file, tmp_path):
    from nriqa.inference.export import onnx_bytes

    model, meta = load_model(model_file)
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(onnx_bytes(model, 32))
    with pytest.raises(NriqaError, match="bare.onnx: ONNX file without nriqa metadata"):
        Scorer.from_checkpoint(bare)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a graph")
    with pytest.raises(NriqaError, match="junk.onnx: onnxruntime cannot load it"):
        Scorer.from_checkpoint(junk)


def test_cli_backends_name_themselves_and_agree(model_file, onnx_file, photos, tmp_path, capsys):
    folder = photos[0].parent
    runs = {}
    for name, model, backend in [("torch", model_file, "torch"), ("ort", model_file, "onnxruntime"),
                                 ("onnx", onnx_file, "auto")]:
        out = tmp_path / f"{name}.jsonl"
        assert main(["score", str(folder), "--checkpoint", str(model), "--backend", backend,
                     "-o", str(out), "--quiet", "--workers", "1"]) == 0
        assert "with backend " + ("torch" if name == "torch" else "onnxruntime") in capsys.readouterr().err
        runs[name] = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["backend"] for r in runs["torch"]} == {"torch"}
    assert {r["backend"] for r in runs["ort"]} == {r["backend"] for r in runs["onnx"]} == {"onnxruntime"}
    for other in ("ort", "onnx"):
        assert [r["path"] for r in runs[other]] == [r["path"] for r in runs["torch"]]
        for a, b in zip(runs["torch"], runs[other]):
            assert (a["score"] is None) == (b["score"] is None)
            if a["score"] is not None:
                assert abs(a["score"] - b["score"]) <= 1.5e-4  # 1e-4 plus the 6-decimal rounding
