"""LML-IQA: saliency and crop choice, the EMA teacher, the local-manifold InfoNCE, export, recipes."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_MODEL, tiny_config, tiny_images

from nriqa.config import load_config
from nriqa.engine.module import IQAModule
from nriqa.errors import ConfigError
from nriqa.inference.model_files import load_model, save_model
from nriqa.methods import StepContext
from nriqa.methods.lml import (
    ABLATIONS,
    REQUIRES_VIT,
    LMLMethod,
    ablations_for,
    box_indices,
    box_saliency,
    lml_infonce,
    saliency_maps,
    salient_index,
    spectral_residual,
)
from nriqa.models import DEIQT

DATASETS = ["live", "csiq", "tid2013", "kadid10k", "livec", "koniq10k", "spaq", "livefb"]


def lml_module(tmp_path, *extra) -> IQAModule:
    torch.manual_seed(0)
    return IQAModule(tiny_config(tmp_path, "method.name=lml", *extra))


def make_ctx(module: IQAModule, b: int = 2, k: int = 4, epoch: float = 10.0, step: int = 0,
             seed: int = 0) -> StepContext:
    """A training step's context as the engine builds it, from a hand-made batch."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, k, 3, 32, 32), generator=g, dtype=torch.uint8)
    x0 = torch.rand(b, k, 2, generator=g) * 0.5
    boxes = torch.cat([x0, x0 + 0.5], -1)
    batch = {"image": images, "boxes": boxes,
             "full": torch.randint(0, 256, (b, 3, 48, 48), generator=g, dtype=torch.uint8),
             "label": torch.rand(b, generator=g), "index": torch.arange(b) + 10,
             "group": torch.arange(b)}
    flat = images.flatten(0, 1)
    c, tokens = module.model.features(flat)
    out = module.model.head(c, tokens)
    return StepContext(batch=batch, images=flat, labels=batch["label"].repeat_interleave(k),
                       groups=batch["group"].repeat_interleave(k), crops_per_image=k, c=c,
                       tokens=tokens, out=out, model=module.model, count=module.count_compute,
                       step=step,
                       epoch_float=epoch)


# ------------------------------------------------------------------------------ saliency


def brute_box_mean(grid: np.ndarray, box, r: int) -> float:
    """The documented rule, cell by cell: cells [floor(x0*R+0.5), floor(x1*R+0.5))."""
    x0, y0, x1, y1 = (min(r, math.floor(v * r + 0.5)) for v in box)
    x0, y0 = min(x0, r - 1), min(y0, r - 1)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    total, n = 0.0, 0
    for y in range(r):
        for x in range(r):
            if x0 <= x < x1 and y0 <= y < y1:
                total += grid[y, x]
                n += 1
    return total / n


def random_boxes(b, k, gen):
    x0y0 = torch.rand(b, k, 2, generator=gen) * 0.6
    side = 0.15 + torch.rand(b, k, 1, generator=gen) * 0.25
    return torch.cat([x0y0, x0y0 + side], -1)


def test_box_saliency_and_salient_index_match_brute_force():
    gen = torch.Generator().manual_seed(0)
    r = 16
    maps = torch.rand(3, r, r, generator=gen)
    boxes = random_boxes(3, 5, gen)
    got = box_saliency(maps, boxes, resolution=r)
    want = torch.tensor([[brute_box_mean(maps[i].numpy(), boxes[i, j].tolist(), r)
                          for j in range(5)] for i in range(3)])
    assert got.shape == (3, 5)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(salient_index(maps, boxes, r), want.argmax(1))
    # maps on a coarser grid are upsampled bilinearly first
    coarse = torch.rand(3, 4, 5, generator=gen)
    up = F.interpolate(coarse[:, None].double(), size=(r, r), mode="bilinear",
                       align_corners=False)[:, 0]
    want = torch.tensor([[brute_box_mean(up[i].numpy(), boxes[i, j].tolist(), r)
                          for j in range(5)] for i in range(3)])
    assert torch.allclose(box_saliency(coarse, boxes, r), want.float(), atol=1e-6)
    assert torch.equal(salient_index(coarse, boxes, r), want.argmax(1))


def test_salient_index_on_a_hand_made_map():
    grid = torch.zeros(1, 64, 64)
    grid[0, 40:50, 8:18] = 1.0  # a hot spot at x 8..18, y 40..50 (cells)
    boxes = torch.tensor([[[0.5, 0.0, 1.0, 0.5],      # top right: cold
                           [0.0, 0.5, 0.5, 1.0],      # bottom left: holds the spot
                           [0.25, 0.25, 0.75, 0.75],  # centre: touches none of it
                           [0.0, 0.0, 0.5, 0.5]]])    # top left: cold
    sal = box_saliency(grid, boxes)
    assert int(salient_index(grid, boxes)) == 1
    assert sal[0, 1] == pytest.approx(100 / (32 * 32))
    assert sal[0, 0] == 0 and sal[0, 3] == 0
    # degenerate boxes still cover one cell
    idx = box_indices(torch.tensor([[1.0, 1.0, 1.0, 1.0]]), 8)
    assert idx.tolist() == [[7, 7, 8, 8]]


def test_spectral_saliency_finds_a_bright_square():
    img = np.full((3, 96, 96), 90, dtype=np.uint8)
    img[:, 20:36, 56:72] = 250  # bright square at rows 20..36, columns 56..72
    sal = spectral_residual(torch.from_numpy(img))[0]  # (64, 64)
    assert sal.shape == (64, 64) and sal.max() == pytest.approx(1.0)
    rows, cols = slice(20 * 64 // 96, 36 * 64 // 96), slice(56 * 64 // 96, 72 * 64 // 96)
    inside = sal[rows, cols].mean()
    outside = np.delete(sal.reshape(-1), (np.arange(64)[rows, None] * 64 + np.arange(64)[cols]).ravel())
    assert inside > 4 * outside.mean()
    y, x = np.unravel_index(sal.argmax(), sal.shape)
    assert 20 * 64 / 96 - 3 <= y <= 36 * 64 / 96 + 3 and 56 * 64 / 96 - 3 <= x <= 72 * 64 / 96 + 3
    boxes = torch.tensor([[[0.0, 0.0, 0.4, 0.4], [0.55, 0.15, 0.8, 0.4], [0.1, 0.6, 0.4, 0.9]]])
    assert int(salient_index(torch.from_numpy(sal)[None], boxes)) == 1


def test_network_saliency_maps_on_the_token_grid(tmp_path):
    module = lml_module(tmp_path)
    full = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    dec = saliency_maps(module.model, full, "decoder", 32)
    assert dec.shape == (2, 2, 2)  # a 32 px ViT/16: 2 x 2 tokens
    assert torch.allclose(dec.sum((1, 2)), torch.ones(2), atol=1e-5)  # attention, averaged
    cls = saliency_maps(module.model, full, "vit-cls", 32)
    assert cls.shape == (2, 2, 2) and torch.all(cls > 0)
    assert saliency_maps(None, full, "spectral", 32).shape == (2, 64, 64)


def test_vit_cls_saliency_needs_a_cls_token(tmp_path):
    no_cls = "model.backbone_kwargs={depth: 2, embed_dim: 64, num_heads: 2, class_token: false, global_pool: avg}"
    with pytest.raises(ConfigError, match="CLS token"):
        lml_module(tmp_path, "method.lml.saliency=vit-cls", no_cls)
    assert lml_module(tmp_path, "method.lml.saliency=decoder", no_cls).methods[0].teacher is not None


def test_random_saliency_is_seeded_and_needs_no_full_image(tmp_path):
    module = lml_module(tmp_path, "method.lml.saliency=random")
    method = module.methods[0]
    assert not method.needs_full_image and not module.needs_full_image
    assert lml_module(tmp_path).needs_full_image
    ctx = make_ctx(module, b=6, k=4)
    del ctx.batch["full"]
    picks = [method.random_salient(make_ctx(module, b=6, k=4, step=s), 6, 4) for s in range(5)]
    again = method.random_salient(make_ctx(module, b=6, k=4, step=0), 6, 4)
    assert torch.equal(picks[0], again)
    assert len({tuple(p.tolist()) for p in picks}) > 1 and all(p.max() < 4 for p in picks)
    loss, logs = method.extra_loss(ctx)  # works without batch["full"]
    assert torch.isfinite(loss) and "lml_salient_entropy" not in logs


# ---------------------------------------------------------------------------------- loss

# 2 images x 3 crops; image 0's salient crop is 1, image 1's is 3.
IDS = torch.tensor([0, 0, 0, 1, 1, 1])
SALIENT = torch.tensor([False, True, False, True, False, False])
# anchor: (positive, inter-class negatives, intra-class negatives), written out by hand
ROLES = {0: (1, [3, 4, 5], [2]),
         1: (1, [3, 4, 5], [0, 2]),  # the salient anchor: all non-salient crops of its image
         2: (1, [3, 4, 5], [0]),
         3: (3, [0, 1, 2], [4, 5]),
         4: (3, [0, 1, 2], [5]),
         5: (3, [0, 1, 2], [4])}


def unit(angles):
    a = torch.tensor(angles, dtype=torch.float64)
    return torch.stack([a.cos(), a.sin()], 1)


Q = unit([0.1, 0.5, 1.0, 2.0, 2.5, 3.0])
K = unit([0.2, 0.4, 1.2, 2.2, 2.4, 2.9])


def ex(q, k, j, m, tau):
    """exp(q_j . k_m / tau)"""
    return math.exp(float(q[j] @ k[m]) / tau)


def hand_loss(q, k, tau, alpha):
    total = 0.0
    for j, (pos, inter, intra) in ROLES.items():
        p = ex(q, k, j, pos, tau)
        denom = (p + sum(ex(q, k, j, m, tau) for m in inter)
                 + alpha * sum(ex(q, k, j, m, tau) for m in intra))
        total += -math.log(p / denom)
    return total / len(ROLES)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 3.0])
def test_infonce_equals_the_hand_computed_formula(alpha):
    got = lml_infonce(Q, K, IDS, SALIENT, tau=0.5, alpha=alpha)
    assert float(got) == pytest.approx(hand_loss(Q, K, 0.5, alpha), rel=1e-6)


def test_alpha_weights_exactly_the_intra_class_terms():
    # L(a2) - L(a1) = mean_j log[(P_j + E_j + a2 I_j) / (P_j + E_j + a1 I_j)] with P, E, I the
    # positive, inter-class and intra-class sums of exp(q.k / tau): only the I terms move.
    tau = 0.5
    for a1, a2 in ((1.0, 2.0), (0.0, 0.7), (0.25, 5.0)):
        diff = float(lml_infonce(Q, K, IDS, SALIENT, tau, a2)) - float(
            lml_infonce(Q, K, IDS, SALIENT, tau, a1))
        want = 0.0
        for j, (pos, inter, intra) in ROLES.items():
            p = ex(Q, K, j, pos, tau)
            e = sum(ex(Q, K, j, m, tau) for m in inter)
            i = sum(ex(Q, K, j, m, tau) for m in intra)
            want += math.log((p + e + a2 * i) / (p + e + a1 * i)) / len(ROLES)
        assert diff > 0
        assert diff == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_alpha_zero_is_plain_infonce_over_other_images():
    gen = torch.Generator().manual_seed(1)
    b, k, d, tau = 4, 3, 8, 0.2
    q = F.normalize(torch.randn(b * k, d, generator=gen), dim=1)
    keys = F.normalize(torch.randn(b * k, d, generator=gen), dim=1)
    ids = torch.arange(b).repeat_interleave(k)
    sal_idx = torch.tensor([2, 0, 1, 1])
    mask = F.one_hot(sal_idx, k).bool().reshape(-1)
    rows = []
    for j in range(b * k):
        i = int(ids[j])
        others = keys[ids != i]
        rows.append(torch.cat([(q[j] @ keys[i * k + sal_idx[i]])[None], others @ q[j]]) / tau)
    want = F.cross_entropy(torch.stack(rows), torch.zeros(b * k, dtype=torch.long))
    got = lml_infonce(q, keys, ids, mask, tau, 0.0)
    assert float(got) == pytest.approx(float(want), rel=1e-6)


def test_infonce_gradients_and_checks():
    q = Q.clone().float().requires_grad_(True)
    k = K.clone().float().requires_grad_(True)
    lml_infonce(q, k, IDS, SALIENT, 0.5, 1.0).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None  # keys carry no gradient
    with pytest.raises(ValueError, match="exactly one"):
        lml_infonce(Q, K, IDS, torch.zeros(6, dtype=torch.bool), 0.5, 1.0)
    # the same picture twice in a batch: its crops are left out of the inter-class negatives
    same_picture = torch.tensor([7, 7, 7, 7, 7, 7])
    no_inter = float(lml_infonce(Q, K, IDS, SALIENT, 0.5, 1.0, exclude_ids=same_picture))
    total = 0.0
    for j, (pos, _inter, intra) in ROLES.items():
        p = ex(Q, K, j, pos, 0.5)
        total += -math.log(p / (p + sum(ex(Q, K, j, m, 0.5) for m in intra)))
    assert no_inter == pytest.approx(total / 6, rel=1e-6)


# --------------------------------------------------------------------- teacher and method


def test_ema_teacher_update_no_gradient_not_optimised(tmp_path):
    module = lml_module(tmp_path, "method.lml.momentum=0.9")
    method = module.methods[0]
    teacher = method.teacher
    assert isinstance(teacher, DEIQT) and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    module.train()
    assert not teacher.training and not method.teacher_projector.training
    assert method.projector.training
    opt = module.configure_optimizers()["optimizer"]
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert not any(id(p) in in_opt for p in teacher.parameters())
    assert not any(id(p) in in_opt for p in method.teacher_projector.parameters())
    assert all(id(p) in in_opt for p in method.projector.parameters())
    assert all(id(p) in in_opt for p in module.model.parameters())

    ctx = make_ctx(module)
    extra, logs = method.extra_loss(ctx)
    reg = F.smooth_l1_loss(ctx.out.score, ctx.labels)
    (reg + extra).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in method.teacher_projector.parameters())
    assert all(p.grad is not None for p in method.projector.parameters())
    assert {"lml_loss", "lml_weight", "lml_salient_entropy", "lml_pos_sim"} <= set(logs)

    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    for group in opt.param_groups:
        group["lr"] = 0.05
    opt.step()
    student = dict(module.model.named_parameters())
    module.model.backbone.mean.fill_(0.25)  # buffers are copied, not averaged
    method.after_optimizer_step(module.model)
    changed = 0
    for name, p in teacher.named_parameters():
        want = 0.9 * before[name] + 0.1 * student[name].detach()
        assert torch.allclose(p, want, atol=1e-6), name
        changed += int(not torch.allclose(before[name], student[name]))
    assert changed > 10  # the student really moved
    assert torch.equal(teacher.backbone.mean, module.model.backbone.mean)
    assert not torch.allclose(dict(teacher.named_parameters())["decoder.queries"],
                              student["decoder.queries"])


def test_no_ema_teacher_is_the_student(tmp_path):
    module = lml_module(tmp_path, "method.lml.ema=false")
    method = module.methods[0]
    assert method.teacher is None
    assert not any("teacher" in key for key in module.state_dict())
    assert method.teacher_networks(module.model) == (module.model, method.projector)
    loss, logs = method.extra_loss(make_ctx(module))
    assert torch.isfinite(loss) and loss.requires_grad
    method.after_optimizer_step(module.model)  # no-op
    assert method.export_model(module.model) is module.model


def test_lambda_ramp_and_beta(tmp_path):
    method = lml_module(tmp_path).methods[0]  # warm-up 0.5 epochs, lambda_c 0.05
    assert method.lambda_c(0.0) == 0.0
    assert method.lambda_c(0.25) == pytest.approx(0.025)
    assert method.lambda_c(0.5) == method.lambda_c(4.0) == pytest.approx(0.05)
    method = lml_module(tmp_path, "method.lml.ramp_epochs=2", "method.lml.lambda_c=0.1").methods[0]
    assert method.lambda_c(1.0) == pytest.approx(0.05)
    module = lml_module(tmp_path, "method.lml.beta=0.5", "method.lml.ramp_epochs=0")
    method = module.methods[0]
    ctx = make_ctx(module)
    loss, logs = method.extra_loss(ctx)
    with torch.no_grad():
        t_score = method.teacher(ctx.images)
    mt = (ctx.out.score - t_score).abs().mean()
    assert float(logs["lml_mt_loss"]) == pytest.approx(float(mt.detach()), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(0.05 * float(logs["lml_loss"]) + 0.5 * float(mt.detach()), rel=1e-5)


def test_export_student_teacher_and_best(tmp_path):
    module = lml_module(tmp_path, "method.lml.infer_with=teacher", "method.lml.momentum=0.5")
    method = module.methods[0]
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    method.after_optimizer_step(module.model)  # the teacher now differs from the student
    exported = method.export_model(module.model)
    assert isinstance(exported, DEIQT) and exported is not method.teacher
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    same = DEIQT.from_config(module.cfg.model, weights="none").eval()
    same.load_state_dict(method.teacher.state_dict())  # a plain DEIQT with the teacher's weights
    path = save_model(exported, {"format": "nriqa-deiqt-v1", "crop_size": 32, "test_patch_num": 1,
                                 "model": module.cfg.model.model_dump(mode="json")},
                      tmp_path / "teacher.safetensors")
    loaded, _ = load_model(path)
    with torch.no_grad():
        assert torch.equal(exported(x), same(x)) and torch.equal(loaded(x), same(x))
        # (the frozen copy may take another attention kernel: equal up to float rounding)
        assert torch.allclose(exported(x), method.teacher(x), atol=1e-6)
        assert not torch.allclose(exported(x), module.model.eval()(x), atol=1e-4)
    method.lml.infer_with = "best"
    assert method.export_model(module.model) is module.model  # no comparison made: the student
    method.select_network("teacher")
    assert set(method.export_candidates(module.model)) == {"student", "teacher"}
    with torch.no_grad():
        assert torch.equal(method.export_model(module.model)(x), same(x))


# ------------------------------------------------------------------------------- training


def test_fit_with_lml_exports_a_plain_deiqt(tmp_path, monkeypatch):
    from nriqa.data.splits import make_split
    from nriqa.engine.train import fit

    seen = []
    original = LMLMethod.extra_loss

    def spy(self, ctx):
        seen.append({"image": tuple(ctx.batch["image"].shape),
                     "boxes": tuple(ctx.batch["boxes"].shape),
                     "full": (tuple(ctx.batch["full"].shape), ctx.batch["full"].dtype),
                     "crops": tuple(ctx.images.shape), "k": ctx.crops_per_image,
                     "box_range": (float(ctx.batch["boxes"].min()), float(ctx.batch["boxes"].max()))})
        return original(self, ctx)

    monkeypatch.setattr(LMLMethod, "extra_loss", spy)
    table = tiny_images(tmp_path / "img", n_groups=5)
    cfg = tiny_config(tmp_path, "method.name=lml", "method.lml.crops=3", "optim.epochs=1",
                      "data.patch_num=3")
    result = fit(cfg, table, make_split(table, mode="honest", seed=0), tmp_path / "run")

    assert seen
    first = seen[0]
    b = first["image"][0]
    assert first["k"] == 3 and first["image"] == (b, 3, 3, 32, 32)
    assert first["boxes"] == (b, 3, 4) and 0.0 <= first["box_range"][0] <= first["box_range"][1] <= 1.0
    assert first["full"][0][:2] == (b, 3) and first["full"][1] == torch.uint8
    assert first["crops"] == (b * 3, 3, 32, 32)

    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("methods.0.teacher.") for k in keys)
    assert any(k.startswith("methods.0.projector.") for k in keys)
    exported, meta = load_model(result.model_path)  # strict: a plain DEIQT, nothing extra
    assert meta["method"] == "lml"
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    student, _ = load_model(best if best.exists() else tmp_path / "run" / "checkpoints" / "last.ckpt")
    same = DEIQT.from_config(cfg.model, weights="none").eval()
    same.load_state_dict(exported.state_dict())
    crops = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(exported(crops), student(crops))
        assert torch.equal(exported(crops), same(crops))
    logged = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    assert "train/lml_loss_step" in logged and logged["train/lml_loss_step"].notna().any()


@pytest.mark.skipif(importlib.util.find_spec("nriqa.methods.qfm") is None,
                    reason="nriqa/methods/qfm.py does not exist yet: qfm+lml cannot be built")
def test_qfm_plus_lml_trains(tmp_path):
    from nriqa.data.splits import make_split
    from nriqa.engine.train import fit

    table = tiny_images(tmp_path / "img", n_groups=5)
    cfg = tiny_config(tmp_path, "method.name=qfm+lml", "method.qfm.teacher=false",
                      "method.lml.crops=2", "optim.epochs=1")
    result = fit(cfg, table, make_split(table, mode="honest", seed=0), tmp_path / "run")
    assert result.model_path.is_file()
    logged = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    assert logged["train/lml_loss_step"].notna().any()


# ------------------------------------------------------------------- ablations and recipes


def test_ablations_are_valid_overrides():
    names = [n for n, _ in ABLATIONS]
    assert names == ["deiqt", "lml", "lml-alpha-0", "lml-random-saliency", "lml-no-ema",
                     "lml-k-2", "lml-k-6", "lml-vit-cls", "lml-spectral"]
    for _name, overrides in ABLATIONS:
        load_config(None, [*TINY_MODEL, *overrides])
    cfg = load_config(None, dict(ABLATIONS)["lml-k-6"])
    assert cfg.method.name == "lml" and cfg.method.lml.crops == 6
    assert load_config(None, dict(ABLATIONS)["lml-alpha-0"]).method.lml.alpha == 0
    assert set(REQUIRES_VIT) == {"lml-vit-cls"}
    assert "lml-vit-cls" not in dict(ablations_for(False)) and len(ablations_for(True)) == 9


@pytest.mark.parametrize("dataset", DATASETS)
def test_recipes(dataset):
    lml = load_config(f"lml_{dataset}")
    both = load_config(f"qfm_lml_{dataset}")
    base = load_config(f"deiqt_{dataset}")
    for cfg, name in ((lml, "lml"), (both, "qfm+lml")):
        assert cfg.method.name == name and cfg.data.dataset == dataset
        assert cfg.split.protocol == "paper" and cfg.data.batch_size * cfg.method.lml.crops == 64
        assert cfg.model == base.model and cfg.optim == base.optim
        assert cfg.data.patch_num == base.data.patch_num and cfg.data.resize == base.data.resize


def test_cpu_recipe():
    cfg = load_config("lml_cpu")
    assert cfg.method.name == "lml" and cfg.data.dataset == "embedded"
    assert cfg.model.backbone == load_config("cpu_demo").model.backbone
    assert cfg.method.lml.saliency == "decoder"  # the CNN backbone has no CLS attention
