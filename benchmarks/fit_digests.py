"""Small fits through the engine, one line each: test metrics, compute counts and a digest of the
exported weights. Run it on two checkouts to show a refactor changed no number (bit for bit on
the CPU): ``PYTHONPATH=. python benchmarks/fit_digests.py OUT_DIR [run ...]`` in each, then diff
the two outputs. Uses the tests' tiny ViT and tiny images (a few seconds per run)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import tiny_config, tiny_images  # noqa: E402 - the tests' tiny model and images

from nriqa.data.splits import make_split  # noqa: E402
from nriqa.engine.train import fit  # noqa: E402

# method.name (the old spelling) so that checkouts from before method.names read the same runs
RUNS = {
    "deiqt": [],
    "qfm": ["method.name=qfm"],
    "lml": ["method.name=lml", "method.lml.crops=2"],
    "qfm+lml": ["method.name=qfm+lml", "method.lml.crops=2", "method.qfm.teacher=false"],
    "lml-ema-best": ["method.name=lml", "method.lml.crops=2", "method.lml.infer_with=best"],
    "frozen": ["model.freeze=['*']", "model.freeze_bn=true", "trainer.feature_cache=true",
               "data.patch_num=1", "data.test_patch_num=1", "data.test_crops=grid", "data.hflip=false"],
    "paper": ["split.protocol=paper"],
    "qfm-pseudo-adv": ["method.name=qfm", "method.qfm.matching=adversarial",
                       "method.qfm.pseudo_label_dir=IMAGES", "method.qfm.pseudo_per_step=2"],
    "qfm-nomem-kd": ["method.name=qfm", "method.qfm.memory=false", "method.qfm.lambda_kd=0.5",
                     "method.qfm.warm_start=delay"],
    "lml-spectral-noema": ["method.name=lml", "method.lml.crops=2", "method.lml.saliency=spectral",
                           "method.lml.ema=false", "method.lml.beta=0.5"],
}


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for key, value in sorted(load_file(path).items()):
        h.update(key.encode())
        h.update(value.numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    table = tiny_images(out / "imgs")
    for name, extra in RUNS.items():
        if len(sys.argv) > 2 and name not in sys.argv[2:]:
            continue
        cfg = tiny_config(out / name, *[e.replace("IMAGES", str(out / "imgs")) for e in extra])
        split = make_split(table, mode="paper" if name == "paper" else "honest", seed=0)
        res = fit(cfg, table, split, out / name / "run").results
        facts = {"test": res["test"], "select": res["select_plcc"], "epoch": res["selected_epoch"],
                 "compute": res.get("compute"), "method": res["method"]}
        print(name, json.dumps(facts, sort_keys=True), digest(out / name / "run" / "model.safetensors"),
              flush=True)


if __name__ == "__main__":
    main()
