"""``nriqa analyze saliency CKPT IMAGE...``: the saliency map LML-IQA picks each image's salient
crop with, and K random training crops drawn on the image (:mod:`nriqa.reports.saliency`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nriqa.cli.common import device
from nriqa.errors import ConfigError

HELP = "LML-IQA saliency maps with the K crops and the salient one"
NETWORKS = ["auto", "teacher", "student"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--checkpoint", required=True,
                        help=".ckpt (student + EMA teacher) or .safetensors")
    parser.add_argument("--output", "-o", default="saliency.png")
    parser.add_argument("--network", default="auto", choices=NETWORKS,
                        help="auto: the EMA teacher when the checkpoint has one (it picks the "
                             "crops in training)")
    # the kinds are checked in run(): nriqa.reports.saliency imports torch
    parser.add_argument("--saliency", default="decoder",
                        help="decoder (the default), vit-cls or spectral")
    parser.add_argument("--crops", "-k", type=int, default=4, help="crops per image (K)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device")


def run(args: argparse.Namespace) -> int:
    from nriqa.reports.saliency import (  # noqa: PLC0415 - start-up time (torch)
        SALIENCY_KINDS,
        load_networks,
        plot_saliency,
    )

    if args.saliency not in SALIENCY_KINDS:
        raise ConfigError(f"--saliency {args.saliency}: unknown; use one of "
                          f"{', '.join(SALIENCY_KINDS)}")
    nets = load_networks(args.checkpoint, device(args))
    model, _, network = nets.pick(args.network)
    meta = nets.meta
    path = plot_saliency(model, args.images, args.output, k=args.crops, seed=args.seed,
                         saliency=args.saliency, input_size=meta.get("crop_size"),
                         resize=meta.get("resize", "none"),
                         small_image=meta.get("small_image", "upscale"),
                         title=f"{Path(args.checkpoint).name}: {network}, {args.saliency} saliency")
    print(json.dumps({"output": str(path), "network": network, "saliency": args.saliency}))
    return 0
