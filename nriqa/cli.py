"""The ``nriqa`` command.

    nriqa demo                                   train + evaluate + score on the embedded dataset
    nriqa datasets list | check NAME ROOT        the dataset table; check a dataset on disk
    nriqa train --config RECIPE [k=v ...]        one split: fit, select, test, export
    nriqa protocol --config RECIPE [k=v ...]     N splits (honest or paper), cross-dataset, summary
    nriqa evaluate --checkpoint M --dataset D    metrics of a trained model on a labelled dataset
    nriqa score PATH... --checkpoint M           scores of images (CSV/JSON)
    nriqa recipes                                the bundled recipes
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from nriqa.errors import NriqaError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="recipe: a YAML file or a bundled name (nriqa recipes)")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed run from its output_dir (same as trainer.resume=true)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=1e-4")


def _config(args):
    from nriqa.config import load_config

    return load_config(args.config, [*args.overrides, *(["trainer.resume=true"] if args.resume else [])])


def cmd_train(args) -> int:
    from nriqa.engine.train import fit
    from nriqa.protocol.runner import dataset_root, load_table, split_for

    cfg = _config(args)
    table = load_table(cfg.data)
    split = split_for(cfg, table, cfg.split.index)
    out = Path(cfg.trainer.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    split.to_json(out / "split.json", table, dataset_root(cfg.data, table))
    result = fit(cfg, table, split, out)
    print(json.dumps({"model": str(result.model_path), "test": result.results["test"],
                      "protocol": result.results["protocol"]}, indent=2))
    return 0


def cmd_protocol(args) -> int:
    from nriqa.protocol.runner import run_protocol, summary_markdown

    cfg = _config(args)
    summary = run_protocol(cfg)
    print(summary_markdown(summary))
    return 0


def cmd_evaluate(args) -> int:
    from nriqa.data.registry import load_labels
    from nriqa.metrics import evaluate
    from nriqa.outputs.scoring import Scorer

    table = load_labels(args.dataset, args.root, layout=args.layout, label_file=args.label_file,
                        **_options(args.option))
    if args.split_file:
        import os

        from nriqa.data.splits import Split

        split = Split.from_json(args.split_file, table, args.root or os.path.commonpath(list(table["path"])))
        table = table.iloc[getattr(split, args.part)].reset_index(drop=True)
    scorer = Scorer.from_checkpoint(args.checkpoint, device=args.device, batch_size=args.batch_size)
    results = scorer.score_paths(list(table["path"]), progress=not args.quiet)
    bad = [r for r in results if r.error]
    if bad:
        for r in bad[:10]:
            print(f"error: {r.error}", file=sys.stderr)
        raise NriqaError(f"{len(bad)} image(s) could not be scored; see above")
    metrics = evaluate([r.score for r in results], table["label"].to_numpy(), fit=args.fit)
    print(json.dumps({"dataset": args.dataset, "images": len(table), **metrics}, indent=2))
    return 0


def _options(items: list[str]) -> dict:
    """``["low=0", "high=1"]`` -> loader options, values parsed as YAML."""
    from nriqa.config import parse_overrides

    return parse_overrides(items or [])


def cmd_score(args) -> int:
    from nriqa.outputs.report import write_scores
    from nriqa.outputs.scoring import Scorer, find_images

    paths = find_images(args.paths, recursive=args.recursive)
    if not paths:
        raise NriqaError("no images found in " + ", ".join(args.paths))
    scorer = Scorer.from_checkpoint(args.checkpoint, device=args.device, batch_size=args.batch_size,
                                    num_workers=args.workers)
    results = scorer.score_paths(paths, progress=not args.quiet)
    if args.output:
        write_scores(results, args.output)
    else:
        print("path,score,error")
        for r in results:
            print(f"{r.path},{'' if r.error else f'{r.score:.6f}'},{r.error}")
    failed = sum(1 for r in results if r.error)
    if failed:
        print(f"{failed} of {len(results)} file(s) could not be scored (see the error column)", file=sys.stderr)
    return 1 if failed == len(results) else 0


def cmd_demo(args) -> int:
    from nriqa.outputs.demo import run_demo

    run_demo(args.output_dir, quick=args.quick, overrides=args.overrides,
             keep_checkpoints=args.keep_checkpoints, tiny=args.tiny)
    return 0


def cmd_recipes(args) -> int:
    from nriqa.config import list_recipes

    print("\n".join(list_recipes()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nriqa", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the main job on the embedded dataset")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--quick", action="store_true",
                   help="about 2 minutes once the dataset is cached: one short epoch (lower scores)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the Lightning training checkpoints (about 70 MB each)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: seconds
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_demo)

    from nriqa.data.check import add_datasets_parser

    add_datasets_parser(sub)

    p = sub.add_parser("train", help="fit on one split, select, test, export")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("protocol", help="N splits with a summary table")
    _add_config_args(p)
    p.set_defaults(func=cmd_protocol)

    p = sub.add_parser("evaluate", help="metrics of a trained model on a labelled dataset")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--root")
    p.add_argument("--layout", default="auto")
    p.add_argument("--label-file")
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="loader option, e.g. -o low=0 -o high=100 for a csv dataset")
    p.add_argument("--split-file", help="evaluate only one part of this split")
    p.add_argument("--part", default="test", choices=["train", "val", "test"])
    p.add_argument("--fit", default="none", choices=["none", "logistic"])
    p.add_argument("--device")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score", help="score images with a trained model")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--recursive", "-r", action="store_true")
    p.add_argument("--output", "-o", help="FILE.csv or FILE.json (columns path,score,error)")
    p.add_argument("--device")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("recipes", help="list the bundled recipes")
    p.set_defaults(func=cmd_recipes)

    for extra in ("nriqa.analysis.cli",):
        try:
            __import__(extra, fromlist=["add_parsers"]).add_parsers(sub)
        except ModuleNotFoundError as err:
            if err.name != extra:
                raise
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except NriqaError as err:
        print(f"nriqa: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
