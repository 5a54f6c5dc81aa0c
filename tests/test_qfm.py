"""QFM-IQM: the memory, Semantic Noisy Matching, the perturbed loss, the teacher, DDP, and one tiny
training run checked for leaks and for a plain-DEIQT export."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config, tiny_images

from nriqa.methods.qfm import (
    ABLATIONS,
    SOURCE_PSEUDO,
    SOURCE_STUDENT,
    SOURCE_TEACHER,
    Entries,
    FeatureMemory,
    default_capacity,
    match,
)

# ------------------------------------------------------------------------------------------------
# matching against a brute-force numpy computation


def _random_pool(seed=0, b=24, size=300, d=16, n_groups=12):
    """Memory labels on [0, 0.8]; the first anchors (label 0.95) have no candidate."""
    g = torch.Generator().manual_seed(seed)
    al = torch.rand(b, generator=g)
    al[: b // 6] = 0.95
    return SimpleNamespace(
        ac=torch.randn(b, d, generator=g), al=al,
        ag=torch.randint(0, n_groups, (b,), generator=g),
        mc=torch.randn(size, d, generator=g), ml=0.8 * torch.rand(size, generator=g),
        mg=torch.randint(0, n_groups, (size,), generator=g))


def _np_cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def _np_candidates(p, tau):
    dq = np.abs(p.al.double().numpy()[:, None] - p.ml.double().numpy()[None, :])
    other = p.ag.numpy()[:, None] != p.mg.numpy()[None, :]
    return other & (dq <= tau + 1e-6), other, dq


@pytest.mark.parametrize("tau,m", [(0.05, 8), (0.01, 3)])
def test_least_similar_partner_is_quality_matched_other_group_and_among_m_least_similar(tau, m):
    p = _random_pool(seed=3)
    res = match(p.ac, p.al, p.ag, p.mc, p.ml, p.mg, rule="least-similar", tau_q=tau, m=m,
                generator=torch.Generator().manual_seed(0))
    cand, other, dq = _np_candidates(p, tau)
    sim = _np_cos(p.ac.numpy().astype(np.float64), p.mc.numpy().astype(np.float64))
    idx = res.index.numpy()
    assert not cand.all(1).any() and (~cand.any(1)).any() and cand.any(1).any()  # both cases occur
    for i in range(len(idx)):
        k = idx[i]
        if cand[i].any():
            assert not res.fallback[i]
            assert cand[i, k], "partner must be within tau_q and of another group"
            mth = np.sort(sim[i, cand[i]])[: min(m, cand[i].sum())][-1]
            assert sim[i, k] <= mth + 1e-5, "partner must be among the m least cosine-similar"
        else:  # fallback: the nearest-quality entry of another group
            assert res.fallback[i]
            assert other[i, k] and dq[i, k] == pytest.approx(dq[i, other[i]].min())
    assert res.fallback.float().mean() == pytest.approx((~cand.any(1)).mean())


def test_least_similar_draws_uniformly_among_the_m_and_is_deterministic():
    p = _random_pool(seed=5, b=1, size=400)
    p.al[:] = 0.5
    draws = [int(match(p.ac, p.al, p.ag, p.mc, p.ml, p.mg, tau_q=0.1, m=4,
                       generator=torch.Generator().manual_seed(s)).index) for s in range(200)]
    cand, _, _ = _np_candidates(p, 0.1)
    sim = _np_cos(p.ac.numpy().astype(np.float64), p.mc.numpy().astype(np.float64))[0]
    rows = np.flatnonzero(cand[0])
    expected = set(rows[np.argsort(sim[rows])[:4]].tolist())
    assert set(draws) == expected  # all four of them, nothing else
    counts = np.bincount([sorted(expected).index(d) for d in draws], minlength=4)
    assert counts.min() > 25  # ~50 each
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    q = _random_pool(seed=1)
    a = match(q.ac, q.al, q.ag, q.mc, q.ml, q.mg, generator=g1).index
    b = match(q.ac, q.al, q.ag, q.mc, q.ml, q.mg, generator=g2).index
    assert torch.equal(a, b)


def test_random_rule_ignores_quality_and_random_quality_ignores_similarity():
    p = _random_pool(seed=2, b=1, size=400)
    p.al[:] = 0.5
    cand, other, dq = _np_candidates(p, 0.05)
    rand = [int(match(p.ac, p.al, p.ag, p.mc, p.ml, p.mg, rule="random", tau_q=0.05,
                      generator=torch.Generator().manual_seed(s)).index) for s in range(100)]
    assert all(other[0, k] for k in rand)  # never the anchor's own group
    assert np.mean([dq[0, k] > 0.05 for k in rand]) > 0.5  # mostly outside tau_q: quality ignored
    rq = [int(match(p.ac, p.al, p.ag, p.mc, p.ml, p.mg, rule="random-quality", tau_q=0.05, m=2,
                    generator=torch.Generator().manual_seed(s)).index) for s in range(100)]
    assert all(cand[0, k] for k in rq)
    assert len(set(rq)) > 2  # not restricted to the m least similar


def test_adversarial_picks_the_largest_perturbed_loss_among_the_m_least_similar():
    p = _random_pool(seed=4)
    seen = {}

    def loss(top, valid):
        seen["shape"] = tuple(top.shape)
        return (top * 7919 % 101).float()  # any fixed score per entry

    res = match(p.ac, p.al, p.ag, p.mc, p.ml, p.mg, rule="adversarial", tau_q=0.1, m=5,
                perturbed_loss=loss)
    assert seen["shape"] == (len(p.ac), 5)
    cand, _, _ = _np_candidates(p, 0.1)
    sim = _np_cos(p.ac.numpy().astype(np.float64), p.mc.numpy().astype(np.float64))
    for i, k in enumerate(res.index.tolist()):
        if not cand[i].any():
            continue
        rows = np.flatnonzero(cand[i])
        least = rows[np.argsort(sim[i, rows])[:5]]
        scores = least * 7919 % 101
        assert k in least and k * 7919 % 101 == scores.max()


def test_match_without_any_other_group_or_empty_memory_returns_minus_one():
    c = torch.randn(3, 4)
    res = match(c, torch.rand(3), torch.zeros(3, dtype=torch.long), c, torch.rand(3),
                torch.zeros(3, dtype=torch.long))
    assert res.index.tolist() == [-1, -1, -1] and res.fallback.all()
    res = match(c, torch.rand(3), torch.zeros(3), torch.zeros(0, 4), torch.zeros(0),
                torch.zeros(0, dtype=torch.long))
    assert res.index.tolist() == [-1, -1, -1]


# ------------------------------------------------------------------------------------------------
# memory


def test_memory_fifo_order_capacity_wraparound_fp16_detached_and_not_in_state_dict():
    mem = FeatureMemory(capacity=5, half_precision=True)
    assert len(mem) == 0 and mem.state_dict() == {}
    pushed = []

    def push(n, start):
        c = torch.arange(start, start + n, dtype=torch.float32)[:, None].repeat(1, 3).requires_grad_()
        tokens = c.detach()[:, None, :].repeat(1, 2, 1)
        mem.push(Entries.of(c * 1.0, tokens, c.detach()[:, 0] / 100, torch.arange(start, start + n),
                            SOURCE_TEACHER, torch.arange(start, start + n)))
        pushed.extend(range(start, start + n))

    push(3, 0)
    assert len(mem) == 3
    push(4, 10)  # wraps around
    assert len(mem) == 5
    o = mem.ordered()
    assert o.index.tolist() == pushed[-5:]
    assert o.c[:, 0].tolist() == [float(v) for v in pushed[-5:]]
    push(7, 20)  # more than the capacity at once: only the newest five survive
    o = mem.ordered()
    assert o.index.tolist() == pushed[-5:] == [22, 23, 24, 25, 26]
    assert torch.equal(o.groups, o.index) and (o.source == SOURCE_TEACHER).all()
    assert torch.allclose(o.labels, o.index.float() / 100)
    assert mem.c.dtype == mem.tokens.dtype == torch.float16
    assert not mem.c.requires_grad and not mem.tokens.requires_grad
    assert mem.tokens.shape == (5, 2, 3)
    assert mem.state_dict() == {}  # temporary: never in checkpoints
    assert {n for n, _ in mem.named_buffers()} >= {"c", "tokens", "labels", "groups"}
    full = FeatureMemory(4, half_precision=False)
    full.push(Entries.of(torch.ones(1, 3), torch.ones(1, 2, 3), 0.5, 1))
    assert full.c.dtype == torch.float32 and full.index.tolist()[0] == -1
    with pytest.raises(ValueError, match="teacher must have"):
        mem.push(Entries.of(torch.ones(1, 3), torch.ones(1, 4, 3), 0.5, 1))


def test_default_capacity():
    assert default_capacity(100) == 200 and default_capacity(10_000) == 4096
    assert default_capacity(None) == 4096


# ------------------------------------------------------------------------------------------------
# the method on hand-made steps


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    return tiny_images(tmp_path_factory.mktemp("qfm_imgs"))


def _teacher(cfg, seed=1):
    from nriqa.models import DEIQT

    torch.manual_seed(seed)
    return DEIQT.from_config(cfg.model)


def _module(tmp_path, table, *overrides, teacher=True):
    from nriqa.engine.data import resolve_data_settings
    from nriqa.engine.module import IQAModule

    extra = [] if teacher else ["method.qfm.teacher=false"]
    cfg = tiny_config(tmp_path, "method.name=qfm", *extra, *overrides)
    context = {"train_table": table, "train_size": len(table),
               "settings": resolve_data_settings(cfg)}
    if teacher:
        context["teacher"] = _teacher(cfg)
    torch.manual_seed(0)
    return IQAModule(cfg, context=context)


def _ctx(module, labels, groups, epoch_float=10.0, seed=0):
    from nriqa.methods import StepContext

    g = torch.Generator().manual_seed(seed)
    b = len(labels)
    images = torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.as_tensor(labels, dtype=torch.float32)
    groups = torch.as_tensor(groups, dtype=torch.long)
    model = module.model
    c, tokens = model.features(images)
    out = model.head(c, tokens)
    batch = {"image": images[:, None], "label": labels, "group": groups,
             "index": torch.arange(b)}
    return StepContext(batch=batch, images=images, labels=labels, groups=groups, crops_per_image=1,
                       c=c, tokens=tokens, out=out, model=model, count=module.count_compute, step=0,
                       epoch_float=epoch_float)


def _fill(method, labels, groups, seed=3):
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    method.memory.push(Entries.of(torch.randn(n, 64, generator=g), torch.randn(n, 4, 64, generator=g),
                                  torch.tensor(labels), torch.tensor(groups), SOURCE_STUDENT))


@pytest.mark.parametrize("perturb", ["tokens+global", "tokens"])
def test_perturbed_loss_is_smoothl1_of_the_decoder_on_p_plus_alpha_pn(tmp_path, tiny_table, perturb):
    module = _module(tmp_path, tiny_table, "method.qfm.lambda_noise=0.7", "method.qfm.alpha=0.3",
                     "optim.loss_beta=0.5", f"method.qfm.perturb={perturb}", teacher=False)
    method = module.methods[0]
    _fill(method, [0.5, 0.9, 0.1], [100, 101, 102])
    stored = method.memory.ordered()
    ctx = _ctx(module, [0.52, 0.88], [0, 1])  # one candidate each: entries 0 and 1
    loss, logs = method.extra_loss(ctx)
    nc, nt = stored.c[:2].float(), stored.tokens[:2].float()  # the fp16 entries
    c_in = ctx.c + 0.3 * nc if perturb == "tokens+global" else ctx.c
    expected = F.smooth_l1_loss(module.model.head(c_in, ctx.tokens + 0.3 * nt).score,
                                ctx.labels, beta=0.5)
    assert torch.allclose(loss, 0.7 * expected, atol=1e-6)
    assert torch.allclose(logs["qfm_noise"], expected, atol=1e-6)
    assert float(logs["qfm_fallback"]) == 0.0
    loss.backward()  # the noise term reaches the student's backbone
    assert module.model.backbone.net.patch_embed.proj.weight.grad.abs().sum() > 0
    # matched before the push: this step's entries entered the memory afterwards
    assert len(method.memory) == 5 and logs["qfm_memory"] == pytest.approx(5 / method.capacity)
    assert method.memory.ordered().index.tolist()[-2:] == [0, 1]


def test_empty_memory_gives_no_noise_and_the_anchor_never_meets_itself(tmp_path, tiny_table):
    module = _module(tmp_path, tiny_table, "method.qfm.warm_start=none", teacher=False)
    method = module.methods[0]
    ctx = _ctx(module, [0.5, 0.5, 0.5], [0, 1, 2])  # candidates for each other in the batch
    loss, logs = method.extra_loss(ctx)
    assert loss is None and "qfm_noise" not in logs and len(method.memory) == 3


def test_lambda_noise_zero_and_kd_switches_remove_their_terms(tmp_path, tiny_table):
    calls = []
    module = _module(tmp_path, tiny_table, "method.qfm.lambda_noise=0", "method.qfm.kd=false")
    method = module.methods[0]
    _fill(method, [0.5, 0.9], [100, 101])
    module.model.decoder.register_forward_hook(lambda *a: calls.append(1))
    ctx = _ctx(module, [0.5, 0.9], [0, 1])
    calls.clear()
    loss, logs = method.extra_loss(ctx)
    assert loss is None and calls == [] and "qfm_noise" not in logs and "qfm_kd" not in logs
    assert len(method.memory) == 2 + 2 + 2  # still pushed: student and teacher entries

    module = _module(tmp_path, tiny_table, "method.qfm.lambda_noise=0", "method.qfm.lambda_kd=0.4")
    method = module.methods[0]
    ctx = _ctx(module, [0.5, 0.9], [0, 1])
    loss, logs = method.extra_loss(ctx)
    with torch.no_grad():
        t_score = method.teacher(ctx.images)
    assert torch.allclose(loss, 0.4 * F.smooth_l1_loss(ctx.out.score, t_score))
    src = method.memory.ordered().source.tolist()
    assert src == [SOURCE_STUDENT] * 2 + [SOURCE_TEACHER] * 2


def test_delay_warm_start_switches_the_noise_on_after_the_warm_up(tmp_path, tiny_table):
    module = _module(tmp_path, tiny_table, "method.qfm.warm_start=delay", teacher=False)
    method = module.methods[0]
    _fill(method, [0.5, 0.9], [100, 101])
    _, logs = method.extra_loss(_ctx(module, [0.5, 0.9], [0, 1], epoch_float=0.2))
    assert "qfm_noise" not in logs  # warmup_epochs = 0.5 in the tiny config
    loss, logs = method.extra_loss(_ctx(module, [0.5, 0.9], [0, 1], epoch_float=0.5))
    assert "qfm_noise" in logs and loss is not None


def test_without_memory_matches_within_the_step_including_teacher_features(tmp_path, tiny_table,
                                                                          monkeypatch):
    import nriqa.methods.qfm.method as qfm

    seen = []
    real = qfm.match

    def spy(*args, **kw):
        seen.append((args[3].shape[0], args[5].clone()))
        return real(*args, **kw)

    monkeypatch.setattr(qfm, "match", spy)
    module = _module(tmp_path, tiny_table, "method.qfm.memory=false")
    method = module.methods[0]
    assert method.memory is None
    loss, logs = method.extra_loss(_ctx(module, [0.5, 0.5, 0.9, 0.9], [0, 1, 2, 3]))
    assert seen[0][0] == 8 and seen[0][1].tolist() == [0, 1, 2, 3] * 2  # 4 student + 4 teacher
    assert float(logs["qfm_fallback"]) == 0.0 and "qfm_noise" in logs and "qfm_memory" not in logs


def test_teacher_is_frozen_in_eval_mode_and_left_out_of_checkpoints(tmp_path, tiny_table):
    module = _module(tmp_path, tiny_table)
    method = module.methods[0]
    module.train()
    assert module.model.training and not method.teacher.training
    assert not any(p.requires_grad for p in method.teacher.parameters())
    state = module.state_dict()
    assert not any(".teacher." in k or ".memory." in k for k in state)
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    module.load_state_dict(state, strict=True)  # the checkpoint has no teacher: it is kept
    assert all(torch.equal(v, method.teacher.state_dict()[k]) for k, v in before.items())
    assert method.trainable_parameters() == []
    opt = module.configure_optimizers()["optimizer"]
    opt_params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in method.teacher.parameters()}
    with pytest.raises(Exception, match="teacher"):
        from nriqa.engine.data import resolve_data_settings
        from nriqa.engine.module import IQAModule

        cfg = tiny_config(tmp_path, "method.name=qfm")
        IQAModule(cfg, context={"train_size": 4, "settings": resolve_data_settings(cfg)})


def test_warm_fill_pushes_one_crop_per_training_image_from_student_and_teacher(tmp_path, tiny_table):
    module = _module(tmp_path, tiny_table, "method.qfm.warm_fill_images=5")
    method = module.methods[0]
    method.on_fit_start(module.engine_hooks())  # no trainer attached: plain fp32 pass on the CPU
    o = method.memory.ordered()
    assert len(method.memory) == 10
    assert sorted(o.source.tolist()) == [SOURCE_STUDENT] * 5 + [SOURCE_TEACHER] * 5
    rows = o.index.numpy()
    assert np.allclose(o.labels.numpy(), tiny_table["label"].to_numpy()[rows])
    codes = np.searchsorted(np.unique(tiny_table["group"].astype(str)), tiny_table["group"].astype(str))
    assert np.array_equal(o.groups.numpy(), codes[rows])
    assert module.model.training  # the fill ran in eval mode and restored the mode
    # the default: up to the capacity (2 x 24 = 48 entries -> all 24 images, both networks)
    module = _module(tmp_path, tiny_table)
    module.methods[0].on_fit_start(module.engine_hooks())
    assert len(module.methods[0].memory) == 48


def test_pseudo_labelled_images_enter_the_memory_with_teacher_scores_and_own_groups(tmp_path, tiny_table):
    from PIL import Image

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"u{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")  # skipped with a warning
    module = _module(tmp_path, tiny_table, f"method.qfm.pseudo_label_dir={folder}",
                     "method.qfm.warm_start=none", "method.qfm.pseudo_per_step=2")
    method = module.methods[0]
    method.on_fit_start(module.engine_hooks())
    o = method.memory.ordered()
    assert o.source.tolist() == [SOURCE_PSEUDO] * 3
    assert o.groups.tolist() == [-2, -3, -4]  # own groups (file positions 1..3), never >= 0
    from nriqa.data.dataset import ImageListDataset
    from nriqa.data.policy import CropPolicy

    crops = torch.stack([ImageListDataset([folder / f"u{i}.png"], CropPolicy(32))[0]["image"][0]
                         for i in range(3)])
    with torch.no_grad():
        expected = method.teacher(crops)
    assert torch.allclose(o.labels, expected, atol=1e-6)
    method.extra_loss(_ctx(module, [0.5, 0.9], [0, 1]))
    assert method.memory.ordered().source.tolist()[3:] == [0, 0, 1, 1, 2, 2]  # 2 more, cycled


def test_ablations_are_valid_overrides_and_recipes_load():
    import yaml

    from nriqa.config import list_recipes, load_config, recipe_path

    names = [n for n, _ in ABLATIONS]
    assert names[:2] == ["deiqt", "qfm"] and len(set(names)) == len(names) == 14
    for name, overrides in ABLATIONS:
        cfg = load_config(None, overrides)
        assert cfg.method.name == ("deiqt" if name == "deiqt" else "qfm")
    assert load_config(None, dict(ABLATIONS)["qfm-random-noise"]).method.qfm.matching == "random"
    assert "qfm" in list_recipes()
    raw = yaml.safe_load(recipe_path("qfm").read_text())
    assert raw["base"] == "deiqt" and raw["method"]["name"] == "qfm"
    for ds in ("live", "csiq", "tid2013", "kadid10k", "livec", "koniq10k", "spaq", "livefb"):
        cfg = load_config("qfm", [f"data.dataset={ds}"])
        assert cfg.method.name == "qfm" and cfg.split.protocol == "paper"
    cfg = load_config("qfm_cpu")
    assert cfg.method.name == "qfm" and cfg.model.weights == "efficientnet-lite"


# ------------------------------------------------------------------------------------------------
# one tiny training run


@pytest.fixture(scope="module")
def qfm_run(tmp_path_factory, tiny_table):
    import nriqa.engine.train as train_mod
    import nriqa.methods.qfm.method as qfm
    from nriqa.data.splits import make_split
    from nriqa.engine.data import resolve_data_settings, subset
    from nriqa.engine.module import IQAModule
    from nriqa.inference.model_files import inference_meta, save_model

    tmp = tmp_path_factory.mktemp("qfm_fit")
    base = tiny_config(tmp)
    teacher_path = tmp / "teacher.safetensors"
    save_model(_teacher(base), inference_meta(base, resolve_data_settings(base)), teacher_path)
    cfg = tiny_config(tmp, "method.name=qfm", f"method.qfm.teacher_checkpoint={teacher_path}")
    split = make_split(tiny_table, mode="honest", seed=0)
    rec = SimpleNamespace(modules=[], pushes=[], decoder=[], in_step=[False], last_features=[None])

    class Recording(IQAModule):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            rec.modules.append(self)
            self.model.backbone.register_forward_hook(
                lambda m, i, out: rec.last_features.__setitem__(0, out))
            self.model.decoder.register_forward_pre_hook(self._spy, with_kwargs=True)

        def _spy(self, dec, args, kwargs):
            c, tokens = args[:2]
            clean = rec.last_features[0] is not None and tokens is rec.last_features[0][1] \
                and c is rec.last_features[0][0]
            rec.decoder.append((self.model.training, rec.in_step[0], clean))

    real_push, real_extra = qfm.FeatureMemory.push, qfm.QFMMethod.extra_loss

    def push(self, entries):
        rec.pushes.append((entries.index.clone(), entries.source.clone(), entries.groups.clone(),
                           rec.in_step[0]))
        return real_push(self, entries)

    def extra_loss(self, ctx):
        rec.in_step[0] = True
        try:
            return real_extra(self, ctx)
        finally:
            rec.in_step[0] = False

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod, "IQAModule", Recording)
        mp.setattr(qfm.FeatureMemory, "push", push)
        mp.setattr(qfm.QFMMethod, "extra_loss", extra_loss)
        result = train_mod.fit(cfg, tiny_table, split, tmp / "run")
    module = rec.modules[0]
    return SimpleNamespace(result=result, module=module, rec=rec, split=split, cfg=cfg,
                           teacher_path=teacher_path, train=subset(tiny_table, split.train),
                           table=tiny_table, out=tmp / "run")


def test_trained_qfm_model_scores_exactly_like_a_plain_deiqt(qfm_run):
    from safetensors.torch import load_file

    from nriqa.inference.model_files import load_model
    from nriqa.models import DEIQT

    exported, meta = load_model(qfm_run.result.model_path)
    assert meta["method"] == "qfm"
    keys = set(load_file(str(qfm_run.result.model_path)))
    assert keys == set(DEIQT.from_config(qfm_run.cfg.model).state_dict())  # no teacher, no memory
    plain = DEIQT.from_config(qfm_run.cfg.model)
    plain.load_state_dict(qfm_run.module.model.state_dict())
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    trained = qfm_run.module.model.eval()
    with torch.no_grad():
        assert torch.equal(exported(x), trained(x))
        assert torch.equal(plain.eval()(x), trained(x))
    ckpt = torch.load(qfm_run.out / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any("teacher." in k or "memory." in k for k in ckpt["state_dict"])


def test_noise_reaches_the_decoder_only_inside_the_training_step(qfm_run):
    calls = qfm_run.rec.decoder
    perturbed = [c for c in calls if not c[2]]
    evaluation = [c for c in calls if not c[0]]
    assert perturbed and evaluation
    assert all(training and in_step for training, in_step, _ in perturbed)
    assert all(clean and not in_step for _, in_step, clean in evaluation)
    # one clean and one perturbed decoder pass per training step
    steps = sum(1 for c in calls if c[0] and not c[1])
    assert len(perturbed) == steps


def test_memory_never_holds_validation_or_test_images(qfm_run):
    train_paths = qfm_run.train["path"].to_numpy()
    allowed = set(qfm_run.table["path"].iloc[qfm_run.split.train])
    held_out = set(qfm_run.table["path"].iloc[np.r_[qfm_run.split.val, qfm_run.split.test]])
    pushes = qfm_run.rec.pushes
    warm = [p for p in pushes if not p[3]]
    steps = [p for p in pushes if p[3]]
    assert warm and steps
    cap = qfm_run.module.methods[0].capacity
    assert sum(len(p[0]) for p in warm) == 2 * min(len(train_paths), math.ceil(cap / 2))
    rows = torch.cat([p[0] for p in pushes]).numpy()
    assert (rows >= 0).all() and (rows < len(train_paths)).all()
    paths = set(train_paths[rows])
    assert paths <= allowed and not paths & held_out
    assert set(torch.cat([p[1] for p in pushes]).tolist()) == {SOURCE_STUDENT, SOURCE_TEACHER}
    memory = qfm_run.module.methods[0].memory
    assert set(train_paths[memory.ordered().index.numpy()]) <= allowed


def test_teacher_weights_do_not_change_get_no_gradient_and_are_not_optimised(qfm_run):
    from nriqa.inference.model_files import load_model

    teacher = qfm_run.module.methods[0].teacher
    original = load_model(qfm_run.teacher_path)[0].state_dict()
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, original[key]), key
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    opt = qfm_run.module.trainer.optimizers[0]
    optimised = {id(p) for g in opt.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in qfm_run.module.model.parameters()}
    assert not optimised & {id(p) for p in teacher.parameters()}


def test_training_logs_the_qfm_values(qfm_run):
    import pandas as pd

    logs = pd.read_csv(qfm_run.out / "logs" / "metrics.csv")
    for key in ("qfm_noise", "qfm_kd", "qfm_fallback", "qfm_memory"):
        assert logs[f"train/{key}_step"].notna().any(), key


# ------------------------------------------------------------------------------------------------
# DDP: every rank holds the same memory


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mem = FeatureMemory(capacity=7, half_precision=True)
        g = torch.Generator().manual_seed(rank)
        for step, n in enumerate([3 + 2 * rank, 1 + rank, 4, 0 if rank else 2]):  # uneven, wraps
            c = torch.randn(n, 5, generator=g)
            tokens = torch.randn(n, 3, 5, generator=g)
            index = 1000 * rank + 10 * step + torch.arange(n)
            mem.push(Entries.of(c, tokens, torch.rand(n, generator=g), 100 * rank + torch.arange(n),
                                rank, index))
        torch.save(mem.ordered()._asdict(), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_push_leaves_identical_memories_on_all_ranks(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    counts = {0: [3, 1, 4, 2], 1: [5, 2, 4, 0]}
    expected = [1000 * r + 10 * step + i for step in range(4) for r in (0, 1)
                for i in range(counts[r][step])]
    assert a["index"].tolist() == expected[-7:]
    assert a["source"].tolist() == [i // 1000 for i in expected[-7:]]
    assert a["c"].dtype == torch.float16
