"""Train one model on one split: fit, select the best epoch, test it, export it.

Selection follows the protocol: ``honest`` selects the epoch with the best PLCC on a validation part
carved out of the training part; ``paper`` selects on the test part, as DEIQT does (optimistic, and
labelled so in every result).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
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
from nriqa.engine.data import DataSettings, IQADataModule, resolve_data_settings, subset
from nriqa.engine.module import IQAModule
from nriqa.errors import ConfigError
from nriqa.inference.model_files import (
    complete_meta,
    inference_meta,
    load_model,
    read_checkpoint,
    save_model,
)
from nriqa.io import atomic_write, atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    out_dir: Path
    model_path: Path  # the exported best model (.safetensors)
    results: dict  # what results.json holds


def default_precision(cfg: RunConfig) -> str:
    if cfg.trainer.precision:
        return cfg.trainer.precision
    if cfg.trainer.accelerator != "cpu" and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


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
    context = {"train_table": parts["train"], "train_size": len(parts["train"]), "settings": settings}
    if "qfm" in cfg.method.name and cfg.method.qfm.teacher:
        context["teacher"], context["teacher_compute"] = _teacher(cfg, parts, out_dir)
    return context


def _teacher(cfg: RunConfig, parts: dict, out_dir: Path):
    """QFM-IQM's frozen teacher: a named checkpoint, or a DEIQT baseline fitted on the same
    training part (never on the test part) and selected the same way."""
    q = cfg.method.qfm
    if q.teacher_checkpoint:
        return load_model(q.teacher_checkpoint)[0], _recorded_compute(Path(q.teacher_checkpoint))
    teacher_cfg = cfg.model_copy(deep=True)
    teacher_cfg.method = type(cfg.method)(name="deiqt")
    folder = Path(q.teacher_dir) / teacher_key(teacher_cfg, parts) if q.teacher_dir else out_dir / "teacher"
    teacher_cfg.trainer.output_dir = str(folder)
    path = folder / "model.safetensors"
    if not path.is_file():
        fit_parts(teacher_cfg, parts, folder)
    return load_model(path)[0], _recorded_compute(path)


def _recorded_compute(model_path: Path) -> dict | None:
    """The training compute recorded beside a model (its run's results.json), if any."""
    import json

    try:
        return json.loads((model_path.parent / "results.json").read_text()).get("compute")
    except (OSError, ValueError):
        return None


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


def teacher_key(cfg: RunConfig, parts: dict) -> str:
    """Same training and selection images and same settings -> the same teacher."""
    import hashlib
    import json

    facts = {"data": cfg.data.model_dump(mode="json"), "model": cfg.model.model_dump(mode="json"),
             "optim": cfg.optim.model_dump(mode="json"), "seed": cfg.trainer.seed,
             "protocol": cfg.split.protocol,
             "parts": {k: sorted(map(str, parts[k]["path"])) for k in ("train", "select")}}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def quiet_lightning() -> None:
    """Keep Lightning's advertising tips and a deprecation it triggers in itself out of our output."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def check_trainer_settings(cfg: RunConfig) -> None:
    """Fail, naming the options, before a run writes anything when this machine cannot run its
    trainer settings (``trainer.accelerator=tpu`` without a TPU, more devices than it has, ...)."""
    quiet_lightning()
    t = cfg.trainer
    try:
        L.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
                  strategy=t.strategy, precision=default_precision(cfg), logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    except Exception as err:  # noqa: BLE001 - Lightning's MisconfigurationException, ValueError ...
        text = " ".join(str(err).split())
        raise ConfigError(f"trainer.accelerator={t.accelerator!r}, trainer.devices={t.devices!r}, "
                          f"trainer.strategy={t.strategy!r}, trainer.precision="
                          f"{default_precision(cfg)!r}: {text[:300]}") from None


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
        from nriqa.engine.frozen import fit_frozen

        return fit_frozen(cfg, parts, out_dir, split)
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
    select = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/plcc", mode="max",
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
    teacher_compute = context.get("teacher_compute") or ("unknown" if "teacher" in context else None)
    compute = compute_summary(module.compute_counts(), teacher_compute)
    results = {
        "protocol": cfg.split.protocol,
        "selection": "best val PLCC" if cfg.split.protocol == "honest"
        else "best test PLCC (paper protocol: optimistic)",
        "selected_epoch": int(best.get("epoch", -1)),
        "select_plcc": float(select.best_model_score) if select.best_model_score is not None else None,
        "test": test.get("metrics"),
        "test_last_epoch": test_last,
        "exported": exported,
        "sizes": {k: len(v) for k, v in parts.items()},
        "method": cfg.method.name,
        "dataset": cfg.data.dataset,
        "compute": compute,
    }
    if split is not None:
        results["split"] = {"index": split.index, "seed": split.seed, "mode": split.mode,
                            "fraction": split.fraction}
    model_path = out_dir / "model.safetensors"
    if trainer.is_global_zero:
        save_model(module.model, module.meta, model_path)
        atomic_write_json(out_dir / "results.json", results)
        if "predictions" in test:
            _write_predictions(out_dir / "test_predictions.csv", parts["test"], test["predictions"])
    trainer.strategy.barrier("nriqa-export")  # every rank may read the exported files after this
    return FitResult(out_dir, model_path, results)


# Settings a resumed run may change: how it runs, not what it computes (and epochs, to extend it).
RESUME_MAY_CHANGE = ("trainer.resume", "trainer.progress_bar", "trainer.log_every_n_steps",
                     "trainer.output_dir", "data.num_workers", "data.eval_batch_size",
                     "optim.epochs")


def check_resumable(cfg: RunConfig, saved: Path) -> None:
    """A resume continues the saved run: any other difference from its config.yaml is an error
    naming the settings (before anything in the run folder is written)."""
    from nriqa.config import load_config

    if not saved.is_file():
        raise ConfigError(f"{saved}: cannot resume, the run's config.yaml is missing")
    old = _flat(load_config(saved).model_dump(mode="json"))
    new = _flat(cfg.model_dump(mode="json"))
    changed = [k for k in sorted(old.keys() | new.keys())
               if old.get(k) != new.get(k) and not k.startswith(RESUME_MAY_CHANGE)]
    if changed:
        shown = ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise ConfigError(f"{saved}: cannot resume with a different config: {shown}{more}; "
                          "resume with the saved settings or use a new trainer.output_dir")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


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


@torch.no_grad()
def predict_metrics(model, table: pd.DataFrame, cfg: RunConfig, settings,
                    return_predictions: bool = False) -> dict:
    """Metrics of ``model`` on ``table`` in this process (no trainer); with
    ``return_predictions`` also the scores, in table order, under ``"predictions"``."""
    from nriqa.engine.data import eval_dataset, eval_loader
    from nriqa.metrics import evaluate

    device = next(model.parameters()).device
    was = model.training
    model.eval()
    preds = [model.score_crops(b["image"].to(device)).float().cpu()
             for b in eval_loader(cfg, eval_dataset(cfg, table, settings), 0, 1)]
    model.train(was)
    scores = torch.cat(preds).numpy()
    metrics = evaluate(scores, table["label"].to_numpy())
    return {**metrics, "predictions": scores} if return_predictions else metrics


def _write_predictions(path: Path, table: pd.DataFrame, arr) -> None:
    rows = arr[:, 0].astype(int)
    frame = pd.DataFrame({"path": table["path"].to_numpy()[rows], "prediction": arr[:, 1],
                          "label": arr[:, 2], "score": table["score"].to_numpy()[rows]})
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def fit(cfg: RunConfig, table: pd.DataFrame, split: Split, out_dir: str | Path,
        callbacks: tuple = ()) -> FitResult:
    """Fit on ``split`` of ``table`` and write config, checkpoints, logs, results and the model.
    ``callbacks`` are extra Lightning callbacks (e.g. a timer)."""
    return fit_parts(cfg, split_parts(table, split, cfg.split.protocol), out_dir, split, callbacks)
