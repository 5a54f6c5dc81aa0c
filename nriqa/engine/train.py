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
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from nriqa.config import RunConfig, save_config
from nriqa.data.splits import Split
from nriqa.engine.data import DataSettings, IQADataModule, resolve_data_settings, subset
from nriqa.engine.module import IQAModule
from nriqa.errors import ConfigError
from nriqa.io import atomic_write_json
from nriqa.outputs.checkpoint import inference_meta, load_model, save_model

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


def build_trainer(cfg: RunConfig, out_dir: Path, callbacks: list, max_epochs: int | None = None) -> L.Trainer:
    quiet_lightning()
    t = cfg.trainer
    if t.progress_bar:
        callbacks = [*callbacks, TQDMProgressBar(refresh_rate=max(t.log_every_n_steps, 1))]
    return L.Trainer(
        max_epochs=max_epochs or cfg.optim.epochs,
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=default_precision(cfg),
        gradient_clip_val=cfg.optim.grad_clip, gradient_clip_algorithm="norm",
        logger=[CSVLogger(out_dir, name="logs", version=""),
                TensorBoardLogger(out_dir, name="tensorboard", version="")],
        callbacks=callbacks, default_root_dir=out_dir, use_distributed_sampler=False,
        num_sanity_val_steps=0, log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.progress_bar, enable_model_summary=False,
        limit_train_batches=t.limit_train_batches, deterministic=t.deterministic,
    )


def fit_parts(cfg: RunConfig, parts: dict[str, pd.DataFrame], out_dir: str | Path,
              split: Split | None = None, callbacks: tuple = ()) -> FitResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    settings = resolve_data_settings(cfg)
    context = method_context(cfg, parts, out_dir, settings)  # may fit a teacher first
    # Seed after the context, so the student starts the same whether its teacher was fitted now
    # or found in a shared teacher folder.
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    module = IQAModule(cfg, context=context)
    module.meta = inference_meta(cfg, settings)
    data = IQADataModule(cfg, parts["train"], parts["select"], parts["test"],
                         module.crops_per_image, module.needs_full_image, settings)
    ckpt_dir = out_dir / "checkpoints"
    select = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/plcc", mode="max",
                             save_top_k=1, save_last=True, enable_version_counter=False)
    trainer = build_trainer(cfg, out_dir, [select, *callbacks])
    last = ckpt_dir / "last.ckpt"
    resume = str(last) if cfg.trainer.resume and last.is_file() else None
    if cfg.trainer.resume and resume is None:
        log.warning("resume requested but %s does not exist: starting from scratch", last)
    trainer.fit(module, datamodule=data, ckpt_path=resume)

    # Test the last epoch, then the selected one.
    trainer.test(module, datamodule=data, verbose=False)
    test_last = module.last_eval.get("test", {}).get("metrics")
    best_path = select.best_model_path or str(last)
    best = torch.load(best_path, map_location="cpu", weights_only=False)
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
def predict_metrics(model, table: pd.DataFrame, cfg: RunConfig, settings) -> dict:
    """Metrics of ``model`` on ``table`` in this process (no trainer)."""
    from nriqa.engine.data import eval_dataset, eval_loader
    from nriqa.metrics import evaluate

    device = next(model.parameters()).device
    was = model.training
    model.eval()
    preds = [model.score_crops(b["image"].to(device)).float().cpu()
             for b in eval_loader(cfg, eval_dataset(cfg, table, settings), 0, 1)]
    model.train(was)
    return evaluate(torch.cat(preds).numpy(), table["label"].to_numpy())


def _write_predictions(path: Path, table: pd.DataFrame, arr) -> None:
    from nriqa.io import atomic_write

    rows = arr[:, 0].astype(int)
    frame = pd.DataFrame({"path": table["path"].to_numpy()[rows], "prediction": arr[:, 1],
                          "label": arr[:, 2], "score": table["score"].to_numpy()[rows]})
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def fit(cfg: RunConfig, table: pd.DataFrame, split: Split, out_dir: str | Path,
        callbacks: tuple = ()) -> FitResult:
    """Fit on ``split`` of ``table`` and write config, checkpoints, logs, results and the model.
    ``callbacks`` are extra Lightning callbacks (e.g. a timer)."""
    return fit_parts(cfg, split_parts(table, split, cfg.split.protocol), out_dir, split, callbacks)
