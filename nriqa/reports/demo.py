"""``nriqa demo``: the main job on the embedded dataset, end to end on a CPU, in minutes.

1. Build (or find cached) the embedded dataset: KADID-10k's distortions of the photos bundled with
   scikit-image, scikit-learn and matplotlib, labelled with KADID's human scores.
2. Split it by reference photo (train / validation / test never share a photo).
3. The frozen-feature probe: ridge regression on the ImageNet backbone's features (the same
   per-stage statistics the model reads), its penalty chosen on the validation part; the baseline
   that training has to beat.
4. Train DEIQT's decoder on the frozen EfficientNet-Lite0 (offline ImageNet weights; its features
   computed once and cached, ``trainer.feature_cache``), the epoch selected on the validation
   part, and test the exported model on the held-out photos.
5. Write the report (metrics, pictures) and the exported model; print where everything is.

The test part is only ever used for the numbers reported, never for a choice.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from nriqa.config import RunConfig, load_config
from nriqa.errors import ConfigError

#: Rough costs on 2 otherwise idle CPU cores, only used for the time the plan announces: seconds
#: per training crop (the last two stages trained; benchmarks/results/speed_cpu.md); per scored
#: crop of tf_efficientnet_lite0, a fixed part (decoding, cropping, the call) and a part that grows
#: with the crop's area, and each self-reference pass of ``model.stats_reblur`` /
#: ``model.stats_denoise`` (it stops after the summarised stages); per decoder step on cached
#: features of 3 crops an image. Measured with the nriqa command's allocator setting
#: (nriqa.allocator): `nriqa demo` cached 810 images of 12 crops of 128 px, with the re-blurred
#: pass, at 0.118 s an image and trained 540 steps of 12 crops an image in 162 s;
#: `benchmarks/demo_cv.py` put the median-filtered pass at 0.070 s an image more.
SECONDS_PER_TRAIN_CROP = 0.035
SECONDS_PER_EVAL_CROP_FIXED = 0.001
SECONDS_PER_EVAL_CROP_224 = 0.009
SECONDS_PER_REBLUR_CROP_224 = 0.018
SECONDS_PER_HEAD_STEP = 0.075
BUILD_IMAGES_PER_S = 40.0  # 810 images in 17 s, 2 workers

#: ``--quick``: a 2 x 2 grid of crops instead of 4 x 3 (a third of the backbone's work) and 12
#: epochs; lower scores.
QUICK = ["data.test_patch_num=4", "optim.epochs=12"]
# Test-only: a tiny transformer on 48 px images of five photos, four distortions (seconds).
TINY = ["model.backbone=vit_tiny_patch16_224", "model.weights=none", "model.img_size=32",
        "model.width=64", "model.heads=2", "model.queries=3",
        "model.backbone_kwargs={depth: 2, embed_dim: 64, num_heads: 2}", "model.freeze=[]",
        "model.freeze_bn=false", "data.crop_size=32", "data.batch_size=8",
        "data.eval_batch_size=8", "data.num_workers=0", "optim.epochs=2",
        "optim.warmup_epochs=0.5", "trainer.limit_train_batches=null",
        "trainer.feature_cache=false", "model.readout=default", "model.stats_stages=null",
        "model.stats_reblur=0",
        "model.token_pool=1",
        "data.test_patch_num=2", "data.options.distortions=null"]
TINY_DATA = {"size": 48, "references": ["astronaut", "coffee", "chelsea", "china", "flower"],
             "distortions": ["gaussian_blur", "white_noise", "jpeg", "darken"]}


@dataclass
class DemoResult:
    report: Path
    model: Path
    dataset: Path
    metrics: dict  # held-out metrics of the trained model
    probe: dict  # held-out metrics of the frozen-feature probe
    wall_s: float
    extra: dict = field(default_factory=dict)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def run_demo(output_dir: str | Path = "runs/demo", quick: bool = False,
             overrides: list[str] | None = None, keep_checkpoints: bool = False,
             tiny: bool = False, distortions: str = "artefacts") -> DemoResult:
    """``distortions``: the embedded dataset's set (:data:`nriqa.data.synthetic.DISTORTION_SETS`):
    ``artefacts`` (KADID's blur, noise and compression types, the default) or ``all`` (18 types,
    the harder task: docs/embedded_dataset.md says why)."""
    from nriqa.data import synthetic

    _say(f"nriqa demo{' --quick' if quick else ''}: train a blind quality model on a CPU and "
         "test it on photos it never saw")
    # Frozen BatchNorm layers are in eval mode on purpose (model.freeze_bn).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    start = time.perf_counter()
    load_start = _load()
    out = Path(output_dir)
    # The frozen backbone's features are cached beside the dataset, so a second demo skips them.
    extra = [f"trainer.output_dir={out}", "trainer.progress_bar=false",
             f"trainer.feature_cache_dir={synthetic.cache_root() / 'features'}"]
    if distortions not in synthetic.DISTORTION_SETS:
        raise ConfigError(f"demo distortions {distortions!r}: unknown; allowed: "
                          f"{', '.join(synthetic.DISTORTION_SETS)}")
    extra.append(f"data.options.distortions={distortions}")  # as `nriqa train -c demo` reads it
    extra += QUICK if quick else []
    extra += TINY if tiny else []
    cfg = load_config("demo", extra + list(overrides or []))
    data_opts = TINY_DATA if tiny else {"distortions": synthetic.DISTORTION_SETS[distortions]}
    root = synthetic.embedded_dir(**data_opts)
    cached = synthetic.is_built(root, **data_opts)
    photos = list(data_opts.get("references") or synthetic.REFERENCES)
    n_gray = len(synthetic.GRAYSCALE.intersection(photos))
    n_dists = len(data_opts["distortions"])
    n_images = synthetic.image_count(data_opts["distortions"], data_opts.get("references"))

    which = "" if tiny or distortions == "all" else " (its blur, noise and compression types)"
    gray = f" ({n_gray} grayscale)" if n_gray else ""
    _say(f"  data    embedded dataset: {len(photos)} bundled photos{gray} x {n_dists} KADID-10k "
         f"distortions{which} x {synthetic.N_LEVELS} levels = {n_images} images, labelled with "
         "KADID-10k's mean human score per distortion and level")
    _say(f"          {'found in the cache' if cached else 'building it now (first run only, about '}"
         f"{'' if cached else _duration(n_images / BUILD_IMAGES_PER_S) + ')'}: {root}")
    t = time.perf_counter()
    root = synthetic.build_embedded(root, **data_opts)
    build_s = time.perf_counter() - t
    if not cached:
        _say(f"          built in {build_s:.0f} s")
    cfg.data.root = str(root)

    from nriqa.engine.data import resolve_data_settings
    from nriqa.engine.train import split_parts
    from nriqa.protocol.runner import load_table, split_for

    table = load_table(cfg.data)
    split = split_for(cfg, table, cfg.split.index)
    parts = split_parts(table, split, cfg.split.protocol)
    settings = resolve_data_settings(cfg)
    plan = _plan(cfg, parts, settings)
    refs = {k: sorted(v["group"].unique()) for k, v in parts.items()}
    how = "official" if cfg.split.mode == "official" else f"seed {cfg.split.seed}"
    _say(f"  split   by photo ({how}): train {len(refs['train'])} photos ({len(parts['train'])} images), "
         f"validation {len(refs['select'])} ({', '.join(refs['select'])}), "
         f"test {len(refs['test'])} ({', '.join(refs['test'])})")
    weights = "random init" if cfg.model.weights == "none" else f"{cfg.model.weights} ImageNet weights"
    _say(f"  model   DEIQT, backbone {cfg.model.backbone} ({weights}), "
         f"{_trainable(cfg)}")
    crops = "cached" if cfg.trainer.feature_cache else "random"
    per_image = f" images x {settings.test_patch_num}" if cfg.trainer.feature_cache else ""
    _say(f"  method  {plan['epochs']} epoch(s) x {plan['steps_per_epoch']} steps of "
         f"{cfg.data.batch_size}{per_image} {crops} {cfg.data.crop_size} px crops, lr {cfg.optim.lr:g} "
         f"({cfg.optim.schedule}); epoch chosen on validation PLCC; test on "
         f"{settings.test_patch_num} crop(s) per image")
    _say("  probe   ridge regression on the frozen backbone's features (the baseline: no decoder)")
    _say(f"  time    about {_duration(plan['seconds'])} for probe, training and test on 2 idle CPU "
         f"cores (torch threads: {_threads()}; load average now {_load()[0]:.1f}: a busy machine "
         "is slower)")
    _say()

    from nriqa.protocol.probe import frozen_probe

    t = time.perf_counter()
    probe = frozen_probe(cfg, parts, settings, progress=True)
    probe_s = time.perf_counter() - t
    _say(f"probe: held-out SRCC {probe['test']['srcc']:.3f}, PLCC {probe['test']['plcc']:.3f} "
         f"(ridge alpha {probe['alpha']:g} chosen on validation; {probe_s:.0f} s)")

    from nriqa.engine.frozen import cache_folder
    from nriqa.engine.train import fit_parts

    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    bar = demo_progress(plan["epochs"] * plan["steps_per_epoch"], plan["epochs"])
    result = fit_parts(cfg, parts, out, split, callbacks=(bar,))
    train_s = time.perf_counter() - t
    if not keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    test = result.results["test"]
    _say(f"trained: held-out SRCC {test['srcc']:.3f}, PLCC {test['plcc']:.3f} "
         f"(epoch {result.results['selected_epoch'] + 1} selected on validation; {train_s:.0f} s)")

    from nriqa.reports.report import write_demo_report

    wall = time.perf_counter() - start
    facts = {"cfg": cfg, "parts": parts, "refs": refs, "probe": probe, "results": result.results,
             "timing": {"build_s": build_s, "cached": cached, "probe_s": probe_s,
                        "train_s": train_s, "wall_s": wall},
             "load": {"start": load_start, "end": _load()}, "threads": _threads(),
             "quick": quick, "dataset": root, "plan": plan,
             "distortions": None if tiny else distortions}
    report = write_demo_report(out, facts, result.model_path)
    wall = time.perf_counter() - start

    _say()
    _say(f"held-out photos ({', '.join(refs['test'])}; never seen in training or selection):")
    _say(f"  trained model   SRCC {test['srcc']:.3f}  PLCC {test['plcc']:.3f}")
    _say(f"  frozen probe    SRCC {probe['test']['srcc']:.3f}  PLCC {probe['test']['plcc']:.3f}")
    _say(f"wall time {_duration(wall)} (load average {load_start[0]:.1f} at start, "
         f"{_load()[0]:.1f} at end)")
    _say(f"report    {report}")
    _say(f"model     {result.model_path}  (nriqa score photos/ --model {result.model_path})")
    kept = "checkpoints kept" if keep_checkpoints else "no training checkpoints kept (--keep-checkpoints)"
    _say(f"run       {out}  ({_size(out)}; {kept})")
    features = cache_folder(cfg, out)
    if cfg.trainer.feature_cache and features.is_dir():
        _say(f"features  {features}  ({_size(features)}; the frozen backbone's, reused by the next demo)")
    _say(f"dataset   {root}  ({_size(root)}; clear the cache with: rm -rf {synthetic.cache_root()})")
    return DemoResult(report, result.model_path, root, test, probe["test"], wall,
                      {"build_s": build_s, "train_s": train_s, "probe_s": probe_s})


def _plan(cfg: RunConfig, parts: dict, settings) -> dict:
    """Epochs, steps per epoch and the rough time the plan announces."""
    n_train, n_select, n_test = (len(parts[k]) for k in ("train", "select", "test"))
    area = (cfg.data.crop_size / 224) ** 2
    # each self-reference (re-blurred, median-filtered) is one more pass of every crop
    passes = bool(cfg.model.stats_reblur) + bool(cfg.model.stats_denoise)
    per_224 = SECONDS_PER_EVAL_CROP_224 + SECONDS_PER_REBLUR_CROP_224 * passes
    eval_cost = settings.test_patch_num * (SECONDS_PER_EVAL_CROP_FIXED + per_224 * area)
    epochs = cfg.optim.epochs
    if cfg.trainer.feature_cache:  # one backbone pass per image (probe and cache), the test again
        per_epoch = max(1, n_train // cfg.data.batch_size)
        seconds = ((n_train + n_select + 2 * n_test) * eval_cost
                   # a step's decoder work grows with the crops per image (measured: 1 and 6)
                   + epochs * per_epoch * SECONDS_PER_HEAD_STEP * max(1.0, settings.test_patch_num / 3))
        return {"epochs": epochs, "steps_per_epoch": per_epoch, "seconds": seconds + 15}
    per_epoch = math.ceil(n_train * settings.patch_num / cfg.data.batch_size)
    limit = cfg.trainer.limit_train_batches
    if isinstance(limit, int) and limit > 0:
        per_epoch = min(per_epoch, limit)
    elif isinstance(limit, float):
        per_epoch = max(1, int(per_epoch * limit))
    train_crops = epochs * per_epoch * cfg.data.batch_size
    n_eval = n_select * epochs + 2 * n_test + n_train + n_select + n_test  # + the probe
    seconds = train_crops * SECONDS_PER_TRAIN_CROP + n_eval * eval_cost
    return {"epochs": epochs, "steps_per_epoch": per_epoch, "seconds": seconds + 15}


def _trainable(cfg: RunConfig) -> str:
    frozen = cfg.model.freeze
    if not frozen:
        return "all layers trained"
    if "*" in frozen:
        kind = "untrained features" if cfg.model.weights == "none" else "ImageNet features"
        cached = ", computed once and cached" if cfg.trainer.feature_cache else ""
        return f"backbone frozen ({kind}{cached}), the decoder trained"
    blocks = [f for f in frozen if f.startswith("blocks.")]
    stem = "stem and " if "conv_stem" in frozen else ""
    last = f"blocks up to {blocks[-1]}" if blocks else ""
    bn = ", BatchNorm statistics frozen" if cfg.model.freeze_bn else ""
    return f"{stem}{last} frozen (ImageNet features), the rest and the decoder trained{bn}"


def _load() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # not available on this platform
        return (float("nan"),) * 3


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def _size(path: Path) -> str:
    total = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    return f"{total / 1e6:.0f} MB" if total >= 1e6 else f"{total / 1e3:.0f} kB"


# ------------------------------------------------------------------------------ progress


def demo_progress(total_steps: int, epochs: int):
    """One progress bar for the whole training: epoch, running loss, last validation SRCC.

    Defined on call so that importing this module does not import Lightning (the plan is printed
    first, while the heavy libraries load)."""
    import lightning as L

    class _DemoProgress(L.Callback):
        def __init__(self, total_steps: int, epochs: int):
            self.total, self.epochs = total_steps, epochs
            self.bar = None
            self.loss = None
            self.val = ""

        def on_train_start(self, trainer, pl_module) -> None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, unit="step", desc=f"epoch 1/{self.epochs}",
                            dynamic_ncols=True, file=sys.stderr, leave=True)

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if self.bar is not None:
                self.bar.set_description(f"epoch {trainer.current_epoch + 1}/{self.epochs}")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
            self.loss = value if self.loss is None else 0.9 * self.loss + 0.1 * value
            if self.bar is not None:
                self.bar.set_postfix_str(f"loss {self.loss:.4f}{self.val}", refresh=False)
                self.bar.update(1)

        def on_validation_end(self, trainer, pl_module) -> None:
            metrics = getattr(pl_module, "last_eval", {}).get("val", {}).get("metrics")
            if metrics:
                self.val = f", val SRCC {metrics['srcc']:.3f}"
                if self.bar is not None:
                    self.bar.set_postfix_str(f"loss {self.loss or 0:.4f}{self.val}")

        def on_train_end(self, trainer, pl_module) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

        # The same bar for a decoder trained on cached features (nriqa.engine.frozen.train_head).
        def on_head_start(self, total_steps: int, epochs: int) -> None:
            self.total, self.epochs = total_steps, epochs
            self.on_train_start(None, None)

        def on_head_step(self, epoch: int, loss: float) -> None:
            self.bar.set_description(f"epoch {epoch + 1}/{self.epochs}")
            self.loss = loss if self.loss is None else 0.9 * self.loss + 0.1 * loss
            self.bar.set_postfix_str(f"loss {self.loss:.4f}{self.val}", refresh=False)
            self.bar.update(1)

        def on_head_epoch_end(self, epoch: int, metrics: dict) -> None:
            self.val = f", val SRCC {metrics['srcc']:.3f}"
            self.bar.set_postfix_str(f"loss {self.loss or 0:.4f}{self.val}")

        def on_head_end(self) -> None:
            self.on_train_end(None, None)

    return _DemoProgress(total_steps, epochs)
