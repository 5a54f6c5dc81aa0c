"""Checks a run makes before it writes anything: its methods and trainer settings can run here,
and a resumed run continues the saved one."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
import torch

from nriqa.config import RunConfig, load_config
from nriqa.errors import ConfigError
from nriqa.methods import check_methods


def default_precision(cfg: RunConfig) -> str:
    if cfg.trainer.precision:
        return cfg.trainer.precision
    if cfg.trainer.accelerator != "cpu" and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def quiet_lightning() -> None:
    """Keep Lightning's advertising tips and a deprecation it triggers in itself out of our output."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def check_trainer_settings(cfg: RunConfig) -> None:
    """Fail, naming the options, before a run writes anything when it cannot run: a method that
    is not registered (or its settings wrong), or trainer settings this machine cannot run
    (``trainer.accelerator=tpu`` without a TPU, more devices than it has, ...)."""
    check_methods(cfg)
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


# Settings a resumed run may change: how it runs, not what it computes (and epochs, to extend it).
RESUME_MAY_CHANGE = ("trainer.resume", "trainer.progress_bar", "trainer.log_every_n_steps",
                     "trainer.output_dir", "data.num_workers", "data.eval_batch_size",
                     "optim.epochs")


def check_resumable(cfg: RunConfig, saved: Path) -> None:
    """A resume continues the saved run: any other difference from its config.yaml is an error
    naming the settings (before anything in the run folder is written)."""
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
