"""LML-IQA's switches for the issue-11 experiments: label-masked negatives, the projector's input
(the null control), the EMA momentum ramp, and the saliency agreement between steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_lml import lml_module, make_ctx

from nriqa.engine.diagnostics import diagnostic_groups, gradient_logs
from nriqa.methods.lml import inter_class_mask, lml_infonce


def hand_loss(q, k, ids, sal, labels, tau, alpha, eps):
    """The documented loss, anchor by anchor, with inter-class keys kept only when
    |y_j - y_l| >= eps."""
    m = len(q)
    total = 0.0
    for j in range(m):
        s = [float(q[j] @ k[n]) / tau for n in range(m)]
        pos = next(n for n in range(m) if ids[n] == ids[j] and sal[n])
        denom = math.exp(s[pos])
        for n in range(m):
            if ids[n] != ids[j] and abs(labels[j] - labels[n]) >= eps:
                denom += math.exp(s[n])
            elif ids[n] == ids[j] and not sal[n] and n != j:
                denom += alpha * math.exp(s[n])
        total += -(s[pos] - math.log(denom))
    return total / m


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("eps", [0.0, 0.15, 0.3])
def test_masked_negatives_equal_the_hand_written_loop(alpha, eps):
    g = torch.Generator().manual_seed(3)
    b, k = 4, 3
    q = F.normalize(torch.randn(b * k, 8, generator=g), dim=1)
    keys = F.normalize(torch.randn(b * k, 8, generator=g), dim=1)
    ids = torch.arange(b).repeat_interleave(k)
    sal = F.one_hot(torch.tensor([0, 2, 1, 0]), k).bool().reshape(-1)
    img_labels = torch.tensor([0.2, 0.3, 0.8, 0.25])  # images 0, 1, 3 are within 0.1 of each other
    labels = img_labels.repeat_interleave(k)
    got = lml_infonce(q, keys, ids, sal, 0.2, alpha, labels=labels, neg_mask_eps=eps)
    want = hand_loss(q.double(), keys.double(), ids.tolist(), sal.tolist(), labels.tolist(), 0.2,
                     alpha, eps)
    assert float(got) == pytest.approx(want, rel=1e-5)
    # eps = 0 masks nothing: the unmasked loss
    if eps == 0.0:
        assert torch.allclose(got, lml_infonce(q, keys, ids, sal, 0.2, alpha))
    else:
        assert not torch.allclose(got, lml_infonce(q, keys, ids, sal, 0.2, alpha))


def test_inter_class_mask_by_hand():
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    labels = torch.tensor([0.5, 0.5, 0.52, 0.52, 0.9, 0.9])
    mask = inter_class_mask(ids, None, labels, 0.05)
    want = torch.zeros(6, 6, dtype=torch.bool)
    for j in range(6):
        for n in range(6):
            want[j, n] = ids[j] != ids[n] and abs(float(labels[j] - labels[n])) >= 0.05
    assert torch.equal(mask, want)
    assert mask[0].tolist() == [False, False, False, False, True, True]
    with pytest.raises(ValueError, match="labels"):
        inter_class_mask(ids, None, None, 0.05)


def test_masked_share_is_logged(tmp_path):
    module = lml_module(tmp_path, "method.lml.neg_mask_eps=2.0", "method.lml.ramp_epochs=0")
    _, logs = module.methods[0].extra_loss(make_ctx(module))
    assert float(logs["lml_neg_masked"]) == 1.0  # labels on [0, 1]: every negative is masked
    _, logs = lml_module(tmp_path).methods[0].extra_loss(make_ctx(module))
    assert "lml_neg_masked" not in logs


def one_step(tmp_path, *overrides):
    """The model's parameters after one optimiser step of the engine's loss from a fixed start."""
    module = lml_module(tmp_path, "method.lml.ramp_epochs=0", "method.lml.saliency=random",
                        *overrides)
    torch.manual_seed(5)
    batch = make_ctx(module).batch
    opt = module.configure_optimizers()["optimizer"]
    loss, _, ctx = module.step_loss(batch)
    loss.backward()
    opt.step()
    return {n: p.detach().clone() for n, p in module.model.named_parameters()}, ctx


def test_detached_projector_input_gives_the_student_update_of_lambda_c_zero(tmp_path):
    # The grad-norm clip couples all parameters (the projector's gradient would scale the
    # student's step when it acts), so the null control is exact with the clip off.
    off = "optim.grad_clip=null"
    null, ctx = one_step(tmp_path, off, "method.lml.lambda_c=0")
    detached, ctx_d = one_step(tmp_path, off, "method.lml.proj_input=detached")
    full, _ = one_step(tmp_path, off)
    assert float(ctx_d.terms["contrastive"][1]) == 0.05  # the contrastive term is on
    for name in null:
        assert torch.equal(null[name], detached[name]), name
    assert any(not torch.equal(null[n], full[n]) for n in null)  # the test can fail


def test_global_projector_input_reaches_the_backbone_not_the_decoder(tmp_path):
    module = lml_module(tmp_path, "method.lml.ramp_epochs=0", "method.lml.proj_input=global")
    loss, _, ctx = module.step_loss(make_ctx(module).batch)
    logs = gradient_logs(ctx.terms, diagnostic_groups(module.model, module.methods))
    assert logs["grad/decoder/contrastive"] == 0.0
    assert logs["grad/backbone/contrastive"] > 0 and logs["grad/projector/contrastive"] > 0
    module = lml_module(tmp_path, "method.lml.ramp_epochs=0", "method.lml.proj_input=detached")
    loss, _, ctx = module.step_loss(make_ctx(module).batch)
    logs = gradient_logs(ctx.terms, diagnostic_groups(module.model, module.methods))
    assert logs["grad/decoder/contrastive"] == 0.0 and logs["grad/backbone/contrastive"] == 0.0
    assert logs["grad/projector/contrastive"] > 0


def test_momentum_ramp_values_and_the_update_uses_them(tmp_path):
    # tiny_config trains 2 epochs
    method = lml_module(tmp_path, "method.lml.momentum_ramp=cosine", "method.lml.momentum=0.99",
                        "method.lml.momentum_start=0.9").methods[0]
    assert method.momentum_at(0.0) == pytest.approx(0.9)
    assert method.momentum_at(0.5) == pytest.approx(0.99 - 0.09 * (1 + math.cos(math.pi / 4)) / 2)
    assert method.momentum_at(1.0) == pytest.approx(0.945)
    assert method.momentum_at(2.0) == method.momentum_at(5.0) == pytest.approx(0.99)
    values = [method.momentum_at(e / 10) for e in range(21)]
    assert values == sorted(values)  # rises monotonically
    assert lml_module(tmp_path, "method.lml.momentum=0.97").methods[0].momentum_at(0.3) == 0.97

    module = lml_module(tmp_path, "method.lml.momentum_ramp=cosine", "method.lml.momentum=0.99",
                        "method.lml.momentum_start=0.5")
    method = module.methods[0]
    _, logs = method.extra_loss(make_ctx(module, epoch=1.0))  # the step at mid-training
    m = 0.99 - 0.49 / 2
    assert logs["lml_momentum"] == pytest.approx(m)
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(0.1)
    before = {n: p.clone() for n, p in method.teacher.named_parameters()}
    method.after_optimizer_step(module.model)
    student = dict(module.model.named_parameters())
    for n, p in method.teacher.named_parameters():
        assert torch.allclose(p, m * before[n] + (1 - m) * student[n].detach(), atol=1e-6), n


def test_salient_agreement_between_steps(tmp_path):
    module = lml_module(tmp_path)
    method = module.methods[0]
    _, first = method.extra_loss(make_ctx(module))
    assert "lml_salient_agree" not in first  # no image seen before
    _, again = method.extra_loss(make_ctx(module))  # the same images, boxes and teacher
    assert float(again["lml_salient_agree"]) == 1.0
    # a remembered map that ranks the crops in reverse picks today's least salient crop
    ctx = make_ctx(module)
    sal = method.crop_saliency(ctx)
    assert torch.all(sal.argmax(1) != sal.argmin(1))
    for key, stored in list(method._last_maps.items()):
        method._last_maps[key] = -stored
    _, logs = method.extra_loss(make_ctx(module))
    assert float(logs["lml_salient_agree"]) == 0.0
