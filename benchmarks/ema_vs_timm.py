"""Would timm's ``ModelEmaV3`` reproduce LML-IQA's EMA teacher (``nriqa.methods.lml.ema_update_``)?

Both start from a copy of the same student; after each of ``--steps`` random student updates both
EMAs are updated with the same momentum, and the teachers' parameters are compared exactly. timm
interpolates (``lerp``: ``xi + (1 - m) (theta - xi)``), nriqa multiplies and adds
(``m xi + (1 - m) theta``): the same in exact arithmetic, not in float32.

    python benchmarks/ema_vs_timm.py [--steps 20] [--momentum 0.998]
"""

from __future__ import annotations

import argparse
import copy

import torch
from common import markdown, write_results
from timm.utils import ModelEmaV3

from nriqa.config import load_config
from nriqa.methods.lml import ema_update_
from nriqa.models import DEIQT

TINY = ["model.backbone=vit_tiny_patch16_224", "model.weights=none", "model.img_size=32",
        "model.width=64", "model.heads=2", "model.queries=3",
        "model.backbone_kwargs={depth: 2, embed_dim: 64, num_heads: 2}"]  # tests/helpers.py's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--momentum", type=float, default=0.998)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    student = DEIQT.from_config(load_config(None, TINY).model)
    ours = copy.deepcopy(student).requires_grad_(False).eval()
    timm_ema = ModelEmaV3(student, decay=args.momentum, exclude_buffers=True)
    rows = []
    for step in range(1, args.steps + 1):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        ema_update_(ours, student, args.momentum)
        timm_ema.update(student)
        pairs = [(a.detach(), b.detach()) for a, b in zip(ours.parameters(),
                                                          timm_ema.module.parameters())]
        differ = sum(int((a != b).sum()) for a, b in pairs)
        total = sum(a.numel() for a, _ in pairs)
        worst = max(float((a - b).abs().max()) for a, b in pairs)
        rows.append({"step": step, "identical": all(torch.equal(a, b) for a, b in pairs),
                     "values_differing": f"{differ}/{total}", "max_abs_diff": f"{worst:.2e}"})
    table = markdown(rows[:3] + rows[-1:], ["step", "identical", "values_differing", "max_abs_diff"])
    write_results("ema_vs_timm", {"steps": args.steps, "momentum": args.momentum, "rows": rows}, table)


if __name__ == "__main__":
    main()
