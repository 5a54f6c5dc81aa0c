"""glibc's allocator as it comes against :func:`nriqa.allocator.retain_freed_memory`, side by side.

Each setting runs in its own process (the allocator's thresholds are per process), in turn, for
``--rounds`` rounds; the best round of each is reported, with the process's user and system CPU
time and its peak resident memory. Workloads, on the ``demo`` recipe's model (random pixels: the
timing does not depend on them):

* ``backbone``: the frozen backbone's cached pass (``raw_features``: the image, its re-blurred
  copy) over one evaluation batch of 8 images x 12 crops of 128 px, as ``nriqa demo`` caches;
* ``head``: decoder training steps on cached features (batch 32 images x 12 crops);

    python benchmarks/allocator.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from common import markdown, write_results

SETTINGS = {"glibc default": "0", "retain_freed_memory": "1"}


def child(workload: str, reps: int) -> dict:
    from nriqa.allocator import retain_freed_memory

    retained = retain_freed_memory()
    import torch

    from nriqa.config import load_config
    from nriqa.engine.frozen import CachedHead
    from nriqa.models import DEIQT

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = load_config("demo", [])
    model = DEIQT.from_config(cfg.model).eval()
    if workload == "backbone":
        crops = torch.rand(8 * 12, 3, 128, 128)

        def step():
            with torch.inference_mode():
                model.backbone.raw_features(crops)
    else:
        head = CachedHead(model)
        with torch.inference_mode():
            glob, tokens = model.backbone.raw_features(torch.rand(12, 3, 128, 128))
        glob = glob.repeat(32, 1).view(32, 12, -1).clone()
        tokens = tokens.repeat(32, 1, 1).view(32, 12, *tokens.shape[1:]).clone()
        opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-4)

        def step():
            loss = head.crop_scores(glob, tokens).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    step()  # warm-up
    t0, c0 = time.perf_counter(), os.times()
    for _ in range(reps):
        step()
    c1 = os.times()
    return {"retained": retained, "s_per_step": (time.perf_counter() - t0) / reps,
            "user_s": (c1.user - c0.user) / reps, "system_s": (c1.system - c0.system) / reps,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(workload: str, setting: str, reps: int) -> dict:
    env = {**os.environ, "NRIQA_KEEP_FREED_MEMORY": SETTINGS[setting], "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, __file__, "--child", workload, "--reps", str(reps)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--workloads", nargs="+", default=["backbone", "head"])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.reps)))
        return
    rows = []
    for workload in args.workloads:
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for setting in SETTINGS:  # in turn, so that the machine's load falls on both
                r = run(workload, setting, args.reps)
                if setting not in best or r["s_per_step"] < best[setting]["s_per_step"]:
                    best[setting] = r
        base = best["glibc default"]["s_per_step"]
        for setting, r in best.items():
            rows.append({"workload": workload, "allocator": setting,
                         "s/step": round(r["s_per_step"], 3), "user s": round(r["user_s"], 3),
                         "system s": round(r["system_s"], 3),
                         "speed-up": f"{base / r['s_per_step']:.2f}x",
                         "peak RSS MB": round(r["peak_rss_mb"]), "applied": r["retained"]})
    table = ("# The allocator: glibc's default against retain_freed_memory\n\n"
             f"Best of {args.rounds} rounds, {args.reps} steps each, 2 threads, load average "
             f"{os.getloadavg()[0]:.1f} at the end. `python benchmarks/allocator.py`\n\n"
             + markdown(rows, ["workload", "allocator", "s/step", "user s", "system s",
                               "speed-up", "peak RSS MB", "applied"]))
    write_results("allocator", {"rows": rows, "rounds": args.rounds, "reps": args.reps}, table)


if __name__ == "__main__":
    main()
