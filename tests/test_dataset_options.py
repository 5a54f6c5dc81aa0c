"""Loader options are declared per dataset (its readers' typed keyword arguments) and checked up
front: a misspelt or mistyped option is a named error, through the API, configs and the CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nriqa.cli import main
from nriqa.config import load_config
from nriqa.data import synthetic
from nriqa.data.registry import DATASETS, check_options, get_spec, load_labels
from nriqa.errors import ConfigError


@pytest.fixture()
def csv_root(tmp_path):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text("path,score\na.png,0.2\nb.png,0.9\n")
    return tmp_path


def test_valid_options_load_as_before(csv_root):
    table = load_labels("csv", csv_root, low=0, high=1, higher_better="lower")
    assert len(table) == 2 and table["label"].tolist() == pytest.approx([0.8, 0.1])


def test_a_misspelt_option_names_the_dataset_the_option_and_the_allowed_ones(csv_root):
    with pytest.raises(ConfigError) as err:
        load_labels("csv", csv_root, lwo=0, high=1)
    text = str(err.value)
    assert "dataset 'csv'" in text and "'lwo'" in text and "did you mean 'low'?" in text
    assert "path_column" in text and "higher_better" in text


def test_options_are_checked_before_the_disk_is_searched(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'images'"):
        load_labels("koniq10k", tmp_path, image="512x384")  # no label file there either


@pytest.mark.parametrize(("option", "value", "why"), [
    ("low", "abc", "valid number"),
    ("higher_better", "maybe", "higher_better"),
    ("extra_columns", "dist_type", "extra_columns"),  # a list of names, not one string
])
def test_a_mistyped_option_is_a_named_error(csv_root, option, value, why):
    options = {"low": 0, "high": 1, option: value}
    with pytest.raises(ConfigError, match=why) as err:
        load_labels("csv", csv_root, **options)
    assert f"dataset 'csv': loader option {option}=" in str(err.value)


def test_an_option_of_another_layout_says_which_layout_takes_it(tmp_path):
    (tmp_path / "meta_info_KonIQ10kDataset.csv").write_text("img_name,mos\n")
    with pytest.raises(ConfigError, match="'score_column' applies to its official layout only"):
        load_labels("koniq10k", tmp_path, layout="pyiqa", score_column="MOS")
    assert check_options("koniq10k", {"score_column": "MOS"}) == {"score_column": "MOS"}


def test_every_dataset_declares_its_options():
    names = {name: spec.option_names for name, spec in DATASETS.items()}
    assert names["koniq10k"] == ["images", "score_column"]
    assert names["spaq"] == ["images"] and names["live"] == [] and names["embedded"] == ["distortions"]
    assert {"path_column", "low", "high", "higher_better"} <= set(names["csv"])
    with pytest.raises(ConfigError, match="dataset 'live' has no loader option 'images'; its "
                                          "options: none"):
        get_spec("live").check_options({"images": "x"})


def test_config_checks_loader_options():
    with pytest.raises(ConfigError, match=r"data: dataset 'csv' has no loader option 'lwo' "
                                          r"\(did you mean 'low'\?\)"):
        load_config(None, ["data.dataset=csv", "data.options.lwo=0"])
    with pytest.raises(ConfigError, match="loader option low='x'"):
        load_config(None, ["data.dataset=csv", "data.options.low=x"])
    with pytest.raises(ConfigError, match="applies to its official layout only"):
        load_config(None, ["data.dataset=koniq", "data.layout=pyiqa",
                           "data.options.score_column=MOS"])
    cfg = load_config(None, ["data.dataset=csv", "data.options.low=0", "data.options.high=1e-4"])
    assert cfg.data.options == {"low": 0, "high": 1e-4}


def test_cli_evaluate_reports_a_misspelt_option(csv_root, capsys):
    code = main(["evaluate", "--checkpoint", str(csv_root / "no-model.safetensors"), "--dataset",
                 "csv", "--root", str(csv_root), "-o", "low=0", "-o", "hihg=1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "dataset 'csv' has no loader option 'hihg' (did you mean 'high'?)" in err


def test_embedded_scale_is_the_builders_label_scale():
    assert get_spec("embedded").scale == synthetic.LABEL_SCALE


def test_the_embedded_builder_imports_no_dataset_module():
    """No registry <-> synthetic cycle: the builder sits below the dataset modules."""
    folder = Path(synthetic.__file__).parent
    imported = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert imported and not {m for m in imported
                             if m.startswith(("nriqa.data.registry", "nriqa.data.datasets"))}


def test_the_registry_does_not_import_the_builder():
    code = ("import sys; import nriqa.data.registry; "
            "assert 'nriqa.data.synthetic' not in sys.modules, 'the registry builds lazily'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_data_subpackages_ship():
    # setuptools' find (pyproject.toml) ships only regular packages: each needs an __init__.py.
    data = Path(synthetic.__file__).parents[1]
    for name in ("datasets", "parsing", "synthetic"):
        assert (data / name / "__init__.py").is_file(), name
