"""The ``nriqa`` command as a whole: every verb in ``--help``, a start-up without torch, one
KEY=VALUE parser, one device check, ``nriqa recipes`` with what each recipe is for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nriqa.cli import VERBS, main
from nriqa.cli.analyze import ANALYSES
from nriqa.config import list_recipes, recipe_summary
from nriqa.errors import NriqaError
from nriqa.inference.device import resolve_device

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "lightning", "pandas", "matplotlib", "sklearn")


def flat(text: str) -> str:
    return " ".join(text.split())


def help_text(capsys, monkeypatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "200")  # no wrapping inside a description
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return flat(capsys.readouterr().out)


def test_every_verb_has_the_interface_and_is_in_the_help_with_its_line(capsys, monkeypatch):
    assert {"demo", "datasets", "train", "protocol", "evaluate", "score", "models", "export",
            "recipes", "analyze", "ablate"} <= set(VERBS)
    out = help_text(capsys, monkeypatch)
    assert "``" not in out  # no raw docstring markup
    for name, module in VERBS.items():
        assert isinstance(module.HELP, str) and "\n" not in module.HELP
        assert callable(module.add_arguments) and callable(module.run)
        assert f"{name} {flat(module.HELP)}" in out, name
    out = help_text(capsys, monkeypatch, "analyze")
    assert set(ANALYSES) == {"semantic-noise", "saliency", "embeddings", "run"}
    for name, module in ANALYSES.items():
        assert f"{name} {flat(module.HELP)}" in out, name


def test_start_up_imports_no_torch():
    code = ("import sys\nfrom nriqa.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip().splitlines()[-1] == "[]"
    module = subprocess.run([sys.executable, "-m", "nriqa.cli", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert module.returncode == 0 and "ablate" in module.stdout and "analyze" in module.stdout


def test_recipes_says_what_each_is_for(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(list_recipes())
    for name, line in zip(list_recipes(), lines):
        summary = recipe_summary(name)
        assert summary, f"{name}: no leading comment"
        assert line.split() == [name, *summary.split()]


def test_recipe_summary_is_the_first_sentence_of_the_leading_comment(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("\n# DEIQT (Qin et al., AAAI 2023) on\n#   my photos: data.root=/x.\n"
                      "# Second sentence. Third.\nname: mine  # not part of it\n# nor this\n")
    assert recipe_summary(str(recipe)) == (
        "DEIQT (Qin et al., AAAI 2023) on my photos: data.root=/x.")
    bare = tmp_path / "bare.yaml"
    bare.write_text("name: bare\n# a comment after the start is no summary\n")
    assert recipe_summary(str(bare)) == ""


def _capture(monkeypatch, target: str):
    """Replace ``target`` (module:function) by one that records its keyword arguments."""
    module, name = target.split(":")
    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        raise NriqaError("stopped here by the test")

    monkeypatch.setattr(f"{module}.{name}", record)
    return seen


@pytest.mark.parametrize("argv, target", [
    (["evaluate", "--dataset", "csv", "-o"], "nriqa.data.registry:load_labels"),
    (["datasets", "check", "csv", "/nowhere", "-o"], "nriqa.data.check:check_dataset"),
    (["analyze", "semantic-noise", "--dataset", "csv", "--backbone", "resnet10t", "--option"],
     "nriqa.data.registry:load_labels"),
])
def test_key_value_options_are_parsed_like_config_overrides(argv, target, monkeypatch, capsys):
    seen = _capture(monkeypatch, target)
    flag = argv.pop()
    assert main([*argv, flag, "low=1e-4", flag, "high=100", flag, "score-column=mos",
                 flag, "higher_better=false"]) == 2
    assert "stopped here by the test" in capsys.readouterr().err
    options = {k: seen[k] for k in ("low", "high", "score_column", "higher_better")}
    assert options == {"low": 1e-4, "high": 100, "score_column": "mos", "higher_better": False}
    assert isinstance(options["low"], float)  # YAML 1.1 alone would give the string "1e-4"


def test_a_malformed_key_value_option_names_the_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--dataset", "csv", "-o", "novalue"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "-o/--option" in err and "'novalue' is not KEY=VALUE" in err


def test_config_overrides_reach_the_recipe(monkeypatch, capsys):
    seen = {}

    def run_protocol(cfg):
        seen["cfg"] = cfg
        raise NriqaError("stopped here by the test")

    monkeypatch.setattr("nriqa.protocol.runner.run_protocol", run_protocol)
    assert main(["protocol", "-c", "cpu_demo", "optim.lr=1e-4", "--resume"]) == 2
    assert seen["cfg"].optim.lr == 1e-4 and seen["cfg"].trainer.resume is True
    assert main(["train", "-c", "cpu_demo", "optim.lr"]) == 2
    assert "'optim.lr' is not key=value" in capsys.readouterr().err


def test_one_device_check_for_every_verb(tmp_path, capsys):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    for name, problem in [("gpu", "not a device"), ("meta", "not supported")]:
        with pytest.raises(NriqaError, match=f"^device {name}: {problem}"):
            resolve_device(name)
    absent = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, or no GPU at all
    with pytest.raises(NriqaError, match=f"^--device {absent}: "):
        resolve_device(absent, "--device")
    image = tmp_path / "a.png"
    for argv in (["score", str(image)], ["evaluate", "--dataset", "csv"],
                 ["analyze", "saliency", str(image), "--checkpoint", str(tmp_path / "m.ckpt")],
                 ["analyze", "semantic-noise", "--dataset", "csv", "--backbone", "resnet10t"]):
        assert main([*argv, "--device", "gpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("nriqa: error: --device gpu: not a device"), (argv, err)


def test_saliency_kinds_are_named_in_the_help_and_checked(tmp_path, capsys, monkeypatch):
    from nriqa.reports.saliency import SALIENCY_KINDS

    out = help_text(capsys, monkeypatch, "analyze", "saliency")
    assert all(kind in out for kind in SALIENCY_KINDS)
    assert main(["analyze", "saliency", "x.png", "--checkpoint", "m.ckpt", "--saliency",
                 "sharp"]) == 2
    err = capsys.readouterr().err
    assert "--saliency sharp: unknown" in err and all(kind in err for kind in SALIENCY_KINDS)


def test_ablate_lists_variants_and_names_an_unknown_method(capsys):
    assert main(["ablate", "qfm", "--list"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows and all(len(r.split()) >= 2 for r in rows)
    assert main(["ablate", "nosuch", "--list"]) == 2
    assert "nosuch" in capsys.readouterr().err


def test_analyze_run_json_through_the_cli(tmp_path, capsys):
    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    (logs / "metrics.csv").write_text("epoch,step,train/loss_epoch,val/srcc\n0,9,0.5,\n0,9,,0.7\n")
    assert main(["analyze", "run", str(tmp_path / "run"), "--json", str(tmp_path / "r.json")]) == 0
    assert "| loss | 0.5 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())[0]["epochs"]["loss"]["epoch 0"] == 0.5
