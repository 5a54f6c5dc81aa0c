"""QFM-IQM (Li et al., ICML 2024, arXiv 2312.06158) as reconstructed by nriqa.

The paper states [S] that a student's features and labels are stored in pairs in a *temporary
memory*, that *Semantic Noisy Matching* picks from it features of similar quality but different
semantics, and that these are *added to the original features* as the decoder input, so that the
model learns to predict the right score despite the added semantic noise; a distillation framework
"indirectly augments" the data. Everything below that the paper does not state is nriqa's
reconstruction [R]; each choice is a field of :class:`nriqa.config.QFMConfig` (see
``docs/qfm_iqm.md``).

Per training step (:meth:`QFMMethod.extra_loss`):

1. the frozen teacher (if any) encodes the same crops: ``(c_t, P_t)`` and its score;
2. ``L_kd = SmoothL1(student score, teacher score)`` (when ``kd``);
3. each anchor crop i is matched (:func:`match`) against the memory *as it was before this step*
   (or, without a memory, against the other crops of this step and their teacher features);
4. ``y~_i = D(P_i + alpha P_n, c_i + alpha c_n)`` and ``L_noise = SmoothL1(y~_i, y_i)``; the memory
   side carries no gradient;
5. this step's student (and teacher, and cycled pseudo-labelled) entries are pushed.

The model itself is never changed: inference is DEIQT's, and the exported file is a plain DEIQT.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from nriqa.config import QFMConfig
from nriqa.data.dataset import IQADataset
from nriqa.data.distributed import dist_info
from nriqa.data.policy import CropPolicy
from nriqa.errors import ConfigError
from nriqa.methods.base import EngineHooks, Method, StepContext
from nriqa.methods.qfm.matching import match
from nriqa.methods.qfm.memory import (
    SOURCE_STUDENT,
    SOURCE_TEACHER,
    Entries,
    FeatureMemory,
    default_capacity,
    stack_entries,
)
from nriqa.methods.qfm.teacher import (
    drop_teacher_state,
    keep_teacher_state,
    prepare_teacher,
    pseudo_label,
)
from nriqa.methods.registry import register_method

log = logging.getLogger(__name__)

#: Named variants for ``nriqa ablate qfm``: (name, dotted config overrides).
ABLATIONS: list[tuple[str, list[str]]] = [
    ("deiqt", ["method.names=[]"]),
    ("qfm", ["method.names=[qfm]"]),
    ("qfm-no-memory", ["method.names=[qfm]", "method.qfm.memory=false"]),
    ("qfm-random-noise", ["method.names=[qfm]", "method.qfm.matching=random"]),
    ("qfm-random-quality", ["method.names=[qfm]", "method.qfm.matching=random-quality"]),
    ("qfm-adversarial", ["method.names=[qfm]", "method.qfm.matching=adversarial"]),
    ("qfm-alpha-0.25", ["method.names=[qfm]", "method.qfm.alpha=0.25"]),
    ("qfm-alpha-1", ["method.names=[qfm]", "method.qfm.alpha=1.0"]),
    ("qfm-tau-0.02", ["method.names=[qfm]", "method.qfm.tau_q=0.02"]),
    ("qfm-tau-0.1", ["method.names=[qfm]", "method.qfm.tau_q=0.1"]),
    ("qfm-no-teacher", ["method.names=[qfm]", "method.qfm.teacher=false"]),
    ("qfm-no-kd", ["method.names=[qfm]", "method.qfm.kd=false"]),
    ("qfm-tokens-only", ["method.names=[qfm]", "method.qfm.perturb=tokens"]),
    # the fair control: DEIQT self-distilled from the same teacher, no memory, no matching
    ("qfm-kd-only", ["method.names=[qfm]", "method.qfm.matching=none"]),
]


def _shared_teacher(folder: Path) -> list[str]:
    """Ablation variants share one teacher per split instead of each fitting its own."""
    return [f"method.qfm.teacher_dir={folder / 'teachers'}"]


@register_method("qfm", config=QFMConfig, ablations=ABLATIONS, ablation_overrides=_shared_teacher)
class QFMMethod(Method):
    """QFM-IQM's training additions: memory, Semantic Noisy Matching, noise loss, teacher, KD.

    ``context`` (from the engine): ``train_table``, ``train_size``, ``settings`` (resolved data
    settings), and ``teacher`` (a frozen DEIQT, from :meth:`prepare`) when
    ``method.qfm.teacher``. The teacher is a submodule (so it follows ``.to(device)``) but never
    trains: it has no gradients, stays in eval mode, is not in the optimiser (not among
    :meth:`trainable_parameters`, which is empty), is left out of checkpoints (it is rebuilt from
    the context) and of the exported model.
    """

    name = "qfm"

    def __init__(self, cfg, model, context: dict | None = None):
        super().__init__()
        context = context or {}
        q = cfg.method.qfm
        self.q = q
        self.data_cfg = cfg.data
        self.beta = cfg.optim.loss_beta
        self.warmup_epochs = cfg.optim.warmup_epochs
        self.seed = cfg.trainer.seed
        self.train_table = context.get("train_table")
        self.settings = context.get("settings")
        train_size = context.get("train_size")
        if train_size is None and self.train_table is not None:
            train_size = len(self.train_table)
        self.capacity = q.capacity or default_capacity(train_size)
        # matching=none: no memory, no matching, no noise (the KD-only control)
        use_memory = q.memory and q.matching != "none"
        self.memory = FeatureMemory(self.capacity, q.half_precision) if use_memory else None
        self.teacher: nn.Module | None = None
        if q.teacher:
            teacher = context.get("teacher")
            if teacher is None:
                raise ConfigError(
                    "method.qfm.teacher=true needs a teacher model in the method context "
                    "(QFMMethod.prepare loads or trains it); set "
                    "method.qfm.teacher=false to train without one")
            teacher.requires_grad_(False)
            teacher.eval()
            self.teacher = teacher
            self.register_state_dict_post_hook(drop_teacher_state)
            self._register_load_state_dict_pre_hook(keep_teacher_state, with_module=True)
        if q.pseudo_label_dir and self.teacher is None:
            raise ConfigError("method.qfm.pseudo_label_dir needs the teacher (method.qfm.teacher=true)")
        self.generator = torch.Generator().manual_seed(self._generator_seed(0))
        self._pseudo: Entries | None = None  # the pseudo-labelled bank (this rank's, CPU)
        self._pseudo_cursor = 0

    @classmethod
    def prepare(cls, cfg, parts, out_dir, settings, fit_fn) -> dict:
        """The frozen teacher (:func:`~nriqa.methods.qfm.teacher.prepare_teacher`), when
        ``method.qfm.teacher``."""
        return prepare_teacher(cfg, parts, out_dir, fit_fn) if cfg.method.qfm.teacher else {}

    # ---------------------------------------------------------------- modes and state
    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # always: Lightning calls .train() on the whole module
        return self

    def _generator_seed(self, rank: int) -> int:
        return int(np.random.SeedSequence([self.seed, rank, 0x0F3]).generate_state(1)[0])

    # ---------------------------------------------------------------- fit start
    def on_fit_start(self, hooks: EngineHooks) -> None:
        rank, _ = dist_info()
        self.generator.manual_seed(self._generator_seed(rank))
        if self.memory is not None:
            self.memory.clear()
        if self.q.pseudo_label_dir:
            self._pseudo = pseudo_label(self.teacher, self.q.pseudo_label_dir, self.data_cfg,
                                        self._settings()[0], self.memory_dtype, hooks.device,
                                        hooks.forward_context, hooks.count)
            self._pseudo_cursor = 0
        if self.memory is not None and self.q.warm_start == "fill":
            self._warm_fill(hooks)
        if self.memory is not None and self._pseudo is not None:
            self.memory.push(self._pseudo.to(hooks.device))

    def unsynced_modules(self) -> list[nn.Module]:
        """The memory: identical on all ranks by construction (every push is all-gathered) and
        large, so DDP does not broadcast it before each forward."""
        return [] if self.memory is None else [self.memory]

    def _settings(self):
        if self.settings is not None:
            return self.settings.resize, self.settings.test_patch_num
        return "none", 1

    @torch.no_grad()
    def _warm_fill(self, hooks: EngineHooks) -> None:
        """One no-grad pass of the student (and teacher) over up to ``warm_fill_images`` training
        images (one deterministic crop each), sharded over ranks."""
        table = self.train_table
        if table is None or len(table) == 0:
            log.warning("QFM-IQM warm fill skipped: no training table in the method context")
            return
        sources = 1 + (self.teacher is not None)
        n = self.q.warm_fill_images or math.ceil(self.capacity / sources)
        n = min(int(n), len(table))
        if n <= 0:
            return
        order = np.random.default_rng([self.seed, 0x0F3]).permutation(len(table))[:n]
        rank, world = dist_info()
        per_rank = math.ceil(n / world)
        order = np.resize(order, per_rank * world)  # pad by repeating, so every rank pushes alike
        mine = order[rank * per_rank:(rank + 1) * per_rank].tolist()
        resize, _ = self._settings()
        d = self.data_cfg
        policy = CropPolicy(d.crop_size, 1, d.test_crops, resize, d.small_image)
        dataset = IQADataset(table, train=False, policy=policy, seed=self.seed)
        model, device = hooks.model, hooks.device
        was_training = model.training
        model.eval()  # no BatchNorm statistics updates, no dropout
        try:
            for batch in DataLoader(Subset(dataset, mine), batch_size=d.batch_size, shuffle=False,
                                    num_workers=d.num_workers):
                x = batch["image"].flatten(0, 1).to(device)
                labels = batch["label"].float().to(device)
                groups = batch["group"].to(device)
                index = batch["index"].to(device)
                with hooks.forward_context():
                    c, tokens = model.features(x)
                    parts = [(c, tokens, SOURCE_STUDENT)]
                    if self.teacher is not None:
                        parts.append((*self.teacher.features(x), SOURCE_TEACHER))
                hooks.count(forward_crops=len(x) * len(parts))
                self.memory.push(stack_entries(parts, labels, groups, index))
        finally:
            model.train(was_training)
        log.info("QFM-IQM memory warm fill: %d entries", len(self.memory))

    @property
    def memory_dtype(self) -> torch.dtype:
        return torch.float16 if self.q.half_precision else torch.float32

    def _pseudo_take(self, n: int) -> Entries | None:
        """The next ``n`` pseudo-labelled entries of this rank, cycling (may be fewer; None for
        none)."""
        total = self._pseudo.rows
        if n <= 0 or total == 0:
            return None
        rows = (self._pseudo_cursor + torch.arange(min(n, total))) % total
        self._pseudo_cursor = int((self._pseudo_cursor + len(rows)) % total)
        return self._pseudo.take(rows)

    # ---------------------------------------------------------------- the step
    def _noise_active(self, ctx: StepContext) -> bool:
        if self.q.lambda_noise <= 0 or self.q.matching == "none":
            return False
        return not (self.q.warm_start == "delay" and ctx.epoch_float < self.warmup_epochs)

    def extra_loss(self, ctx: StepContext) -> tuple[torch.Tensor | None, dict[str, float]]:
        q = self.q
        logs: dict = {}
        total = None
        c, tokens = ctx.c, ctx.tokens
        n = c.shape[0]
        device = c.device
        labels = ctx.labels.float()
        groups = ctx.groups.long().to(device)
        index = ctx.batch.get("index")
        index = (index.long().to(device).repeat_interleave(ctx.crops_per_image)
                 if index is not None else torch.full((n,), -1, dtype=torch.long, device=device))

        # 1-2. the teacher on the same crops, and distillation
        parts = [(c.detach(), tokens.detach(), SOURCE_STUDENT)]
        if self.teacher is not None:
            with torch.no_grad():
                t_c, t_tokens = self.teacher.features(ctx.images)
                if t_tokens.shape[1:] != tokens.shape[1:]:
                    raise ConfigError(
                        f"the QFM-IQM teacher gives tokens {tuple(t_tokens.shape[1:])}, the student "
                        f"{tuple(tokens.shape[1:])}: they must share the token count and width")
                parts.append((t_c, t_tokens, SOURCE_TEACHER))
                t_score = self.teacher.head(t_c, t_tokens).score.float() if q.kd else None
            ctx.count(forward_crops=n)
            if q.kd:
                kd = F.smooth_l1_loss(ctx.out.score.float(), t_score, beta=self.beta)
                logs["qfm_kd"] = kd.detach()
                if q.lambda_kd > 0:
                    total = ctx.add_term("kd", kd, q.lambda_kd)
        entries = stack_entries(parts, labels, groups, index)
        if self._pseudo is not None:
            k = q.pseudo_per_step if q.pseudo_per_step is not None else n
            pseudo = self._pseudo_take(k)
            if pseudo is not None:
                entries = entries.cat(pseudo.to(device))

        # 3-4. match against the memory as it was before this step (or within the step), perturb
        pool = self.memory.entries() if self.memory is not None else entries
        if self._noise_active(ctx) and len(pool.labels) > 0:
            noise, fallback = self._noise_loss(ctx, pool, labels, groups)
            logs["qfm_fallback"] = fallback
            if noise is not None:
                logs["qfm_noise"] = noise.detach()
                term = ctx.add_term("noise", noise, q.lambda_noise)
                total = term if total is None else total + term

        # 5. this step's entries enter the memory (a collective under DDP: every rank, every step)
        if self.memory is not None:
            self.memory.push(entries)
            logs["qfm_memory"] = len(self.memory) / self.capacity
        return total, logs

    def _noise_loss(self, ctx: StepContext, pool: Entries, labels, groups):
        q = self.q
        c, tokens, model = ctx.c, ctx.tokens, ctx.model
        both = q.perturb == "tokens+global"

        def perturbed_loss(top: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
            # one batched decoder pass over the k candidates of every anchor (no gradient)
            b, k = top.shape
            flat = top.reshape(-1)
            with torch.no_grad():
                pt = tokens.detach().repeat_interleave(k, 0) + q.alpha * pool.tokens[flat].to(tokens.dtype)
                pc = c.detach().repeat_interleave(k, 0)
                if both:
                    pc = pc + q.alpha * pool.c[flat].to(c.dtype)
                score = model.head(pc, pt).score.float().view(b, k)
                return F.smooth_l1_loss(score, labels[:, None].expand(b, k), beta=self.beta,
                                        reduction="none")

        result = match(c.detach(), labels, groups, pool.c, pool.labels, pool.groups,
                       rule=q.matching, tau_q=q.tau_q, m=q.m, generator=self.generator,
                       perturbed_loss=perturbed_loss if q.matching == "adversarial" else None)
        fallback = result.fallback.float().mean().detach()
        ok = result.index >= 0
        if not bool(ok.any()):
            return None, fallback
        rows = result.index.clamp(min=0)
        # copies (advanced indexing): later pushes into the memory cannot change them
        noisy_tokens = tokens + q.alpha * pool.tokens[rows].to(tokens.dtype)
        noisy_c = c + q.alpha * pool.c[rows].to(c.dtype) if both else c
        out = model.head(noisy_c, noisy_tokens)
        per = F.smooth_l1_loss(out.score.float(), labels, beta=self.beta, reduction="none")
        okf = ok.float()
        return (per * okf).sum() / okf.sum(), fallback
