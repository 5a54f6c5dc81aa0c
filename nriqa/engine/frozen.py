"""Training DEIQT's decoder on cached features of a frozen backbone (``trainer.feature_cache``).

When the whole backbone is frozen (``model.freeze=['*']`` with ``model.freeze_bn=true``) and every
image is seen through the same deterministic crops in training as in evaluation, the backbone gives
the same output for an image at every epoch. Computing it once and training the projections and the
attention-panel decoder on the cache costs a fraction of an engine run: on a CPU the backbone's
forward pass is nearly all of a step. The loop is the engine's loss, AdamW and schedule, with one
difference, kept so the shipped model stays exactly reproducible: weight decay applies to every
matrix (the panel queries included). As in the engine, the loss is on every crop's score against
its image's label (an image cached through several crops, e.g. a grid of small ones, teaches the
decoder that what differs between the crops of one image, its content, is not its quality).
This is how nriqa's shipped model is trained on 2 CPU cores (docs/models.md).

Two things an engine run does are done over the cache too. ``data.hflip``: the training images are
cached with their test crops and those crops mirrored (twice the backbone passes), and every step
draws one of the two per crop, as the engine's random flip would. ``optim.ema_decay``: a moving
average of the head's weights (timm's ``ModelEmaV3``) is what is selected and exported.

The cache (``<output_dir>/features`` unless ``trainer.feature_cache_dir`` is set) is keyed by the
backbone, its weights, the crop policy and the image list, filled in chunks and resumable: a killed
run continues from the last finished chunk, and the decoder training that follows (minutes) is
deterministic, so a rerun ends with the same model. Features are stored in float16 (half the disk
and memory); the exported model scores in float32 through the full network, and the reported test
metrics are computed that way, by :func:`nriqa.engine.results.predict_metrics`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from nriqa.config import RunConfig, save_config
from nriqa.data.dataset import IQADataset
from nriqa.data.policy import CropPolicy
from nriqa.engine.checks import check_resumable, check_trainer_settings
from nriqa.engine.data import DataSettings, resolve_data_settings
from nriqa.engine.results import FitResult, predict_metrics, run_results, write_predictions
from nriqa.engine.schedule import adamw, lr_at
from nriqa.errors import ConfigError
from nriqa.inference.model_files import inference_meta, save_model
from nriqa.io import atomic_write, atomic_write_json, fingerprint
from nriqa.metrics import evaluate
from nriqa.models import DEIQT

log = logging.getLogger(__name__)

CHUNK = 256  # images per cache chunk: the most a killed extraction loses
CACHE_FORMAT = 1


def cache_folder(cfg: RunConfig, out_dir: str | Path | None = None) -> Path:
    """Where a run's feature caches live: ``trainer.feature_cache_dir``, else
    ``<output_dir>/features``."""
    return Path(cfg.trainer.feature_cache_dir or Path(out_dir or cfg.trainer.output_dir) / "features")


def check_frozen(cfg: RunConfig) -> None:
    """The cache is exact only for a fully frozen backbone, seen through fixed crops."""
    problems = []
    if cfg.model.freeze != ["*"]:
        problems.append("model.freeze=['*'] (the whole backbone frozen)")
    if not cfg.model.freeze_bn:
        problems.append("model.freeze_bn=true")
    if cfg.method.names:
        problems.append("method.names=[] (methods change the features during training)")
    if problems:
        raise ConfigError("trainer.feature_cache=true needs " + ", ".join(problems))


class FeatureCache:
    """The frozen backbone's ``c`` and ``P`` for every crop of every image of a table, on disk."""

    mirrored = False  # each crop also mirrored (set by for_run)

    def __init__(self, folder: Path, key: str, n_items: int):
        self.folder, self.key, self.n_items = folder, key, n_items
        self.manifest = folder / "manifest.json"

    @classmethod
    def for_run(cls, cfg: RunConfig, table: pd.DataFrame, settings: DataSettings, folder: Path,
                mirrored: bool | None = None):
        """The cache of ``table`` under the run's test crops, each also mirrored when
        ``mirrored`` (default: ``data.test_flip``)."""
        mirrored = cfg.data.test_flip if mirrored is None else mirrored
        # Everything that changes what the frozen backbone gives; not the trained head's shape.
        head_only = {"width", "heads", "queries", "ffn_ratio", "dropout"}
        model = {k: v for k, v in cfg.model.model_dump(mode="json").items() if k not in head_only}
        for later in ("stats_reblur", "stats_denoise"):  # added later: when off, the caches of
            if not model[later]:                          # runs without them keep their keys
                del model[later]
        facts = {"format": CACHE_FORMAT, "model": model,
                 "crop": [cfg.data.crop_size, settings.test_patch_num, cfg.data.test_crops,
                          settings.resize, cfg.data.small_image,
                          # only when set, so the caches of runs without it keep their keys
                          *(["test_flip"] if mirrored else [])],
                 "paths": [str(p) for p in table["path"]]}
        key = fingerprint(facts)
        cache = cls(Path(folder) / key, key, len(table))
        cache.mirrored = mirrored
        return cache

    def dataset(self, cfg: RunConfig, table: pd.DataFrame, settings: DataSettings) -> IQADataset:
        """The images as this cache holds them: the test crops, then their mirrors if mirrored."""
        policy = replace(CropPolicy.from_config(cfg, settings), test_flip=self.mirrored)
        return IQADataset(table, train=False, policy=policy, seed=cfg.trainer.seed)

    def _state(self) -> dict:
        return json.loads(self.manifest.read_text()) if self.manifest.is_file() else {"done": 0}

    def fill(self, model: DEIQT, dataset, batch_size: int, num_workers: int, progress: bool) -> None:
        """Compute what is missing, a chunk at a time (each chunk's files renamed into place)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        done = self._state()["done"]
        if done >= self.n_items:
            return
        backbone = model.backbone.eval()
        bar = _progress(self.n_items, done, "caching frozen features", progress)
        for start in range(done, self.n_items, CHUNK):
            part = Subset(dataset, range(start, min(start + CHUNK, self.n_items)))
            globs, tokens = [], []
            with torch.inference_mode():
                for batch in DataLoader(part, batch_size=batch_size, num_workers=num_workers):
                    crops = batch["image"]  # (B, K, 3, S, S)
                    g, t = backbone.raw_features(crops.flatten(0, 1))
                    globs.append(g.view(*crops.shape[:2], -1).half())
                    tokens.append(t.view(*crops.shape[:2], *t.shape[1:]).half())
                    bar.update(len(crops))
            _save_npy(self._chunk(start, "glob"), torch.cat(globs).numpy())
            _save_npy(self._chunk(start, "tokens"), torch.cat(tokens).numpy())
            atomic_write_json(self.manifest, {"key": self.key, "done": start + len(part),
                                              "items": self.n_items})
        bar.close()

    def _chunk(self, start: int, kind: str) -> Path:
        return self.folder / f"{kind}-{start:07d}.npy"

    def load(self, rows: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``c (N,K,C)`` and ``P (N,K,T,C)`` (float16) of the given rows (all when None)."""
        starts = range(0, self.n_items, CHUNK)
        glob = np.concatenate([np.load(self._chunk(s, "glob"), mmap_mode="r") for s in starts])
        tokens = np.concatenate([np.load(self._chunk(s, "tokens"), mmap_mode="r") for s in starts])
        if rows is not None:
            glob, tokens = glob[rows], tokens[rows]
        return torch.from_numpy(np.ascontiguousarray(glob)), torch.from_numpy(np.ascontiguousarray(tokens))


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:  # a file object: np.save would add ".npy" to a bare name
            np.save(fh, array)

    atomic_write(path, write)


def _progress(total: int, done: int, desc: str, enabled: bool):
    return tqdm(total=total, initial=done, desc=desc, unit="img", disable=not enabled)


class CachedHead(nn.Module):
    """The trainable part of a frozen-backbone DEIQT: projections + decoder, on cached features."""

    def __init__(self, model: DEIQT):
        super().__init__()
        self.proj, self.decoder = model.backbone.proj, model.decoder
        # The stats readout's own projection; otherwise c goes through proj, which is then not
        # registered twice (a shared module appears twice in state_dict, and timm's EMA, which
        # walks state_dict, would update it twice per step).
        if hasattr(model.backbone, "proj_global"):
            self.proj_global = model.backbone.proj_global

    def crop_scores(self, glob: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``c (B,K,C)``, ``P (B,K,T,C)`` -> ``(B,K)`` each crop's score; the same computation as
        ``Backbone.project`` then the decoder."""
        b, k = glob.shape[:2]
        c = getattr(self, "proj_global", self.proj)(glob.flatten(0, 1).float())
        p = self.proj(tokens.flatten(0, 1).float())
        return self.decoder(c, p).score.view(b, k)

    def forward(self, glob: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``(B,)``: the mean score over each image's K crops, as the exported model scores."""
        return self.crop_scores(glob, tokens).mean(1)


def _scores(head: CachedHead, glob, tokens, batch: int = 64) -> np.ndarray:
    was = head.training
    head.eval()
    with torch.no_grad():
        out = torch.cat([head(glob[i:i + batch], tokens[i:i + batch]) for i in range(0, len(glob), batch)])
    head.train(was)
    return out.numpy()


def _notify(callbacks, hook: str, *args) -> None:
    """Call ``hook`` on the callbacks that have it (see :func:`train_head`)."""
    for callback in callbacks:
        if hasattr(callback, hook):
            getattr(callback, hook)(*args)


def train_head(cfg: RunConfig, head: CachedHead, train, select,
               callbacks: tuple = ()) -> tuple[dict, list[dict]]:
    """DEIQT's loss, optimiser and schedule over cached features; returns the state with the best
    selection PLCC and the per-epoch log. Deterministic for a seed.

    With ``data.hflip`` the training features hold each crop and then its mirror (``2K`` views);
    every step draws, per crop, the plain or the mirrored view: the engine's random flip, over a
    cache. Without it, every cached view is trained on (each crop's score against the image's
    label) and an image's selection score is the mean over its views. With
    ``optim.ema_decay`` an exponential moving average of the weights (timm's ``ModelEmaV3``) is
    what is evaluated, selected and returned.

    ``callbacks`` may follow the training (a progress bar): each hook a callback has is called,
    ``on_head_start(total_steps, epochs)``, ``on_head_step(epoch, loss)``,
    ``on_head_epoch_model(epoch, head)`` (the head as evaluated: the EMA when on),
    ``on_head_epoch_end(epoch, metrics)`` and ``on_head_end()``."""
    (g_tr, t_tr, y_tr), (g_sel, t_sel, y_sel) = train, select
    torch.manual_seed(cfg.trainer.seed)
    o = cfg.optim
    params = [p for p in head.parameters() if p.requires_grad]
    # Decay on every matrix, the panel queries included (no DEIQT name exemptions): how the
    # shipped model was trained.
    opt = adamw(head.named_parameters(), o, no_decay_names=())
    loss_fn = nn.SmoothL1Loss(beta=o.loss_beta)
    bs = cfg.data.batch_size
    steps_per_epoch = max(1, math.floor(len(y_tr) / bs))
    gen = torch.Generator().manual_seed(cfg.trainer.seed)
    if o.epochs < 1:
        raise ConfigError("optim.epochs must be at least 1")
    flip = cfg.data.hflip
    views = 2 * resolve_data_settings(cfg).test_patch_num
    if flip and g_tr.shape[1] != views:
        raise ConfigError(f"data.hflip=true needs the training features with their mirrored views "
                          f"({views} per image), not {g_tr.shape[1]}: cache them with mirrored=True")
    ema = ModelEmaV3(head, decay=o.ema_decay) if o.ema_decay is not None else None
    scored = ema.module if ema is not None else head
    best, best_plcc, history, step, selected = None, -math.inf, [], 0, 0
    _notify(callbacks, "on_head_start", o.epochs * steps_per_epoch, o.epochs)
    for epoch in range(o.epochs):
        t0, total = time.time(), 0.0
        order = torch.randperm(len(y_tr), generator=gen)
        for i in range(steps_per_epoch):
            rows = order[i * bs:(i + 1) * bs]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps_per_epoch, o)
            g, t = g_tr[rows], t_tr[rows]
            if flip:
                g, t = _draw_views(g, t, gen)
            scores = head.crop_scores(g, t)  # every crop against its image's label
            loss = loss_fn(scores, y_tr[rows, None].expand_as(scores))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if o.grad_clip:
                nn.utils.clip_grad_norm_(params, o.grad_clip)
            opt.step()
            if ema is not None:
                ema.update(head, step=step + 1)
            total += float(loss.detach())
            step += 1
            _notify(callbacks, "on_head_step", epoch, float(loss.detach()))
        _notify(callbacks, "on_head_epoch_model", epoch, scored)
        metrics = evaluate(_scores(scored, g_sel, t_sel), y_sel.numpy())
        history.append({"epoch": epoch, "train_loss": total / steps_per_epoch,
                        "select_srcc": metrics["srcc"], "select_plcc": metrics["plcc"],
                        "seconds": time.time() - t0})
        _notify(callbacks, "on_head_epoch_end", epoch, metrics)
        log.info("epoch %d: loss %.4f, selection SRCC %.4f PLCC %.4f", epoch,
                 history[-1]["train_loss"], metrics["srcc"], metrics["plcc"])
        if cfg.trainer.progress_bar:
            print(f"epoch {epoch + 1}/{o.epochs}: loss {history[-1]['train_loss']:.4f}  "
                  f"selection SRCC {metrics['srcc']:.4f}  PLCC {metrics['plcc']:.4f}", flush=True)
        if best is None or metrics["plcc"] > best_plcc:  # NaN never wins, but epoch 0 is kept
            best_plcc, selected = metrics["plcc"], epoch
            best = {k: v.detach().clone() for k, v in scored.state_dict().items()}
    _notify(callbacks, "on_head_end")
    for h in history:
        h["selected"] = h["epoch"] == selected
    return best, history


def _draw_views(glob: torch.Tensor, tokens: torch.Tensor, gen: torch.Generator):
    """From ``2K`` views (K crops, then their K mirrors) keep, per image and crop, one of the
    two at random."""
    b, k = glob.shape[0], glob.shape[1] // 2
    pick = torch.arange(k) + k * (torch.rand(b, k, generator=gen) < 0.5).long()
    rows = torch.arange(b)[:, None]
    return glob[rows, pick], tokens[rows, pick]


def cached_features(cfg: RunConfig, parts: dict[str, pd.DataFrame], folder: Path, model: DEIQT,
                    settings: DataSettings) -> dict:
    """``(c, P, labels)`` of the train and select parts, computing what the cache lacks. The
    training images are cached mirrored too when the run flips them (``data.hflip``); both parts
    when it scores them mirrored (``data.test_flip``)."""
    features = {}
    for name in ("train", "select"):
        table = parts[name]
        mirrored = cfg.data.test_flip or (name == "train" and cfg.data.hflip)
        cache = FeatureCache.for_run(cfg, table, settings, folder, mirrored)
        cache.fill(model, cache.dataset(cfg, table, settings), cfg.data.eval_batch_size,
                   cfg.data.num_workers, cfg.trainer.progress_bar)
        glob, tokens = cache.load()
        features[name] = (glob, tokens, torch.tensor(table["label"].to_numpy(), dtype=torch.float32))
    return features


def fit_frozen(cfg: RunConfig, parts: dict[str, pd.DataFrame], out_dir: Path, split=None,
               callbacks: tuple = ()):
    """Like :func:`nriqa.engine.train.fit_parts`, for a frozen backbone: cache, train, select,
    test through the full exported network, export. ``callbacks``: see :func:`train_head`."""
    check_frozen(cfg)
    check_trainer_settings(cfg)
    if cfg.trainer.resume and (out_dir / "config.yaml").is_file():
        check_resumable(cfg, out_dir / "config.yaml")  # the cache continues; the settings must not change
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    settings = resolve_data_settings(cfg)
    torch.manual_seed(cfg.trainer.seed)
    model = DEIQT.from_config(cfg.model)
    features = cached_features(cfg, parts, cache_folder(cfg, out_dir), model, settings)
    head = CachedHead(model)
    best, history = train_head(cfg, head, features["train"], features["select"], callbacks)
    head.load_state_dict(best)
    meta = inference_meta(cfg, settings)
    model_path = save_model(model, meta, out_dir / "model.safetensors")
    # The test part is scored once, by the exported network itself (float32, no cache).
    model.eval()
    test = predict_metrics(model, parts["test"], cfg, settings, return_predictions=True)
    preds = test.pop("predictions")
    selected = next(h["epoch"] for h in history if h["selected"])
    results = run_results(
        cfg, parts, split, selected_epoch=selected,
        select_plcc=max(h["select_plcc"] for h in history), test=test, exported="student",
        history=history,
        training="decoder on cached features of the frozen backbone (trainer.feature_cache)")
    atomic_write_json(out_dir / "results.json", results)
    rows = np.arange(len(parts["test"]))
    write_predictions(out_dir / "test_predictions.csv", parts["test"],
                       np.stack([rows, preds, parts["test"]["label"].to_numpy()], 1))
    return FitResult(out_dir, model_path, results)
