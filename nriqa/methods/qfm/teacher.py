"""QFM-IQM's frozen teacher: where it comes from, how checkpoints leave it out, and the memory
entries it pseudo-labels from unlabelled images."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from nriqa.config import MethodConfig
from nriqa.data.dataset import ImageListDataset
from nriqa.data.distributed import dist_info
from nriqa.data.policy import CropPolicy
from nriqa.errors import ConfigError
from nriqa.inference.model_files import load_model
from nriqa.inference.scoring import find_images
from nriqa.io import fingerprint
from nriqa.methods.qfm.memory import SOURCE_PSEUDO, Entries

log = logging.getLogger(__name__)


def prepare_teacher(cfg, parts: dict, out_dir: Path, fit_fn: Callable) -> dict:
    """The method context's ``teacher`` (a frozen DEIQT) and ``teacher_compute``: a named
    checkpoint, or a DEIQT baseline fitted by ``fit_fn`` on the same training part (never on the
    test part) and selected the same way; shared between runs under ``teacher_dir``."""
    q = cfg.method.qfm
    if q.teacher_checkpoint:
        path = Path(q.teacher_checkpoint)
    else:
        teacher_cfg = cfg.model_copy(deep=True)
        teacher_cfg.method = MethodConfig()
        folder = Path(q.teacher_dir) / teacher_key(teacher_cfg, parts) if q.teacher_dir \
            else out_dir / "teacher"
        teacher_cfg.trainer.output_dir = str(folder)
        path = folder / "model.safetensors"
        if not path.is_file():
            fit_fn(teacher_cfg, parts, folder)
    return {"teacher": load_model(path)[0], "teacher_compute": recorded_compute(path) or "unknown"}


def recorded_compute(model_path: Path) -> dict | None:
    """The training compute recorded beside a model (its run's results.json), if any."""
    try:
        return json.loads((model_path.parent / "results.json").read_text()).get("compute")
    except (OSError, ValueError):
        return None


def teacher_key(cfg, parts: dict) -> str:
    """Same training and selection images and same settings -> the same teacher."""
    return fingerprint({
        "data": cfg.data.model_dump(mode="json"), "model": cfg.model.model_dump(mode="json"),
        "optim": cfg.optim.model_dump(mode="json"), "seed": cfg.trainer.seed,
        "protocol": cfg.split.protocol,
        "parts": {k: sorted(map(str, parts[k]["path"])) for k in ("train", "select")}})


def drop_teacher_state(module, state_dict, prefix, local_metadata) -> None:
    """Checkpoints leave the frozen teacher out: it is rebuilt from the method context."""
    for key in [k for k in state_dict if k.startswith(prefix + "teacher.")]:
        del state_dict[key]


def keep_teacher_state(module, state_dict, prefix, local_metadata, strict, missing_keys,
                       unexpected_keys, error_msgs) -> None:
    """Loading a checkpoint (which has no teacher) keeps the current teacher's weights."""
    if module.teacher is None:
        return
    for key, value in module.teacher.state_dict().items():
        state_dict.setdefault(prefix + "teacher." + key, value)


@torch.no_grad()
def pseudo_label(teacher: nn.Module, folder: str, data_cfg, resize, dtype: torch.dtype,
                 device, forward_context: Callable, count: Callable) -> Entries:
    """Teacher features and scores of one deterministic (centre) crop of each unlabelled image
    under ``folder``; this rank's share, kept on the CPU (features in ``dtype``). Each image is its
    own content group, disjoint from the training groups (>= 0)."""
    paths = find_images([folder], recursive=True)
    if not paths:
        raise ConfigError(f"{folder}: no images to pseudo-label (method.qfm.pseudo_label_dir)")
    rank, world = dist_info()
    positions = list(range(rank, len(paths), world))
    d = data_cfg
    policy = CropPolicy(d.crop_size, 1, "grid", resize, d.small_image)
    dataset = ImageListDataset([paths[i] for i in positions], policy)
    out = {k: [] for k in ("c", "tokens", "labels", "groups", "index")}
    bad = 0
    for batch in DataLoader(dataset, batch_size=d.batch_size, num_workers=d.num_workers):
        ok = torch.tensor([not e for e in batch["error"]], dtype=torch.bool)
        bad += int((~ok).sum())
        if not ok.any():
            continue
        x = batch["image"][ok].flatten(0, 1).to(device)
        with forward_context():
            c, tokens = teacher.features(x)
            score = teacher.head(c, tokens).score
        count(forward_crops=len(x))
        pos = torch.tensor(positions)[batch["index"][ok]]
        out["c"].append(c.to("cpu", dtype))
        out["tokens"].append(tokens.to("cpu", dtype))
        out["labels"].append(score.float().cpu())
        out["groups"].append(-1 - pos)
        out["index"].append(-1 - pos)
    if bad:
        log.warning("QFM-IQM pseudo-labelling: %d unreadable file(s) under %s skipped", bad, folder)
    if not out["c"]:  # nothing on this rank: an empty bank of the right shape (DDP gathers it)
        probe = torch.zeros(1, 3, d.crop_size, d.crop_size, dtype=torch.uint8, device=device)
        _, tokens = teacher.features(probe)
        n_tokens, width = tokens.shape[1:]
        return Entries(torch.zeros(0, width), torch.zeros(0, n_tokens, width), torch.zeros(0),
                       torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                       torch.zeros(0, dtype=torch.long))
    bank = {k: torch.cat(v) for k, v in out.items()}
    log.info("QFM-IQM pseudo-labelled %d image(s) on rank %d", len(bank["labels"]), rank)
    source = torch.full_like(bank["index"], SOURCE_PSEUDO)
    return Entries(bank["c"], bank["tokens"], bank["labels"], bank["groups"], source, bank["index"])
