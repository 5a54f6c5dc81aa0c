"""The ``nriqa`` command.

    nriqa demo                                   train + evaluate + score on the embedded dataset
    nriqa datasets list | check NAME ROOT        the dataset table; check a dataset on disk
    nriqa train --config RECIPE [k=v ...]        one split: fit, select, test, export
    nriqa protocol --config RECIPE [k=v ...]     N splits (honest or paper), cross-dataset, summary
    nriqa evaluate --checkpoint M --dataset D    metrics of a trained model on a labelled dataset
    nriqa score PATH... [--model M]              scores of images (CSV/JSONL/JSON, HTML gallery); default: the shipped model
    nriqa models list | show NAME                the shipped pretrained models and their cards
    nriqa export M --format onnx|safetensors     an ONNX graph for onnxruntime, or fp16 weights
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
    from nriqa.engine.train import check_trainer_settings, fit
    from nriqa.protocol.runner import dataset_root, load_table, split_for

    cfg = _config(args)
    check_trainer_settings(cfg)  # before split.json is written
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
    from nriqa.inference.scoring import Scorer
    from nriqa.metrics import evaluate

    check_run_options(args)
    table = load_labels(args.dataset, args.root, layout=args.layout, label_file=args.label_file,
                        **_options(args.option))
    if args.split_file:
        import os

        from nriqa.data.splits import Split

        split = Split.from_json(args.split_file, table, args.root or os.path.commonpath(list(table["path"])))
        table = table.iloc[getattr(split, args.part)].reset_index(drop=True)
    scorer = Scorer.from_pretrained(args.model, device=args.device, batch_size=args.batch_size)
    results = scorer.score_paths(list(table["path"]), progress=not args.quiet)
    bad = [r for r in results if r.error]
    if bad:
        for r in bad[:10]:
            print(f"error: {r.error}", file=sys.stderr)
        raise NriqaError(f"{len(bad)} image(s) could not be scored; see above")
    metrics = evaluate([r.score for r in results], table["label"].to_numpy(), fit=args.fit)
    print(json.dumps({"dataset": args.dataset, "model": scorer.source, "images": len(table),
                      **metrics}, indent=2))
    return 0


def _options(items: list[str]) -> dict:
    """``["low=0", "high=1"]`` -> loader options, values parsed as YAML."""
    from nriqa.config import parse_overrides

    return parse_overrides(items or [])


def check_run_options(args) -> None:
    """One clear line for a bad ``--batch-size`` / ``--workers`` / ``--device``, before any work."""
    if getattr(args, "batch_size", 1) < 1:
        raise NriqaError(f"--batch-size {args.batch_size}: must be at least 1")
    if getattr(args, "workers", 0) < 0:
        raise NriqaError(f"--workers {args.workers}: must be 0 (decode in a thread) or more")
    if getattr(args, "device", None):
        check_device(args.device)


def check_device(name: str) -> None:
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise NriqaError(f"--device {name}: not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise NriqaError(f"--device {name}: no CUDA GPU is available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise NriqaError(f"--device {name}: there are {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise NriqaError(f"--device {name}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise NriqaError(f"--device {name}: not supported; use cpu, cuda, cuda:N or mps")


def cmd_score(args) -> int:
    import time

    from nriqa.inference.scoring import Scorer, find_images, progress_bar
    from nriqa.inference.stream import STREAMED, ScoreWriter, check_output, read_done

    check_run_options(args)
    # Every output is checked before a model is loaded or an image decoded.
    out = check_output(args.output, args.resume, args.overwrite) if args.output else None
    if args.resume and out is None:
        raise NriqaError("--resume needs --output FILE (the scores to continue)")
    html = None
    if args.html:
        html = check_output(args.html, args.resume, args.overwrite, formats=(".html", ".htm"),
                            option="--html")
    previous = read_done(out) if args.resume else []  # a damaged file stops us before any work
    paths = find_images(args.paths, recursive=args.recursive)
    if not paths:
        raise NriqaError("no images found in " + ", ".join(args.paths))
    scorer = Scorer.from_pretrained(args.model, device=args.device, backend=args.backend,
                                    batch_size=args.batch_size, num_workers=args.workers)
    if not args.quiet:
        print(f"nriqa: scoring {len(paths)} image(s) with {scorer.source}", file=sys.stderr)
    done = {str(r["path"]) for r in previous}
    todo = [p for p in paths if str(p) not in done]
    writer = ScoreWriter(out, append=bool(previous) and out.suffix.lower() in STREAMED,
                         previous=previous)
    results = []
    start = time.perf_counter()
    bar = progress_bar(len(todo), disable=args.quiet)
    try:
        for rows in scorer.iter_scores(todo):
            writer.write(rows)
            results += rows
            bar.update(len(rows))
    finally:
        bar.close()
        writer.close()
    seconds = time.perf_counter() - start
    failed = sum(1 for r in results if r.error)
    skipped = f"; {len(paths) - len(todo)} already in {out} (skipped)" if args.resume else ""
    rate = f" ({len(results) / seconds:.1f} images/s)" if results and seconds > 0 else ""
    print(f"scored {len(results)} image(s) with backend {scorer.backend} on {scorer.device} in "
          f"{seconds:.1f} s{rate}{skipped}; model: {scorer.source}", file=sys.stderr)
    if failed:
        print(f"{failed} of {len(results)} file(s) could not be scored (see the error column)",
              file=sys.stderr)
    if html is not None:
        from nriqa.reports.gallery import write_gallery

        write_gallery([*previous, *results], html, progress=not args.quiet)
        print(f"gallery: {html}", file=sys.stderr)
    return 1 if results and failed == len(results) else 0


def cmd_export(args) -> int:
    from nriqa.inference.export import export_model

    out = export_model(args.model, args.format, args.output, half=args.half)
    print(f"exported: {out}")
    return 0


def cmd_models(args) -> int:
    from nriqa.inference.zoo import DEFAULT_MODEL, card, registry, verified_file

    if args.action == "list":
        models = registry()
        if not models:
            print("no pretrained models are installed")
            return 0
        width = max(len(n) for n in models)
        for name, model in models.items():
            mark = "*" if name == DEFAULT_MODEL else " "
            print(f"{mark} {name:<{width}}  {model.headline()}  -  {model.summary}")
        print(f"(* the default: `nriqa score PATH` uses {DEFAULT_MODEL})")
        return 0
    model = card(args.name)
    verified_file(model)  # the card is only worth showing for the file it describes
    print(json.dumps({"name": model.name, "default": model.name == DEFAULT_MODEL,
                      "file": str(model.path()), **{k: v for k, v in vars(model).items()
                                                    if k not in {"name", "file"}}}, indent=2))
    return 0


def cmd_demo(args) -> int:
    from nriqa.reports.demo import run_demo

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
    p.add_argument("--model", "--checkpoint", "-m", dest="model", default="default",
                   help="a shipped model name, a .safetensors file or hf:OWNER/REPO/FILE")
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
    p.add_argument("--model", "--checkpoint", "-m", dest="model", default="default",
                   help="a shipped model name (nriqa models list), a .safetensors file, or "
                        "hf:OWNER/REPO/FILE (downloaded into the Hugging Face cache), or an .onnx "
                        "file from nriqa export; default: the default shipped model")
    p.add_argument("--recursive", "-r", action="store_true")
    p.add_argument("--output", "-o",
                   help="FILE.csv or FILE.jsonl (streamed as scored, resumable) or FILE.json; "
                        "columns path,score,error,backend (default: CSV on stdout)")
    p.add_argument("--html", metavar="FILE.html",
                   help="also write a self-contained gallery page (thumbnails by score)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="skip the files already in --output and append the rest")
    again.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "torch"],
                   help="auto: onnxruntime when installed (faster on CPU), else torch")
    p.add_argument("--device")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=0,
                   help="image-decoding processes (0: one decoding thread beside the model)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("models", help="the shipped pretrained models")
    models = p.add_subparsers(dest="action", required=True)
    models.add_parser("list", help="every shipped model with its headline metrics")
    show = models.add_parser("show", help="one model's card: data, licence, recipe, metrics")
    show.add_argument("name")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("export", help="export a model: ONNX graph or half-precision weights")
    p.add_argument("model", help="an nriqa .safetensors model file")
    p.add_argument("--format", required=True, choices=["onnx", "safetensors"],
                   help="onnx: graph of uint8 crops (N,3,S,S) -> scores (N,), dynamic batch; "
                        "safetensors: the weights again (--half: float16)")
    p.add_argument("--half", action="store_true", help="float16 weights (--format safetensors)")
    p.add_argument("--output", "-o", help="output file (default: beside the model)")
    p.set_defaults(func=cmd_export)

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
