"""``nriqa train``: one split: fit, select the epoch, test, export the model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nriqa.cli.common import add_config_arguments, run_config

HELP = "fit on one split, select, test, export"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from nriqa.engine.train import check_trainer_settings, fit  # noqa: PLC0415 - start-up time
    from nriqa.protocol.runner import (  # noqa: PLC0415 - start-up time (torch)
        dataset_root,
        load_table,
        split_for,
    )

    cfg = run_config(args)
    check_trainer_settings(cfg)  # before split.json is written
    table = load_table(cfg.data)
    split = split_for(cfg, table, cfg.split.index)
    out = Path(cfg.trainer.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    split.to_json(out / "split.json", table, dataset_root(cfg.data, table))
    result = fit(cfg, table, split, out)
    print(json.dumps({"model": str(result.model_path), "test": result.results["test"],
                      "protocol": result.results["protocol"]}, indent=2))
    return 0
