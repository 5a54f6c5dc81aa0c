"""``nriqa analyze embeddings``: t-SNE of crop embeddings before and after training, coloured by
image and by quality (:mod:`nriqa.reports.saliency`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nriqa.cli.analyze.saliency import NETWORKS
from nriqa.cli.common import add_option_argument, device, loader_options
from nriqa.config import ModelConfig

HELP = "t-SNE of crop embeddings before/after training"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="the trained model (.ckpt or .safetensors)")
    before = parser.add_mutually_exclusive_group()
    before.add_argument("--before", help="the model before (e.g. a DEIQT run's checkpoint)")
    before.add_argument("--backbone-only", action="store_true",
                        help="before = the untrained start (the recorded backbone weights), "
                             "embedded by the backbone's global feature (the default)")
    parser.add_argument("--dataset", required=True, help="a name from `nriqa datasets list`")
    parser.add_argument("--root", help="dataset folder (not needed for embedded)")
    parser.add_argument("--layout", default="auto")
    add_option_argument(parser, "--option", help="label reader option, e.g. low=0 (repeatable)")
    parser.add_argument("--max-images", type=int, default=40)
    parser.add_argument("--crops", "-k", type=int, default=4, help="crops per image")
    parser.add_argument("--network", default="student", choices=NETWORKS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", "-o", default="embeddings.png")
    parser.add_argument("--device")


def run(args: argparse.Namespace) -> int:
    from nriqa.data.registry import load_labels  # noqa: PLC0415 - start-up time
    from nriqa.models import DEIQT  # noqa: PLC0415 - start-up time (torch)
    from nriqa.reports.saliency import (  # noqa: PLC0415 - start-up time (torch)
        embedding_plot,
        load_networks,
    )

    dev = device(args)
    after = load_networks(args.checkpoint, dev)
    model_after, proj_after, network = after.pick(args.network)
    meta = after.meta
    if args.before:
        model_before, proj_before, _ = load_networks(args.before, dev).pick(args.network)
        features_before, before_name = "decoder", f"before ({Path(args.before).name})"
    else:  # --backbone-only (the default): the untrained start, seen by its backbone
        model_before = DEIQT.from_config(ModelConfig.model_validate(meta["model"])).to(dev)
        proj_before, features_before = None, "backbone"
        before_name = f"backbone only (weights={meta['model'].get('weights', '?')})"
    table = load_labels(args.dataset, args.root, layout=args.layout,
                        **loader_options(args.option))
    result = embedding_plot(model_before, model_after, table, args.output,
                            projector_before=proj_before, projector_after=proj_after,
                            features_before=features_before, input_size=meta.get("crop_size"),
                            crops_per_image=args.crops, max_images=args.max_images,
                            seed=args.seed, resize=meta.get("resize", "none"),
                            small_image=meta.get("small_image", "upscale"),
                            titles=(before_name, f"after ({network})"))
    result["path"] = str(result["path"])
    print(json.dumps(result, indent=2))
    return 0
