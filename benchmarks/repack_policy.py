"""Give a shipped model a new input policy: the same tensors, bit for bit, with new metadata, a new
sha256 and a card whose metrics are those measured under the new policy.

The card's previous metrics move to ``metrics.before`` (with the policy they were measured under),
so the card keeps the history of what the same weights score under each policy. Today's one
policy change is ``test_flip`` (each view also scored mirrored), measured by
``zoo_test_flip.py`` on the validation part (the choice) and the test part (reported once):

    python benchmarks/repack_policy.py --name biq2021-lite0 --test-flip \\
        --val benchmarks/results/zoo_test_flip_val.json --test benchmarks/results/zoo_test_flip_test.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image
from safetensors import safe_open

from nriqa.inference import zoo
from nriqa.inference.model_files import load_model, save_model
from nriqa.inference.scoring import Scorer
from nriqa.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "nriqa" / "pretrained"
PLAIN_ROW, FLIP_ROW = "the model's view", "view + mirror (test_flip)"


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable


def storage_of(path: Path) -> tuple[torch.dtype | None, tuple[str, ...]]:
    """How the file stores its floating-point tensors: the dtype and the float32 prefixes kept."""
    floats = {k: v.dtype for k, v in tensors(path).items() if v.is_floating_point()}
    if all(d == torch.float32 for d in floats.values()):
        return None, ()
    kept = {k.split(".")[0] + "." + k.split(".")[1] + "." for k, d in floats.items() if d == torch.float32}
    return torch.float16, tuple(sorted(kept))


def row(path: Path, name: str) -> dict:
    rows = json.loads(path.read_text())["rows"]
    return next(r for r in rows if r["scoring"] == name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--test-flip", action="store_true", required=True)
    ap.add_argument("--val", type=Path, required=True, help="zoo_test_flip.py's JSON on val")
    ap.add_argument("--test", type=Path, required=True, help="zoo_test_flip.py's JSON on test")
    ap.add_argument("--kodak", type=Path, help="kodak_sanity.py's JSON under the new policy")
    ap.add_argument("--speed", type=Path, help="zoo_speed.py's JSON under the new policy")
    args = ap.parse_args()

    card_path = PRETRAINED / f"{args.name}.json"
    card = json.loads(card_path.read_text())
    old_file = PRETRAINED / card["file"]
    model, meta = load_model(zoo.verified_file(zoo.card(args.name)))
    before = tensors(old_file)
    dtype, keep = storage_of(old_file)
    meta = {**meta, "test_flip": True}
    with tempfile.TemporaryDirectory() as tmp:
        new = save_model(model, meta, Path(tmp) / old_file.name, dtype, keep)
        after = tensors(new)
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), \
            "the tensors changed"
        sample = Path(tmp) / f"{card['check']['image']}.png"
        Image.fromarray(getattr(skimage.data, card["check"]["image"])()).save(sample)
        score = Scorer.from_checkpoint(new).score_paths([sample])[0].score
        new.replace(old_file)

    val, test = row(args.val, FLIP_ROW), row(args.test, FLIP_ROW)
    metrics = card["metrics"]
    previous = {k: metrics.pop(k) for k in ("val", "test", "kodak_sanity", "speed") if k in metrics}
    metrics["before"] = {"input_policy": dict(card["input_policy"]), **previous}
    metrics["val"] = {"srcc": val["srcc"], "plcc": val["plcc"], "n": val["n"]}
    metrics["test"] = {"srcc": test["srcc"], "plcc": test["plcc"], "n": test["n"]}
    metrics["test_flip_choice"] = (f"chosen on the validation part (zoo_test_flip.py --part val: PLCC "
                                   f"{val['plcc']:.4f} against {row(args.val, PLAIN_ROW)['plcc']:.4f} "
                                   "without the mirror); the test part scored once for it")
    for key, path in (("kodak_sanity", args.kodak), ("speed", args.speed)):
        if path:
            data = json.loads(path.read_text())
            metrics[key] = data.get("table", data.get("rows", data))
    card["input_policy"] = {**card["input_policy"], "test_flip": True}
    card["sha256"] = zoo.sha256_of(old_file)
    card["check"] = {**card["check"], "score": score}
    card["limits"] = [line.replace("sees one 512 x 512 centre crop of the photo",
                                   "sees one 512 x 512 centre crop (and its mirror image) of the photo")
                      for line in card["limits"]]
    atomic_write_json(card_path, card)
    zoo.registry.cache_clear()
    zoo.resolve_model(args.name)  # the card reads back and its file verifies
    print(json.dumps({k: card[k] for k in ("name", "sha256", "input_policy", "check")}, indent=2))
    print(json.dumps({k: metrics[k] for k in ("val", "test")}, indent=2), np.round(score, 6))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
