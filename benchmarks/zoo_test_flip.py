"""Does scoring each photo's crop mirrored as well (``test_flip``) make a shipped model more accurate?

Scores one part of the model's split (BIQ2021's official split, as saved in
``benchmarks/results/zoo_biq2021_lite0_split.json``) with the model's own test view and with that
view mirrored left-right, through onnxruntime with one thread, and reports SRCC / PLCC of the plain
view and of the mean of both. Run it on ``val`` to choose; run it on ``test`` once for the chosen
candidate, to report. Per-photo scores (plain view, mirrored view; rows of the label table, no
labels) go to ``benchmarks/results/zoo_test_flip_PART.npz``, the table to
``zoo_test_flip_PART.{json,md}``.

    python benchmarks/zoo_test_flip.py --root /path/to/BIQ2021 --part val
    python benchmarks/zoo_test_flip.py --root /path/to/BIQ2021 --part test
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, markdown, write_results
from PIL import Image

from nriqa.data.registry import load_labels
from nriqa.data.splits import Split
from nriqa.inference.scoring import Scorer
from nriqa.metrics import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="the full BIQ2021 (12,000 photos)")
    ap.add_argument("--part", choices=["val", "test"], required=True)
    ap.add_argument("--model", default="biq2021-lite0")
    ap.add_argument("--split", type=Path, default=RESULTS / "zoo_biq2021_lite0_split.json")
    ap.add_argument("--limit", type=int, help="only the first N photos (a quick check)")
    ap.add_argument("--name", help="results name (default zoo_test_flip_PART)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    table = load_labels("biq2021", str(args.root))
    rows = np.asarray(getattr(Split.from_json(args.split, table, args.root), args.part))[: args.limit]
    scorer = Scorer.from_pretrained(args.model, device="cpu", backend="onnxruntime")
    # The model's own view and its mirror, as test_flip cuts them: one policy, two crops.
    views = replace(scorer.policy, patch_num=1, test_flip=True)
    scores = np.zeros((len(rows), 2), np.float32)
    t0 = time.perf_counter()
    for j, i in enumerate(rows):
        with Image.open(table.path[i]) as img:
            crops = views.crops(img, key=Path(table.path[i]).name).numpy()
        scores[j] = scorer.session.run(None, {"crops": crops})[0].reshape(-1)
        if j % 250 == 0:
            print(f"{j}/{len(rows)} photos, {time.perf_counter() - t0:.0f} s", flush=True)
    labels = table["label"].to_numpy()[rows]
    name = args.name or f"zoo_test_flip_{args.part}" + (f"_first{args.limit}" if args.limit else "")
    np.savez(RESULTS / f"{name}.npz", rows=rows, scores=scores)  # rows index the labels; no labels copied
    table_rows = []
    for view, pred in (("the model's view", scores[:, 0]), ("view + mirror (test_flip)", scores.mean(1))):
        m = evaluate(pred, labels)
        table_rows.append({"scoring": view, "srcc": m["srcc"], "plcc": m["plcc"], "n": len(rows)})
    head = (f"{args.model} on BIQ2021's official {args.part} part ({len(rows)} photos), "
            f"onnxruntime, one thread, {time.perf_counter() - t0:.0f} s\n\n")
    write_results(name, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": table_rows},
                  head + markdown(table_rows, ["scoring", "srcc", "plcc", "n"]))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
