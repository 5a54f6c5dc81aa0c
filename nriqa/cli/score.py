"""``nriqa score``: scores of images (CSV/JSONL/JSON, an HTML gallery), streamed and resumable."""

from __future__ import annotations

import argparse
import sys
import time

from nriqa.cli.common import check_run_options
from nriqa.errors import NriqaError

HELP = "score images with a trained model (default: the shipped model)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--model", "--checkpoint", "-m", dest="model", default="default",
                        help="a shipped model name (nriqa models list), a .safetensors file, or "
                             "hf:OWNER/REPO/FILE (downloaded into the Hugging Face cache), or an "
                             ".onnx file from nriqa export; default: the default shipped model")
    parser.add_argument("--recursive", "-r", action="store_true")
    parser.add_argument("--output", "-o",
                        help="FILE.csv or FILE.jsonl (streamed as scored, resumable) or FILE.json; "
                             "columns path,score,error,backend (default: CSV on stdout)")
    parser.add_argument("--html", metavar="FILE.html",
                        help="also write a self-contained gallery page (thumbnails by score)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="skip the files already in --output and append the rest")
    again.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "torch"],
                        help="auto: onnxruntime when installed (faster on CPU), else torch")
    parser.add_argument("--device")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0,
                        help="image-decoding processes (0: one decoding thread beside the model)")
    parser.add_argument("--test-flip", action=argparse.BooleanOptionalAction, default=None,
                        help="also score each test crop mirrored and average (twice the work), or "
                             "not; default: as the model file says (docs/models.md has what it "
                             "changes for biq2021-lite0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from nriqa.inference.scoring import (  # noqa: PLC0415 - start-up time (torch)
        Scorer,
        find_images,
        progress_bar,
    )
    from nriqa.inference.stream import (  # noqa: PLC0415 - start-up time
        STREAMED,
        ScoreWriter,
        check_output,
        read_done,
    )
    from nriqa.reports.gallery import write_gallery  # noqa: PLC0415 - start-up time

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
    crops = {} if args.test_flip is None else {"test_flip": args.test_flip}
    scorer = Scorer.from_pretrained(args.model, device=args.device, backend=args.backend,
                                    batch_size=args.batch_size, num_workers=args.workers, **crops)
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
        write_gallery([*previous, *results], html, progress=not args.quiet)
        print(f"gallery: {html}", file=sys.stderr)
    return 1 if results and failed == len(results) else 0
