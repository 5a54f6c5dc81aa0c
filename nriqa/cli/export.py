"""``nriqa export``: an ONNX graph for onnxruntime, or the weights again (float16 with --half)."""

from __future__ import annotations

import argparse

HELP = "export a model: ONNX graph or half-precision weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an nriqa .safetensors model file")
    parser.add_argument("--format", required=True, choices=["onnx", "safetensors"],
                        help="onnx: graph of uint8 crops (N,3,S,S) -> scores (N,), dynamic batch; "
                             "safetensors: the weights again (--half: float16)")
    parser.add_argument("--half", action="store_true",
                        help="float16 weights (--format safetensors)")
    parser.add_argument("--output", "-o", help="output file (default: beside the model)")


def run(args: argparse.Namespace) -> int:
    from nriqa.inference.export import export_model  # noqa: PLC0415 - start-up time (torch)

    print(f"exported: {export_model(args.model, args.format, args.output, half=args.half)}")
    return 0
