"""Exporting a trained nriqa model: an ONNX graph for onnxruntime, or half-precision weights.

The ONNX graph takes crops ``(N, 3, S, S)`` as **uint8** pixels (the crops the scorer cuts are
uint8 already; the normalisation of the backbone's pretrained weights is inside the graph) and
returns one score per crop ``(N,)``. The batch axis is dynamic. Averaging each image's crops is
left to :class:`nriqa.inference.scoring.Scorer`, which does it exactly as the PyTorch path does.
The nriqa metadata of the source ``.safetensors`` file (crop size, test crops, resize policy ...)
travels in the ONNX file's ``metadata_props`` under the key ``nriqa``, so an ``.onnx`` file scores
the same images the same way with no other file.

Exporter: PyTorch's TorchScript-based exporter (``dynamo=False``). The model is a fixed chain of
convolutions / attention with no data-dependent control flow, which tracing captures exactly; the
``torch.export``-based exporter (``dynamo=True``) needs the extra ``onnxscript`` package and is
slower to run for the same graph. Every export is checked against PyTorch before it is written.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nriqa.errors import NriqaError
from nriqa.inference.model_files import load_model
from nriqa.io import atomic_write
from nriqa.models import DEIQT

META_KEY = "nriqa"
OPSET = 17
INPUT, OUTPUT = "crops", "scores"
TOLERANCE = 1e-4  # largest |onnx - torch| score difference an export may have


class CropScores(nn.Module):
    """``(N,3,S,S)`` uint8 crops -> ``(N,)`` float32 scores: the graph that is exported."""

    def __init__(self, model: DEIQT):
        super().__init__()
        self.model = model

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.model(crops).float()


def onnx_bytes(model: DEIQT, crop_size: int, meta: dict | None = None) -> bytes:
    """The ONNX graph of ``model`` for ``crop_size`` crops, with ``meta`` in its metadata."""
    graph = CropScores(model.cpu().eval()).eval()
    example = torch.zeros(2, 3, crop_size, crop_size, dtype=torch.uint8)
    buf = io.BytesIO()
    # The fused attention kernel PyTorch uses at inference has no ONNX form: trace the plain one.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            # Tracing warns about Python-side shape arithmetic (timm's "same" padding); the crop
            # size is fixed per model, so those values are rightly constants. The deprecation
            # notice of this exporter is not actionable for users.
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (example,), buf, dynamo=False, opset_version=OPSET,
                              input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "crops"}, OUTPUT: {0: "crops"}})
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    data = buf.getvalue()
    if meta is not None:
        data = with_metadata(data, {META_KEY: json.dumps(meta)})
    return data


def _onnx():
    try:
        import onnx
    except ImportError:
        raise NriqaError("ONNX export needs the onnx package: pip install 'nriqa[onnx]'") from None
    return onnx


def with_metadata(data: bytes, props: dict[str, str]) -> bytes:
    onnx = _onnx()
    proto = onnx.load_from_string(data)
    kept = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def read_onnx_meta(path: str | Path) -> dict:
    """The nriqa metadata of an exported ``.onnx`` file (without building a session)."""
    onnx = _onnx()
    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, ValueError, OSError ...
        raise NriqaError(f"{path}: not a readable ONNX file ({type(err).__name__})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    return _parse_meta(props.get(META_KEY), path)


def _parse_meta(raw: str | None, path) -> dict:
    if not raw:
        raise NriqaError(f"{path}: ONNX file without nriqa metadata (not exported by nriqa export)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise NriqaError(f"{path}: the nriqa metadata of this ONNX file is not a JSON object")
    return meta


def onnx_session(model: bytes | str | Path, threads: int | None = None, device: str = "cpu"):
    """An onnxruntime session set up deliberately: as many intra-op threads as PyTorch uses (the
    same cores, so the backends compare fairly), one inter-op thread (the graph is a chain), every
    graph optimisation, and no spinning worker threads (they would take the cores from the image
    decoders that run beside the model)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise NriqaError("backend 'onnxruntime' needs onnxruntime: pip install 'nriqa[onnx]'") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise NriqaError("--device cuda with onnxruntime needs onnxruntime-gpu "
                             "(CUDAExecutionProvider is not available)")
        providers.insert(0, "CUDAExecutionProvider")
    source = str(model) if isinstance(model, str | Path) else model
    try:
        return ort.InferenceSession(source, opts, providers=providers)
    except Exception as err:  # onnxruntime raises its own Fail / InvalidGraph / InvalidProtobuf
        name = model if isinstance(model, str | Path) else "exported graph"
        raise NriqaError(f"{name}: onnxruntime cannot load it ({str(err).splitlines()[0]})") from None


def session_meta(session, path) -> dict:
    return _parse_meta(session.get_modelmeta().custom_metadata_map.get(META_KEY), path)


def check_onnx(data: bytes, model: DEIQT, crop_size: int, n: int = 3, seed: int = 0) -> float:
    """Largest |onnx - torch| score over ``n`` random crops (two batch sizes, so the dynamic batch
    axis is exercised); raises when it exceeds :data:`TOLERANCE`."""
    gen = torch.Generator().manual_seed(seed)
    crops = torch.randint(0, 256, (n, 3, crop_size, crop_size), dtype=torch.uint8, generator=gen)
    with torch.inference_mode():
        ref = model.cpu().eval()(crops).float().numpy()
    session = onnx_session(data, threads=1)
    got = np.concatenate([session.run(None, {INPUT: crops[:1].numpy()})[0],
                          session.run(None, {INPUT: crops[1:].numpy()})[0]])
    diff = float(np.abs(got - ref).max())
    if not diff <= TOLERANCE:
        raise NriqaError(f"the exported graph scores differ from PyTorch's by {diff:.2e} "
                         f"(> {TOLERANCE:g}); not written")
    return diff


def export_model(source: str | Path, fmt: str, output: str | Path | None = None,
                 half: bool = False) -> Path:
    """Export the nriqa model file ``source`` as ``fmt`` (``"onnx"`` or ``"safetensors"``)."""
    source = Path(source).expanduser()
    if fmt not in ("onnx", "safetensors"):
        raise NriqaError(f"--format {fmt}: unknown; allowed: onnx, safetensors")
    if half and fmt != "safetensors":
        raise NriqaError("--half applies to --format safetensors (ONNX graphs stay float32)")
    model, meta = load_model(source)
    out = Path(output) if output else default_output(source, fmt, half)
    if out.resolve() == source.resolve():
        raise NriqaError(f"{out}: the output would overwrite the model being exported")
    if fmt == "onnx":
        data = onnx_bytes(model, int(meta["crop_size"]), meta)
        check_onnx(data, model, int(meta["crop_size"]))
        return atomic_write(out, lambda tmp: tmp.write_bytes(data))
    from nriqa.inference.model_files import save_model

    if half:
        model = model.half()
    return save_model(model, meta, out)


def default_output(source: Path, fmt: str, half: bool) -> Path:
    if fmt == "onnx":
        return source.with_suffix(".onnx")
    return source.with_name(source.stem + (".fp16" if half else ".fp32") + ".safetensors")
