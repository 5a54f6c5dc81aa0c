"""Small builders shared by tests: tiny images, tiny label tables, tiny configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from nriqa.config import load_config
from nriqa.data.table import Scale, make_table

TINY_MODEL = [
    "model.backbone=vit_tiny_patch16_224",
    "model.weights=none",
    "model.img_size=32",
    "model.width=64",
    "model.heads=2",
    "model.queries=3",
    "model.backbone_kwargs={depth: 2, embed_dim: 64, num_heads: 2}",
]


def tiny_images(folder: Path, n_groups: int = 6, per_group: int = 4, size: int = 48, seed: int = 0):
    """Textured images in ``n_groups`` contents x ``per_group`` blur levels; label = sharpness."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths, scores, groups = [], [], []
    for g in range(n_groups):
        base = Image.fromarray(rng.integers(0, 256, (size, size + 8 * g, 3), dtype=np.uint8))
        for level in range(per_group):
            img = base.filter(ImageFilter.GaussianBlur(radius=level * 1.2))
            path = folder / f"g{g}_l{level}.png"
            img.save(path)
            paths.append(path)
            scores.append(1.0 - level / per_group)
            groups.append(f"g{g}")
    return make_table(paths, scores, Scale(0, 1, True), groups=groups, source=str(folder))


def tiny_config(tmp_path: Path, *extra: str):
    return load_config(None, [
        *TINY_MODEL,
        "data.dataset=csv",
        "data.crop_size=32",
        "data.patch_num=2",
        "data.test_patch_num=2",
        "data.resize=none",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        "data.num_workers=0",
        "optim.epochs=2",
        "optim.warmup_epochs=0.5",
        "optim.decay_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1",
        f"trainer.output_dir={tmp_path / 'run'}",
        *extra,
    ])


def tiny_model_file(path: Path, seed: int = 0, patch_num: int = 3,
                    overrides: tuple[str, ...] = ()) -> Path:
    """A random tiny DEIQT saved as an nriqa ``.safetensors`` model (32 px crops)."""
    import torch

    from nriqa.inference.model_files import save_model
    from nriqa.models import DEIQT

    torch.manual_seed(seed)
    cfg = load_config(None, [*TINY_MODEL, *overrides])
    meta = {"format": "nriqa-deiqt-v1", "model": cfg.model.model_dump(mode="json"),
            "crop_size": 32, "test_patch_num": patch_num, "test_crops": "grid", "resize": "none",
            "small_image": "upscale"}
    return save_model(DEIQT.from_config(cfg.model), meta, path)


def photo_folder(folder: Path, n: int = 7, seed: int = 0) -> list[Path]:
    """``n`` small textured photos of varied sizes (some smaller than a 32 px crop)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = int(rng.integers(24, 80)), int(rng.integers(24, 80))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        paths.append(folder / f"p{i:02d}.png")
        img.filter(ImageFilter.GaussianBlur(radius=float(i % 3))).save(paths[-1])
    return paths
