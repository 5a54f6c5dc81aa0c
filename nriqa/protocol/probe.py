"""The frozen-feature probe: what the pretrained backbone knows before any training.

Ridge regression from the backbone's global feature (ImageNet weights, never trained here; the
model's own readout: the pooled last map, or with ``model.readout=stats`` the per-stage channel
statistics) to the labels, fitted on the training part, its penalty chosen by PLCC on the
validation part, and tested on the test part: the baseline beside which the trained model's gain
is visible.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import Ridge

from nriqa.config import RunConfig
from nriqa.engine.data import eval_dataset, eval_loader
from nriqa.engine.frozen import FeatureCache, cache_folder
from nriqa.errors import MetricError
from nriqa.metrics import evaluate, plcc
from nriqa.models import DEIQT
from nriqa.models.backbones import Backbone

ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 15))


@torch.inference_mode()
def pooled_features(backbone, table: pd.DataFrame, cfg: RunConfig, settings) -> np.ndarray:
    """``(n_images, D)``: each image's global feature, averaged over its test crops, in table order."""
    backbone.eval()
    rows, feats = [], []
    for batch in eval_loader(cfg, eval_dataset(cfg, table, settings), 0, 1):
        crops = batch["image"]
        b, k = crops.shape[:2]
        glob, _ = backbone.raw_features(crops.flatten(0, 1))
        feats.append(glob.float().view(b, k, -1).mean(1).numpy())
        rows.append(batch["index"].numpy())
    order = np.argsort(np.concatenate(rows), kind="stable")
    return np.concatenate(feats)[order]


def fit_ridge(train_x, train_y, select_x, select_y, alphas=ALPHAS):
    """Standardise on the training part; the penalty with the best selection PLCC wins."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    scores = {}
    for alpha in alphas:
        model = Ridge(alpha=alpha).fit((train_x - mean) / std, train_y)
        try:
            scores[alpha] = plcc(model.predict((select_x - mean) / std), select_y)
        except MetricError:
            scores[alpha] = -1.0
    best = max(scores, key=scores.get)
    model = Ridge(alpha=best).fit((train_x - mean) / std, train_y)
    return (lambda x: model.predict((x - mean) / std)), best


def part_features(cfg: RunConfig, parts: dict[str, pd.DataFrame], settings,
                  progress: bool = False) -> dict[str, np.ndarray]:
    """Each part's ``(n_images, D)`` global features. With ``trainer.feature_cache`` they come
    from (and fill) the same cache the decoder then trains on, so the probe costs the run no
    extra backbone pass (the cache holds float16 features)."""
    names = ("train", "select", "test")
    if cfg.trainer.feature_cache:
        model = DEIQT.from_config(cfg.model)
        folder = cache_folder(cfg)
        out = {}
        for name in names:
            cache = FeatureCache.for_run(cfg, parts[name], settings, folder)
            cache.fill(model, eval_dataset(cfg, parts[name], settings), cfg.data.eval_batch_size,
                       cfg.data.num_workers, progress)
            out[name] = cache.load()[0].float().mean(1).numpy()
        return out
    backbone = Backbone.from_config(cfg.model)
    return {name: pooled_features(backbone, parts[name], cfg, settings) for name in names}


def frozen_probe(cfg: RunConfig, parts: dict[str, pd.DataFrame], settings,
                 progress: bool = False) -> dict:
    """Probe metrics on the selection and test parts, the chosen penalty and test predictions."""
    feats = part_features(cfg, parts, settings, progress)
    labels = {k: parts[k]["label"].to_numpy(float) for k in feats}
    predict, alpha = fit_ridge(feats["train"], labels["train"], feats["select"], labels["select"])
    pred = {k: predict(feats[k]) for k in ("select", "test")}
    return {"alpha": alpha, "val": evaluate(pred["select"], labels["select"]),
            "test": evaluate(pred["test"], labels["test"]), "test_predictions": pred["test"]}
