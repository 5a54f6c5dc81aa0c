"""The Lightning data module: a label table and a split, turned into loaders.

Loaders are built lazily inside each process (after the distributed group exists) so that the
samplers know their rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from nriqa.config import RunConfig
from nriqa.data.dataset import IQADataset
from nriqa.data.policy import CropPolicy
from nriqa.engine.sampling import EpochKeyed, EvalSampler, TrainSampler, dist_info


@dataclass(frozen=True)
class DataSettings:
    """What the loaders need beyond the config: the dataset's defaults resolved."""

    patch_num: int
    test_patch_num: int
    resize: str


def resolve_data_settings(cfg: RunConfig) -> DataSettings:
    from nriqa.data.registry import get_spec

    spec = get_spec(cfg.data.dataset)
    patch = cfg.data.patch_num or spec.patch_num
    return DataSettings(patch, cfg.data.test_patch_num or patch, cfg.data.resize or spec.resize)


def subset(table: pd.DataFrame, rows) -> pd.DataFrame:
    return table.iloc[np.asarray(rows, dtype=int)].reset_index(drop=True)


def eval_dataset(cfg: RunConfig, table: pd.DataFrame, settings: DataSettings) -> IQADataset:
    return IQADataset(table, train=False, policy=CropPolicy.from_config(cfg, settings),
                      seed=cfg.trainer.seed)


def eval_loader(cfg: RunConfig, dataset, rank: int | None = None, world: int | None = None) -> DataLoader:
    return DataLoader(dataset, batch_size=cfg.data.eval_batch_size,
                      sampler=EvalSampler(len(dataset), rank, world),
                      num_workers=cfg.data.num_workers, persistent_workers=False)


class IQADataModule(L.LightningDataModule):
    def __init__(self, cfg: RunConfig, train: pd.DataFrame | None = None,
                 val: pd.DataFrame | None = None, test: pd.DataFrame | None = None,
                 crops_per_image: int = 1, needs_full_image: bool = False,
                 settings: DataSettings | None = None):
        super().__init__()
        self.cfg = cfg
        self.tables = {"train": train, "val": val, "test": test}
        self.crops_per_image = crops_per_image
        self.needs_full_image = needs_full_image
        self.settings = settings or resolve_data_settings(cfg)

    @property
    def repeats(self) -> int:
        """Per-epoch visits of each training image: PATCH_NUM crops in all, K at a time."""
        return math.ceil(self.settings.patch_num / self.crops_per_image)

    def train_dataset(self) -> IQADataset:
        d = self.cfg.data
        return IQADataset(self.tables["train"], train=True,
                          policy=CropPolicy.from_config(self.cfg, self.settings),
                          repeats=self.repeats, crops_per_item=self.crops_per_image,
                          seed=self.cfg.trainer.seed, hflip=d.hflip,
                          return_full=self.needs_full_image, full_size=d.crop_size)

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        rank, world = dist_info()
        sampler = TrainSampler(len(dataset), self.cfg.trainer.seed, rank, world)
        # Lightning fetches the first batch before its own set_epoch runs: a resumed run must
        # draw that batch from the epoch it resumes at (restored before the loaders are built).
        sampler.set_epoch(self._epoch_to_run())
        return DataLoader(EpochKeyed(dataset), batch_size=self.cfg.data.batch_size,
                          sampler=sampler,
                          num_workers=self.cfg.data.num_workers, drop_last=False,
                          persistent_workers=self.cfg.data.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def _epoch_to_run(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.fit_loop.epoch_progress.current.processed) if trainer is not None else 0

    def _eval(self, part: str):
        table = self.tables[part]
        if table is None or table.empty:
            return []
        return eval_loader(self.cfg, eval_dataset(self.cfg, table, self.settings))

    def val_dataloader(self):
        return self._eval("val")

    def test_dataloader(self):
        return self._eval("test")
