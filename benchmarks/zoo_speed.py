"""CPU scoring speed of a shipped (or any) model through ``Scorer.score_paths``, per backend, side by
side in one run: photos/s including decoding, resizing and cropping. The photos are the 24 Kodak
images (768 x 512), scored ``--rounds`` times in turn per backend; the best round counts.
Prints a table and writes benchmarks/results/zoo_speed[_NAME].{json,md}.

    python benchmarks/zoo_speed.py --model default --threads 2
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from common import SHARED, markdown, write_results

from nriqa.inference.scoring import Scorer, onnxruntime_available


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="zoo_speed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    photos = sorted((SHARED / "kodak24").glob("kodim*.png"))
    if not photos:
        raise SystemExit(f"Kodak photos not found under {SHARED} (set NRIQA_SHARED_DATA)")
    backends = ["torch", "onnxruntime"] if onnxruntime_available() else ["torch"]
    if len(backends) == 1:
        print("onnxruntime is not installed: only the torch backend is measured")
    scorers = {b: Scorer.from_pretrained(args.model, backend=b) for b in backends}
    best = dict.fromkeys(backends, float("inf"))
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, scorer in scorers.items():
            t0 = time.perf_counter()
            scorer.score_paths(photos)
            best[name] = min(best[name], time.perf_counter() - t0)
    rows = [{"backend": b, "photos/s": len(photos) / best[b],
             "x torch": best["torch"] / best[b]} for b in backends]
    model = scorers["torch"].source
    text = (f"Scoring speed of {model}, {len(photos)} Kodak photos, {args.threads} thread(s), "
            f"load {load:.1f} at start\n\n" + markdown(rows, ["backend", "photos/s", "x torch"]))
    write_results(args.name, {"model": model, "args": vars(args), "load": load, "rows": rows}, text)


if __name__ == "__main__":
    main()
