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

import contextlib
import logging
import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nriqa.data.policy import CropPolicy
from nriqa.engine.sampling import dist_info
from nriqa.errors import ConfigError
from nriqa.methods.base import Method, StepContext

log = logging.getLogger(__name__)

SOURCE_STUDENT, SOURCE_TEACHER, SOURCE_PSEUDO = 0, 1, 2
RULES = ("least-similar", "adversarial", "random-quality", "random")
MAX_DEFAULT_CAPACITY = 4096
# Labels are float32: a difference that equals tau_q up to rounding counts as within tau_q.
_TAU_EPS = 1e-6

#: Named variants for ``nriqa ablate``: (name, dotted config overrides).
ABLATIONS: list[tuple[str, list[str]]] = [
    ("deiqt", ["method.name=deiqt"]),
    ("qfm", ["method.name=qfm"]),
    ("qfm-no-memory", ["method.name=qfm", "method.qfm.memory=false"]),
    ("qfm-random-noise", ["method.name=qfm", "method.qfm.matching=random"]),
    ("qfm-random-quality", ["method.name=qfm", "method.qfm.matching=random-quality"]),
    ("qfm-adversarial", ["method.name=qfm", "method.qfm.matching=adversarial"]),
    ("qfm-alpha-0.25", ["method.name=qfm", "method.qfm.alpha=0.25"]),
    ("qfm-alpha-1", ["method.name=qfm", "method.qfm.alpha=1.0"]),
    ("qfm-tau-0.02", ["method.name=qfm", "method.qfm.tau_q=0.02"]),
    ("qfm-tau-0.1", ["method.name=qfm", "method.qfm.tau_q=0.1"]),
    ("qfm-no-teacher", ["method.name=qfm", "method.qfm.teacher=false"]),
    ("qfm-no-kd", ["method.name=qfm", "method.qfm.kd=false"]),
    ("qfm-tokens-only", ["method.name=qfm", "method.qfm.perturb=tokens"]),
    # the fair control: DEIQT self-distilled from the same teacher, no memory, no matching
    ("qfm-kd-only", ["method.name=qfm", "method.qfm.matching=none"]),
]


def default_capacity(train_size: int | None) -> int:
    """``min(2 x training images, 4096)`` entries; 4096 when the training size is unknown."""
    if not train_size:
        return MAX_DEFAULT_CAPACITY
    return max(1, min(2 * int(train_size), MAX_DEFAULT_CAPACITY))


def _as_vector(value, n: int, dtype: torch.dtype, device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        out = value.detach().to(device=device, dtype=dtype).reshape(-1)
        if out.numel() == 1 and n != 1:
            out = out.expand(n)
        if out.numel() != n:
            raise ValueError(f"expected {n} values, got {out.numel()}")
        return out
    return torch.full((n,), value, dtype=dtype, device=device)


# ------------------------------------------------------------------------------------------------
# memory


class FeatureMemory(nn.Module):
    """A FIFO ring buffer of decoder inputs and their facts, of fixed ``capacity``.

    Each entry is ``c (d,)``, ``tokens (N, d)``, ``labels`` ([0, 1]), ``groups`` (content group),
    ``source`` (0 student, 1 teacher, 2 pseudo-labelled) and ``index`` (the table row it came from;
    negative for pseudo-labelled images). Features are stored in fp16 when ``half_precision``.
    Everything lives in non-persistent buffers: ``.to(device)`` moves the memory, and checkpoints
    never contain it (it is temporary and rebuilt by the warm start).

    The feature buffers are allocated at the first :meth:`push` (when ``N`` and ``d`` are known) on
    the pushed tensors' device. Slots ``[0, len)`` always hold the valid entries.

    Under ``torch.distributed``, :meth:`push` first all-gathers the entries of every rank (uneven
    counts are padded and cut back), so all ranks hold the same memory. It is therefore a collective:
    every rank must call it the same number of times.
    """

    def __init__(self, capacity: int, half_precision: bool = True, distributed: bool = True):
        super().__init__()
        if capacity < 1:
            raise ValueError(f"memory capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self.storage_dtype = torch.float16 if half_precision else torch.float32
        self.distributed = distributed
        self.register_buffer("c", torch.empty(0, dtype=self.storage_dtype), persistent=False)
        self.register_buffer("tokens", torch.empty(0, dtype=self.storage_dtype), persistent=False)
        self.register_buffer("labels", torch.zeros(self.capacity), persistent=False)
        self.register_buffer("groups", torch.zeros(self.capacity, dtype=torch.long), persistent=False)
        self.register_buffer("source", torch.zeros(self.capacity, dtype=torch.long), persistent=False)
        self.register_buffer("index", torch.full((self.capacity,), -1, dtype=torch.long),
                             persistent=False)
        self._ptr = 0  # next slot to write
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def allocated(self) -> bool:
        return self.c.dim() == 2

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        shape = tuple(self.tokens.shape[1:]) if self.allocated else "unallocated"
        return f"capacity={self.capacity}, len={self._count}, tokens={shape}, dtype={self.storage_dtype}"

    def clear(self) -> None:
        self._ptr = self._count = 0

    def _allocate(self, n_tokens: int, width: int, device: torch.device) -> None:
        self.c = torch.zeros(self.capacity, width, dtype=self.storage_dtype, device=device)
        self.tokens = torch.zeros(self.capacity, n_tokens, width, dtype=self.storage_dtype,
                                  device=device)
        for name in ("labels", "groups", "source", "index"):
            setattr(self, name, getattr(self, name).to(device))

    @torch.no_grad()
    def push(self, c: torch.Tensor, tokens: torch.Tensor, labels, groups, source=SOURCE_STUDENT,
             index=None) -> None:
        """Append entries (detached), overwriting the oldest ones when full.

        ``c (n,d)``, ``tokens (n,N,d)``, ``labels (n,)``, ``groups (n,)``; ``source`` and ``index``
        a tensor ``(n,)`` or one value for all (``index`` defaults to -1).
        """
        if c.dim() != 2 or tokens.dim() != 3 or c.shape[0] != tokens.shape[0] or c.shape[1] != tokens.shape[2]:
            raise ValueError(f"memory entries need c (n,d) and tokens (n,N,d); got {tuple(c.shape)} "
                             f"and {tuple(tokens.shape)}")
        if self.allocated and tuple(tokens.shape[1:]) != tuple(self.tokens.shape[1:]):
            raise ValueError(
                f"memory entries have {self.tokens.shape[1]} tokens of width {self.tokens.shape[2]}; "
                f"got {tokens.shape[1]} x {tokens.shape[2]} (a teacher must have the student's "
                "token count and decoder width)")
        n, device = c.shape[0], c.device
        c = c.detach()
        tokens = tokens.detach()
        labels = _as_vector(labels, n, torch.float32, device)
        groups = _as_vector(groups, n, torch.long, device)
        source = _as_vector(source, n, torch.long, device)
        index = _as_vector(-1 if index is None else index, n, torch.long, device)
        _, world = dist_info()
        if self.distributed and world > 1:
            c, tokens, labels, groups, source, index = self._gather(c, tokens, labels, groups,
                                                                    source, index)
        self._write(c, tokens, labels, groups, source, index)

    def _gather(self, c, tokens, labels, groups, source, index):
        """All entries of all ranks, rank 0's first: two feature/meta all-gathers + one of counts."""
        dist = torch.distributed
        world = dist.get_world_size()
        device = c.device
        count = torch.tensor([c.shape[0]], dtype=torch.long, device=device)
        counts = [torch.zeros_like(count) for _ in range(world)]
        dist.all_gather(counts, count)
        counts = [int(x.item()) for x in counts]
        top = max(counts)
        feats = torch.cat([c.unsqueeze(1), tokens], 1).to(self.storage_dtype)  # (n, N+1, d)
        # float64 holds labels (float32) and the integer fields (< 2^53) exactly
        meta = torch.stack([labels.double(), groups.double(), source.double(), index.double()], 1)
        pad = top - feats.shape[0]
        if pad:
            feats = torch.cat([feats, feats.new_zeros(pad, *feats.shape[1:])])
            meta = torch.cat([meta, meta.new_zeros(pad, 4)])
        all_feats = [torch.empty_like(feats) for _ in range(world)]
        all_meta = [torch.empty_like(meta) for _ in range(world)]
        dist.all_gather(all_feats, feats.contiguous())
        dist.all_gather(all_meta, meta.contiguous())
        feats = torch.cat([f[:k] for f, k in zip(all_feats, counts)])
        meta = torch.cat([m[:k] for m, k in zip(all_meta, counts)])
        return (feats[:, 0], feats[:, 1:], meta[:, 0].float(), meta[:, 1].long(),
                meta[:, 2].long(), meta[:, 3].long())

    def _write(self, c, tokens, labels, groups, source, index) -> None:
        n = c.shape[0]
        if n == 0:
            return
        if not self.allocated:
            self._allocate(tokens.shape[1], tokens.shape[2], c.device)
        if n > self.capacity:  # only the newest entries survive
            c, tokens, labels = c[-self.capacity:], tokens[-self.capacity:], labels[-self.capacity:]
            groups, source, index = groups[-self.capacity:], source[-self.capacity:], index[-self.capacity:]
            self._ptr = (self._ptr + n - self.capacity) % self.capacity
            n = self.capacity
        device = self.c.device
        pos = (self._ptr + torch.arange(n, device=device)) % self.capacity
        self.c[pos] = c.to(device=device, dtype=self.c.dtype)
        self.tokens[pos] = tokens.to(device=device, dtype=self.tokens.dtype)
        self.labels[pos] = labels.to(device=device, dtype=self.labels.dtype)
        self.groups[pos] = groups.to(device)
        self.source[pos] = source.to(device)
        self.index[pos] = index.to(device)
        self._ptr = (self._ptr + n) % self.capacity
        self._count = min(self._count + n, self.capacity)

    def entries(self) -> dict[str, torch.Tensor]:
        """The valid entries (views of slots ``[0, len)``, not in insertion order)."""
        n = self._count
        if not self.allocated:
            empty = torch.empty(0, device=self.labels.device)
            return {"c": empty.view(0, 0), "tokens": empty.view(0, 0, 0),
                    "labels": self.labels[:0], "groups": self.groups[:0],
                    "source": self.source[:0], "index": self.index[:0]}
        return {"c": self.c[:n], "tokens": self.tokens[:n], "labels": self.labels[:n],
                "groups": self.groups[:n], "source": self.source[:n], "index": self.index[:n]}

    def ordered(self) -> dict[str, torch.Tensor]:
        """The valid entries oldest first (copies)."""
        n = self._count
        order = (self._ptr - n + torch.arange(n, device=self.labels.device)) % self.capacity
        if not self.allocated:
            return self.entries()
        return {name: getattr(self, name)[order]
                for name in ("c", "tokens", "labels", "groups", "source", "index")}


# ------------------------------------------------------------------------------------------------
# matching


class Match(NamedTuple):
    index: torch.Tensor  # (B,) long: the partner's row in the pool; -1 when there is none at all
    fallback: torch.Tensor  # (B,) bool: the anchor had no candidate (fallback or none)


def _uniform(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Uniform [0, 1) draws from a CPU generator (the same on every device), moved to ``device``."""
    return torch.rand(shape, generator=generator).to(device)


def match(anchor_c: torch.Tensor, anchor_labels: torch.Tensor, anchor_groups: torch.Tensor,
          mem_c: torch.Tensor, mem_labels: torch.Tensor, mem_groups: torch.Tensor,
          rule: str = "least-similar", tau_q: float = 0.05, m: int = 8,
          generator: torch.Generator | None = None, perturbed_loss=None) -> Match:
    """Semantic Noisy Matching: for each anchor, the index of a pool entry to add as noise.

    Candidates of anchor i: ``|y_i - y_k| <= tau_q`` and ``g_k != g_i``.

    - ``least-similar``: among the candidates, the ``m`` with the lowest cosine similarity of ``c``;
      one drawn uniformly;
    - ``adversarial``: among those ``m``, the one with the largest ``perturbed_loss``, a callable
      ``(indices (B,k), valid (B,k)) -> losses (B,k)`` (one batched decoder pass);
    - ``random-quality``: any candidate, uniformly;
    - ``random``: any entry of another group, uniformly (quality ignored: the unmatched ablation).

    An anchor without candidates falls back to the nearest-quality entry of another group
    (``fallback`` is True for it); with no other-group entry at all its index is -1. Vectorised
    over anchors; deterministic given a seeded (CPU) ``generator``: the same number of draws is
    made whatever the data.
    """
    if rule not in RULES:
        raise ValueError(f"unknown matching rule {rule!r}; allowed: {', '.join(RULES)}")
    device = anchor_c.device
    b, size = anchor_c.shape[0], mem_c.shape[0]
    if size == 0 or b == 0:
        return Match(torch.full((b,), -1, dtype=torch.long, device=device),
                     torch.ones(b, dtype=torch.bool, device=device))
    a_groups, m_groups = anchor_groups.to(device).long(), mem_groups.to(device).long()
    other = a_groups[:, None] != m_groups[None, :]  # (B, M)
    dq = (anchor_labels.to(device).double()[:, None] - mem_labels.to(device).double()[None, :]).abs()
    cand = other if rule == "random" else other & (dq <= tau_q + _TAU_EPS)
    n_cand = cand.sum(1)
    has = n_cand > 0
    # fallback: the nearest-quality entry of another group
    nearest = dq.masked_fill(~other, math.inf).argmin(1)
    fallback_index = torch.where(other.any(1), nearest, torch.full_like(nearest, -1))

    if rule in ("random", "random-quality"):
        keys = _uniform((b, size), generator, device).masked_fill(~cand, -1.0)
        pick = keys.argmax(1)
    else:
        sim = F.normalize(anchor_c.detach().float(), dim=1) @ F.normalize(
            mem_c.detach().to(device).float(), dim=1).T
        k = min(int(m), size)
        top = sim.masked_fill(~cand, math.inf).topk(k, dim=1, largest=False).indices  # (B, k)
        avail = n_cand.clamp(max=k)
        if rule == "least-similar":
            u = _uniform((b,), generator, device)
            j = (u * avail.clamp(min=1)).floor().long().clamp(max=k - 1)
        else:
            if perturbed_loss is None:
                raise ValueError("the adversarial rule needs perturbed_loss")
            valid = torch.arange(k, device=device)[None, :] < avail[:, None]
            losses = perturbed_loss(top, valid).float().masked_fill(~valid, -math.inf)
            j = losses.argmax(1)
        pick = top.gather(1, j[:, None]).squeeze(1)
    return Match(torch.where(has, pick, fallback_index), ~has)


# ------------------------------------------------------------------------------------------------
# the method


class _Pool(NamedTuple):
    c: torch.Tensor
    tokens: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor


class QFMMethod(Method):
    """QFM-IQM's training additions: memory, Semantic Noisy Matching, noise loss, teacher, KD.

    ``context`` (from :func:`nriqa.engine.train.method_context`): ``train_table``, ``train_size``,
    ``settings`` (resolved data settings), and ``teacher`` (a frozen DEIQT) when
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
                    "(nriqa.engine.train.method_context loads or trains it); set "
                    "method.qfm.teacher=false to train without one")
            teacher.requires_grad_(False)
            teacher.eval()
            self.teacher = teacher
            self.register_state_dict_post_hook(_drop_teacher_state)
            self._register_load_state_dict_pre_hook(_keep_teacher_state, with_module=True)
        if q.pseudo_label_dir and self.teacher is None:
            raise ConfigError("method.qfm.pseudo_label_dir needs the teacher (method.qfm.teacher=true)")
        self.generator = torch.Generator().manual_seed(self._generator_seed(0))
        self._pseudo: dict[str, torch.Tensor] | None = None
        self._pseudo_cursor = 0

    # ---------------------------------------------------------------- modes and state
    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # always: Lightning calls .train() on the whole module
        return self

    def _generator_seed(self, rank: int) -> int:
        return int(np.random.SeedSequence([self.seed, rank, 0x0F3]).generate_state(1)[0])

    # ---------------------------------------------------------------- fit start
    def on_fit_start(self, module) -> None:
        rank, _ = dist_info()
        self.generator.manual_seed(self._generator_seed(rank))
        self._exclude_memory_from_ddp_sync(module)
        if self.memory is not None:
            self.memory.clear()
        if self.q.pseudo_label_dir:
            self._pseudo = self._pseudo_label(module)
            self._pseudo_cursor = 0
        if self.memory is not None and self.q.warm_start == "fill":
            self._warm_fill(module)
        if self.memory is not None and self._pseudo is not None:
            p = self._pseudo
            device = module.device
            self.memory.push(p["c"].to(device), p["tokens"].to(device), p["labels"].to(device),
                             p["groups"].to(device), SOURCE_PSEUDO, p["index"].to(device))

    def _exclude_memory_from_ddp_sync(self, module) -> None:
        """DDP broadcasts every buffer from rank 0 before each forward; the memory is identical on
        all ranks by construction and large, so it is taken out of that list."""
        trainer = getattr(module, "_trainer", None)
        wrapped = getattr(getattr(trainer, "strategy", None), "model", None) if trainer else None
        if self.memory is None or not isinstance(wrapped, nn.parallel.DistributedDataParallel):
            return
        names = {f"{prefix}.{name}" for prefix, sub in wrapped.module.named_modules()
                 if sub is self.memory for name, _ in sub.named_buffers(recurse=False)}
        wrapped.parameters_to_ignore.update(names)

    def _autocast(self, module):
        trainer = getattr(module, "_trainer", None)
        plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
        return plugin.forward_context() if plugin is not None else contextlib.nullcontext()

    def _loader(self, dataset, module):
        from torch.utils.data import DataLoader

        return DataLoader(dataset, batch_size=self.data_cfg.batch_size, shuffle=False,
                          num_workers=self.data_cfg.num_workers)

    def _settings(self):
        if self.settings is not None:
            return self.settings.resize, self.settings.test_patch_num
        return "none", 1

    @torch.no_grad()
    def _warm_fill(self, module) -> None:
        """One no-grad pass of the student (and teacher) over up to ``warm_fill_images`` training
        images (one deterministic crop each), sharded over ranks."""
        from torch.utils.data import Subset

        from nriqa.data.dataset import IQADataset

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
        model, device = module.model, module.device
        was_training = model.training
        model.eval()  # no BatchNorm statistics updates, no dropout
        try:
            for batch in self._loader(Subset(dataset, mine), module):
                x = batch["image"].flatten(0, 1).to(device)
                labels = batch["label"].float().to(device)
                groups = batch["group"].to(device)
                index = batch["index"].to(device)
                with self._autocast(module):
                    c, tokens = model.features(x)
                    parts = [(c, tokens, SOURCE_STUDENT)]
                    if self.teacher is not None:
                        parts.append((*self.teacher.features(x), SOURCE_TEACHER))
                self.count(module, forward_crops=len(x) * len(parts))
                self.memory.push(*_stack_entries(parts, labels, groups, index))
        finally:
            model.train(was_training)
        log.info("QFM-IQM memory warm fill: %d entries", len(self.memory))

    @torch.no_grad()
    def _pseudo_label(self, module) -> dict[str, torch.Tensor]:
        """Teacher features and scores of one deterministic (centre) crop of each unlabelled image
        under ``pseudo_label_dir``; this rank's share, kept on the CPU."""
        from torch.utils.data import DataLoader

        from nriqa.data.dataset import ImageListDataset
        from nriqa.inference.scoring import find_images

        folder = self.q.pseudo_label_dir
        paths = find_images([folder], recursive=True)
        if not paths:
            raise ConfigError(f"{folder}: no images to pseudo-label (method.qfm.pseudo_label_dir)")
        rank, world = dist_info()
        positions = list(range(rank, len(paths), world))
        resize, _ = self._settings()
        d = self.data_cfg
        policy = CropPolicy(d.crop_size, 1, "grid", resize, d.small_image)
        dataset = ImageListDataset([paths[i] for i in positions], policy)
        device = module.device
        out = {k: [] for k in ("c", "tokens", "labels", "groups", "index")}
        bad = 0
        for batch in DataLoader(dataset, batch_size=d.batch_size, num_workers=d.num_workers):
            ok = torch.tensor([not e for e in batch["error"]], dtype=torch.bool)
            bad += int((~ok).sum())
            if not ok.any():
                continue
            x = batch["image"][ok].flatten(0, 1).to(device)
            with self._autocast(module):
                c, tokens = self.teacher.features(x)
                score = self.teacher.head(c, tokens).score
            self.count(module, forward_crops=len(x))
            pos = torch.tensor(positions)[batch["index"][ok]]
            out["c"].append(c.to("cpu", self.memory_dtype))
            out["tokens"].append(tokens.to("cpu", self.memory_dtype))
            out["labels"].append(score.float().cpu())
            out["groups"].append(-1 - pos)  # own groups, disjoint from the training groups (>= 0)
            out["index"].append(-1 - pos)
        if bad:
            log.warning("QFM-IQM pseudo-labelling: %d unreadable file(s) under %s skipped", bad, folder)
        if not out["c"]:  # nothing on this rank: an empty bank of the right shape (DDP gathers it)
            probe = torch.zeros(1, 3, d.crop_size, d.crop_size, dtype=torch.uint8, device=device)
            _, tokens = self.teacher.features(probe)
            n_tokens, width = tokens.shape[1:]
            return {"c": torch.zeros(0, width), "tokens": torch.zeros(0, n_tokens, width),
                    "labels": torch.zeros(0), "groups": torch.zeros(0, dtype=torch.long),
                    "index": torch.zeros(0, dtype=torch.long)}
        bank = {k: torch.cat(v) for k, v in out.items()}
        log.info("QFM-IQM pseudo-labelled %d image(s) on rank %d", len(bank["labels"]), rank)
        return bank

    @property
    def memory_dtype(self) -> torch.dtype:
        return torch.float16 if self.q.half_precision else torch.float32

    def _pseudo_take(self, n: int, like: torch.Tensor):
        """The next ``n`` pseudo-labelled entries of this rank, cycling (may be fewer)."""
        p = self._pseudo
        total = len(p["labels"])
        if n <= 0 or total == 0:
            shape = like.shape[1:]
            empty = like.new_zeros(0, *shape)
            return (empty[:, 0], empty, like.new_zeros(0, dtype=torch.float32),
                    torch.zeros(0, dtype=torch.long, device=like.device),
                    torch.zeros(0, dtype=torch.long, device=like.device))
        rows = (self._pseudo_cursor + torch.arange(min(n, total))) % total
        self._pseudo_cursor = int((self._pseudo_cursor + len(rows)) % total)
        dev = like.device
        return (p["c"][rows].to(dev), p["tokens"][rows].to(dev), p["labels"][rows].to(dev),
                p["groups"][rows].to(dev), p["index"][rows].to(dev))

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
            self.count(ctx.module, forward_crops=n)
            if q.kd:
                kd = F.smooth_l1_loss(ctx.out.score.float(), t_score, beta=self.beta)
                logs["qfm_kd"] = kd.detach()
                if q.lambda_kd > 0:
                    total = ctx.add_term("kd", kd, q.lambda_kd)
        entries = _stack_entries(parts, labels, groups, index)
        if self._pseudo is not None:
            k = q.pseudo_per_step if q.pseudo_per_step is not None else n
            pc, pt, pl, pg, pi = self._pseudo_take(k, tokens.detach())
            entries = _append_entries(entries, pc, pt, pl, pg, SOURCE_PSEUDO, pi)

        # 3-4. match against the memory as it was before this step (or within the step), perturb
        if self.memory is not None:
            mem = self.memory.entries()
            pool = _Pool(mem["c"], mem["tokens"], mem["labels"], mem["groups"])
        else:
            pool = _Pool(entries[0], entries[1], entries[2], entries[3])
        if self._noise_active(ctx) and len(pool.labels) > 0:
            noise, fallback = self._noise_loss(ctx, pool, labels, groups)
            logs["qfm_fallback"] = fallback
            if noise is not None:
                logs["qfm_noise"] = noise.detach()
                term = ctx.add_term("noise", noise, q.lambda_noise)
                total = term if total is None else total + term

        # 5. this step's entries enter the memory (a collective under DDP: every rank, every step)
        if self.memory is not None:
            self.memory.push(*entries)
            logs["qfm_memory"] = len(self.memory) / self.capacity
        return total, logs

    def _noise_loss(self, ctx: StepContext, pool: _Pool, labels, groups):
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


def _stack_entries(parts, labels, groups, index):
    """[(c, tokens, source), ...] of the same crops -> one batch of memory entries."""
    c = torch.cat([p[0] for p in parts])
    tokens = torch.cat([p[1] for p in parts])
    rep = len(parts)
    source = torch.cat([torch.full((p[0].shape[0],), p[2], dtype=torch.long, device=c.device)
                        for p in parts])
    return (c, tokens, labels.float().repeat(rep), groups.long().repeat(rep), source,
            index.long().repeat(rep))


def _append_entries(entries, c, tokens, labels, groups, source, index):
    ec, et, el, eg, es, ei = entries
    if c.shape[0] == 0:
        return entries
    src = torch.full((c.shape[0],), source, dtype=torch.long, device=ec.device)
    return (torch.cat([ec, c.to(ec.dtype)]), torch.cat([et, tokens.to(et.dtype)]),
            torch.cat([el, labels.float()]), torch.cat([eg, groups.long()]), torch.cat([es, src]),
            torch.cat([ei, index.long()]))


def _drop_teacher_state(module, state_dict, prefix, local_metadata) -> None:
    """Checkpoints leave the frozen teacher out: it is rebuilt from the method context."""
    for key in [k for k in state_dict if k.startswith(prefix + "teacher.")]:
        del state_dict[key]


def _keep_teacher_state(module, state_dict, prefix, local_metadata, strict, missing_keys,
                        unexpected_keys, error_msgs) -> None:
    """Loading a checkpoint (which has no teacher) keeps the current teacher's weights."""
    if module.teacher is None:
        return
    for key, value in module.teacher.state_dict().items():
        state_dict.setdefault(prefix + "teacher." + key, value)
