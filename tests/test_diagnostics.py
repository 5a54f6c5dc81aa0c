"""Training diagnostics (per-term gradients, clip rate), the compute count in results.json,
``nriqa analyze run``, and QFM-IQM's KD-only control."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config, tiny_images
from test_lml import lml_module, make_ctx
from test_qfm import _ctx, _module

from nriqa.cli import main
from nriqa.data.splits import Split
from nriqa.engine.diagnostics import diagnostic_groups, gradient_logs, total_grad_norm
from nriqa.engine.train import compute_summary, fit
from nriqa.methods.qfm import ABLATIONS


def test_per_term_gradient_norms_and_cosines_equal_a_direct_computation(tmp_path):
    module = lml_module(tmp_path, "method.lml.ramp_epochs=0", "method.lml.beta=0.3")
    loss, _, ctx = module.step_loss(make_ctx(module).batch)
    assert set(ctx.terms) == {"regression", "contrastive", "mutual"}
    assert torch.allclose(loss, sum(w * t for t, w in ctx.terms.values()))
    groups = diagnostic_groups(module.model, module.methods)
    assert set(groups) == {"decoder", "backbone", "projector"}
    logs = gradient_logs(ctx.terms, groups)

    direct = {}
    for name, (term, weight) in ctx.terms.items():
        module.zero_grad(set_to_none=True)
        for m in module.methods:
            m.projector.zero_grad(set_to_none=True)
        (weight * term).backward(retain_graph=True)
        direct[name] = {g: torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p))
                                      .reshape(-1) for p in ps]) for g, ps in groups.items()}
    for name in ctx.terms:
        assert logs[f"grad/weight/{name}"] == pytest.approx(ctx.terms[name][1])
        for g in groups:
            assert logs[f"grad/{g}/{name}"] == pytest.approx(float(direct[name][g].norm()),
                                                             rel=1e-4, abs=1e-9)
    a, b = direct["regression"]["decoder"], direct["contrastive"]["decoder"]
    assert logs["gradcos/decoder/regression|contrastive"] == pytest.approx(
        float(a @ b / (a.norm() * b.norm())), rel=1e-4)
    assert "gradcos/projector/regression|contrastive" not in logs  # no regression gradient there
    assert logs["grad/projector/regression"] == 0.0


def test_total_grad_norm_is_what_the_clip_measures():
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 1))
    net(torch.randn(3, 5)).sum().backward()
    mine = total_grad_norm(net.parameters())
    assert mine == pytest.approx(float(torch.nn.utils.clip_grad_norm_(net.parameters(), 1e9)))


@pytest.fixture(scope="module")
def diagnosed_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diag")
    table = tiny_images(tmp / "img", n_groups=6, per_group=4)
    cfg = tiny_config(tmp, "method.name=lml", "method.lml.ramp_epochs=0",
                      "diagnostics.grad_every=2", "optim.grad_clip=1e-6")
    split = Split(np.arange(16), np.arange(16, 20), np.arange(20, 24), mode="custom", seed=0,
                  dataset="csv")
    torch.manual_seed(0)
    return fit(cfg, table, split, tmp / "run")


def test_diagnostics_are_logged_every_n_steps_and_the_clip_rate_every_step(diagnosed_run):
    frame = pd.read_csv(diagnosed_run.out_dir / "logs" / "metrics.csv")
    diagnosed = frame.dropna(subset=["train/grad/decoder/contrastive"])
    assert sorted(diagnosed["step"].astype(int)) == [0, 2, 4, 6]  # 8 steps, every 2nd
    assert set(diagnosed["epoch"].astype(int)) == {0, 1}
    steps = frame.dropna(subset=["train/loss_step"])
    assert len(steps) == 8 and steps["train/grad/clipped_step"].notna().all()  # every step
    assert (frame["train/grad/clipped_epoch"].dropna() == 1.0).all()  # clip 1e-6 always acts
    assert (frame["train/grad/total_norm_epoch"].dropna() > 1e-6).all()


def test_results_record_the_training_compute(diagnosed_run):
    compute = json.loads((diagnosed_run.out_dir / "results.json").read_text())["compute"]
    # 16 training images, K = 4 crops, ceil(patch_num 2 / K) = 1 visit per epoch, 2 epochs
    crops = 16 * 4 * 2
    assert compute["backward_crops"] == crops
    # student + EMA teacher on every crop + the teacher's whole-image saliency pass per image
    assert compute["forward_crops"] == 2 * crops + 16 * 2
    assert compute["val_forward_crops"] == 4 * 2 * 2  # 4 images x 2 test crops x 2 epochs
    assert "teacher" not in compute


def test_compute_summary_adds_the_teachers_training():
    own = {"forward_crops": 10, "backward_crops": 4, "val_forward_crops": 2}
    total = compute_summary(own, {"forward_crops": 7, "backward_crops": 7})
    assert (total["forward_crops"], total["backward_crops"]) == (17, 11)
    assert total["own"] == own and total["teacher"] == {"forward_crops": 7, "backward_crops": 7}
    assert compute_summary(own, "unknown")["teacher"] == "unknown"
    assert compute_summary(own, None)["forward_crops"] == 10


def test_analyze_run_prints_the_tables(diagnosed_run, capsys):
    assert main(["analyze", "run", str(diagnosed_run.out_dir)]) == 0
    out = capsys.readouterr().out
    assert "| lml_pos_sim |" in out and "| lml_inter_sim |" in out and "| select/srcc |" in out
    assert "| 0 | decoder | contrastive |" in out and "| 1 | backbone | regression |" in out
    assert "| 0 | backbone | regression | " in out and "| 1 | 1 | 1 | 2 |" in out  # ratio, cos, weight, steps
    assert "clip_rate" in out and "| 0 | 1 |" in out
    # a folder of runs: one report per run found below it
    assert main(["analyze", "run", str(diagnosed_run.out_dir.parent)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [x for x in lines if x.startswith("## ")] == [f"## {diagnosed_run.out_dir}"]
    # the same numbers as JSON
    path = diagnosed_run.out_dir.parent / "report.json"
    assert main(["analyze", "run", str(diagnosed_run.out_dir), "--json", str(path)]) == 0
    (report,) = json.loads(path.read_text())
    rows = {(r["epoch"], r["group"], r["term"]): r for r in report["gradients"]}
    assert rows[(0, "decoder", "regression")]["ratio"] == 1.0 and rows[(0, "decoder", "contrastive")]["steps"] == 2
    assert [r["clip_rate"] for r in report["clip"]] == [1.0, 1.0]
    assert "lml_pos_sim" in report["epochs"]


def test_analyze_run_names_a_missing_folder(tmp_path, capsys):
    assert main(["analyze", "run", str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["analyze", "run", str(tmp_path / "empty")]) == 2
    assert "metrics.csv" in capsys.readouterr().err


# ------------------------------------------------------------------ QFM-IQM's KD-only control


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    return tiny_images(tmp_path_factory.mktemp("kd_imgs"))


def test_kd_only_control_has_no_noise_term_and_no_memory(tmp_path, tiny_table):
    module = _module(tmp_path, tiny_table, "method.qfm.matching=none", "method.qfm.lambda_kd=0.7",
                     "optim.loss_beta=0.5")
    method = module.methods[0]
    assert method.memory is None
    ctx = _ctx(module, [0.5, 0.52, 0.9], [0, 1, 2])
    calls = []
    module.model.decoder.register_forward_hook(lambda *a: calls.append(1))
    loss, logs = method.extra_loss(ctx)
    assert calls == []  # no perturbed decoder pass
    with torch.no_grad():
        t_score = method.teacher(ctx.images)
    want = 0.7 * F.smooth_l1_loss(ctx.out.score, t_score, beta=0.5)
    assert torch.allclose(loss, want)
    assert set(ctx.terms) == {"kd"} and "qfm_noise" not in logs and "qfm_memory" not in logs
    method.on_fit_start(module.engine_hooks())  # no warm fill without a memory
    assert ("qfm-kd-only", ["method.names=[qfm]", "method.qfm.matching=none"]) in ABLATIONS


def test_qfm_counts_the_teachers_forward_pass(tmp_path, tiny_table):
    module = _module(tmp_path, tiny_table, "method.qfm.matching=none")
    module.methods[0].extra_loss(_ctx(module, [0.5, 0.9, 0.1], [0, 1, 2]))
    assert module.compute_counts() == {"forward_crops": 3, "backward_crops": 0,
                                       "val_forward_crops": 0}
