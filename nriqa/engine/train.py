"""Train one model on one split: fit, select the best epoch, test it, export it.

Selection follows the protocol: ``honest`` selects the epoch with the best PLCC on a validation part
carved out of the training part; ``paper`` selects on the test part, as DEIQT does (optimistic, and
labelled so in every result).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from nriqa.config import RunConfig, save_config
from nriqa.data.splits import Split
from nriqa.engine.checks import (
    check_resumable,
    check_trainer_settings,
    default_precision,
    quiet_lightning,
)
from nriqa.engine.data import DataSettings, IQADataModule, resolve_data_settings, subset
from nriqa.engine.frozen import fit_frozen
from nriqa.engine.module import SELECT, IQAModule
from nriqa.engine.results import FitResult, predict_metrics, run_results, write_predictions
from nriqa.errors import ConfigError
from nriqa.inference.model_files import complete_meta, inference_meta, read_checkpoint, save_model
from nriqa.io import atomic_write, atomic_write_json
from nriqa.methods import prepare_methods

log = logging.getLogger(__name__)
__all__ = ["FitResult", "check_resumable", "check_trainer_settings", "choose_export",
           "compute_summary", "default_precision", "fit", "fit_parts", "predict_metrics",
           "quiet_lightning", "run_results", "split_parts"]


def split_parts(table: pd.DataFrame, split: Split, protocol: str) -> dict[str, pd.DataFrame]:
    """Train / selection / test tables. The paper protocol selects on the test part."""
    parts = {"train": subset(table, split.train), "test": subset(table, split.test)}
    if protocol == "paper":
        parts["select"] = parts["test"]
    else:
        if len(split.val) == 0:
            raise ConfigError("split.protocol=honest needs a validation part: split.ratios with val > 0")
        parts["select"] = subset(table, split.val)
    for name, part in parts.items():
        if len(part) < 3:
            raise ConfigError(f"the {name} part has {len(part)} image(s); correlations need at least 3")
    return parts


def method_context(cfg: RunConfig, parts: dict, out_dir: Path, settings: DataSettings) -> dict:
    """Run facts every method may read, and what each method prepared for itself
    (:meth:`~nriqa.methods.base.Method.prepare`: QFM-IQM's teacher, fitted here by
    :func:`fit_parts` when it has to be)."""
    context = {"train_table": parts["train"], "train_size": len(parts["train"]), "settings": settings}
    return context | prepare_methods(cfg, parts, out_dir, settings, fit_parts)


def compute_summary(own: dict[str, int], teacher: dict | str | None) -> dict:
    """``results.json``'s ``compute``: training passes through the backbone, in crops.

    ``forward_crops`` / ``backward_crops`` are the totals *including* the training of a teacher
    this run distilled from (its own ``compute`` totals); ``own`` is this run alone (student
    forward and backward, teacher forward, saliency and warm-fill passes); ``val_forward_crops``
    (the selection's passes) is reported beside and left out of the totals. A teacher whose
    compute was not recorded is marked ``teacher: "unknown"``."""
    out = {"forward_crops": own["forward_crops"], "backward_crops": own["backward_crops"],
           "val_forward_crops": own.get("val_forward_crops", 0), "own": dict(own)}
    if teacher is not None:
        if isinstance(teacher, dict) and "forward_crops" in teacher:
            out["forward_crops"] += int(teacher["forward_crops"])
            out["backward_crops"] += int(teacher["backward_crops"])
            out["teacher"] = {k: teacher[k] for k in ("forward_crops", "backward_crops")}
        else:
            out["teacher"] = "unknown"
    return out


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint files through nriqa's atomic writer (a kill mid-save leaves the
    previous ``last.ckpt`` whole) and read back without running code (``weights_only``)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        ckpt = read_checkpoint(path)
        return ckpt if map_location in (None, "cpu") else \
            apply_to_collection(ckpt, torch.Tensor, lambda t: t.to(map_location))


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSV logger, except that a resumed run appends to the old ``metrics.csv``
    (Lightning deletes it) after dropping the rows logged after the checkpoint it resumes from."""

    def __init__(self, *args, keep_until_epoch: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._keep_until_epoch = keep_until_epoch

    @property
    def experiment(self):
        if self._keep_until_epoch is not None:
            epoch, self._keep_until_epoch = self._keep_until_epoch, None  # once
            path = Path(self.log_dir) / "metrics.csv"
            kept = _metrics_until(path, epoch)
            writer = super().experiment  # Lightning's writer deletes metrics.csv here
            if kept is not None and hasattr(writer, "metrics_keys"):  # rank 0 only
                atomic_write(path, lambda tmp: kept.to_csv(tmp, index=False))
                writer.metrics_keys = sorted(kept.columns)
        return super().experiment


def _metrics_until(path: Path, epoch: int) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        rows = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as err:
        log.warning("%s: cannot read the old metrics (%s); starting a new file", path, err)
        return None
    if "epoch" not in rows:
        return rows
    return rows[rows["epoch"].isna() | (rows["epoch"] <= epoch)]


def build_trainer(cfg: RunConfig, out_dir: Path, callbacks: list, max_epochs: int | None = None,
                  resume_epoch: int | None = None) -> L.Trainer:
    """``resume_epoch``: the last finished epoch of the checkpoint a run resumes from."""
    quiet_lightning()
    t = cfg.trainer
    if t.progress_bar:
        callbacks = [*callbacks, TQDMProgressBar(refresh_rate=max(t.log_every_n_steps, 1))]
    return L.Trainer(
        max_epochs=max_epochs or cfg.optim.epochs,
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=default_precision(cfg),
        gradient_clip_val=cfg.optim.grad_clip, gradient_clip_algorithm="norm",
        logger=[ResumableCSVLogger(out_dir, name="logs", version="", keep_until_epoch=resume_epoch),
                TensorBoardLogger(out_dir, name="tensorboard", version="")],
        plugins=[AtomicCheckpointIO()],
        callbacks=callbacks, default_root_dir=out_dir, use_distributed_sampler=False,
        num_sanity_val_steps=0, log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.progress_bar, enable_model_summary=False,
        limit_train_batches=t.limit_train_batches, deterministic=t.deterministic,
    )


def fit_parts(cfg: RunConfig, parts: dict[str, pd.DataFrame], out_dir: str | Path,
              split: Split | None = None, callbacks: tuple = ()) -> FitResult:
    out_dir = Path(out_dir)
    if cfg.trainer.feature_cache:
        return fit_frozen(cfg, parts, out_dir, split, callbacks)
    if cfg.optim.ema_decay is not None:
        raise ConfigError("optim.ema_decay is supported with trainer.feature_cache=true only "
                          "(the cached-feature head trainer); unset it for this run")
    check_trainer_settings(cfg)
    last = out_dir / "checkpoints" / "last.ckpt"
    resume = cfg.trainer.resume and last.is_file()
    if cfg.trainer.resume and not resume:
        log.warning("resume requested but %s does not exist: starting from scratch", last)
    resume_epoch = None
    if resume:
        check_resumable(cfg, out_dir / "config.yaml")
        resume_epoch = int(read_checkpoint(last).get("epoch", 0))  # a damaged file is named here
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    settings = resolve_data_settings(cfg)
    context = method_context(cfg, parts, out_dir, settings)  # may fit a teacher first
    # Seed after the context, so the student starts the same whether its teacher was fitted now
    # or found in a shared teacher folder.
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    module = IQAModule(cfg, context=context)
    module.meta = complete_meta(module.model, inference_meta(cfg, settings))
    data = IQADataModule(cfg, parts["train"], parts["select"], parts["test"],
                         module.crops_per_image, module.needs_full_image, settings)
    ckpt_dir = out_dir / "checkpoints"
    select = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=f"{SELECT}/plcc", mode="max",
                             save_top_k=1, enable_version_counter=False)
    # Lightning's save_last writes only when ``select`` saves (on improvement): a checkpoint
    # of its own writes last.ckpt at the end of every epoch.
    latest = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                             enable_version_counter=False)
    trainer = build_trainer(cfg, out_dir, [select, latest, *callbacks], resume_epoch=resume_epoch)
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None, weights_only=True)

    # Test the last epoch, then the selected one.
    trainer.test(module, datamodule=data, verbose=False)
    test_last = module.last_eval.get("test", {}).get("metrics")
    best_path = select.best_model_path or str(last)
    best = read_checkpoint(best_path)
    module.load_state_dict(best["state_dict"])
    exported = choose_export(module, parts["select"], cfg, settings, trainer.strategy.root_device)
    trainer.test(module, datamodule=data, verbose=False)
    test = module.last_eval.get("test", {})
    compute = compute_summary(module.compute_counts(), context.get("teacher_compute"))
    results = run_results(
        cfg, parts, split, selected_epoch=int(best.get("epoch", -1)),
        select_plcc=float(select.best_model_score) if select.best_model_score is not None else None,
        test=test.get("metrics"), test_last_epoch=test_last, exported=exported, compute=compute)
    model_path = out_dir / "model.safetensors"
    if trainer.is_global_zero:
        save_model(module.model, module.meta, model_path)
        atomic_write_json(out_dir / "results.json", results)
        if "predictions" in test:
            write_predictions(out_dir / "test_predictions.csv", parts["test"], test["predictions"])
    trainer.strategy.barrier("nriqa-export")  # every rank may read the exported files after this
    return FitResult(out_dir, model_path, results)


def choose_export(module: IQAModule, select: pd.DataFrame, cfg: RunConfig, settings,
                  device: torch.device | str = "cpu") -> str:
    """Put the network to export into ``module.model`` (so the test scores what is exported).

    A method may offer candidates (LML-IQA with ``infer_with=best``: student or EMA teacher), which
    are compared by PLCC on the selection part; otherwise a method may name its export directly
    (``infer_with=teacher``). Returns the exported network's name."""
    name = "student"
    for method in module.methods:
        candidates = method.export_candidates(module.model)
        if len(candidates) > 1:
            plcc = {n: predict_metrics(net.to(device), select, cfg, settings)["plcc"]
                    for n, net in candidates.items()}
            method.select_network(max(plcc, key=plcc.get))
            log.info("export candidates on the selection part (PLCC): %s", plcc)
        export = method.export_model(module.model)
        if export is not module.model:
            module.model.load_state_dict(export.state_dict())
            name = f"{method.name} teacher"
    return name


def fit(cfg: RunConfig, table: pd.DataFrame, split: Split, out_dir: str | Path,
        callbacks: tuple = ()) -> FitResult:
    """Fit on ``split`` of ``table`` and write config, checkpoints, logs, results and the model.
    ``callbacks`` are extra Lightning callbacks (e.g. a timer)."""
    return fit_parts(cfg, split_parts(table, split, cfg.split.protocol), out_dir, split, callbacks)
