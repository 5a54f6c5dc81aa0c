"""QFM-IQM's temporary memory: decoder inputs and their facts, one :class:`Entries` type for all."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torchmetrics.utilities.distributed import gather_all_tensors

from nriqa.data.distributed import dist_info

SOURCE_STUDENT, SOURCE_TEACHER, SOURCE_PSEUDO = 0, 1, 2
MAX_DEFAULT_CAPACITY = 4096


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


class Entries(NamedTuple):
    """Memory entries, one row per crop: what is pushed, what the memory holds, a matching pool."""

    c: torch.Tensor  # (n, d) global feature (decoder input)
    tokens: torch.Tensor  # (n, N, d) tokens (decoder input)
    labels: torch.Tensor  # (n,) float32 [0, 1] label (a teacher's score when pseudo-labelled)
    groups: torch.Tensor  # (n,) long content group
    source: torch.Tensor  # (n,) long SOURCE_STUDENT / SOURCE_TEACHER / SOURCE_PSEUDO
    index: torch.Tensor  # (n,) long table row; negative for pseudo-labelled images

    @classmethod
    def of(cls, c: torch.Tensor, tokens: torch.Tensor, labels, groups, source=SOURCE_STUDENT,
           index=None) -> Entries:
        """Detached entries on ``c``'s device; ``labels``, ``groups``, ``source`` and ``index`` a
        tensor ``(n,)`` or one value for all (``index`` defaults to -1)."""
        n, device = c.shape[0], c.device
        return cls(c.detach(), tokens.detach(), _as_vector(labels, n, torch.float32, device),
                   _as_vector(groups, n, torch.long, device),
                   _as_vector(source, n, torch.long, device),
                   _as_vector(-1 if index is None else index, n, torch.long, device))

    @property
    def rows(self) -> int:
        return self.labels.shape[0]

    def take(self, rows) -> Entries:
        return Entries(*(t[rows] for t in self))

    def to(self, device) -> Entries:
        return Entries(*(t.to(device) for t in self))

    def cat(self, other: Entries) -> Entries:
        """These entries then ``other``'s (its features in these entries' dtypes)."""
        if other.rows == 0:
            return self
        return Entries(torch.cat([self.c, other.c.to(self.c.dtype)]),
                       torch.cat([self.tokens, other.tokens.to(self.tokens.dtype)]),
                       torch.cat([self.labels, other.labels.float()]),
                       torch.cat([self.groups, other.groups.long()]),
                       torch.cat([self.source, other.source.long()]),
                       torch.cat([self.index, other.index.long()]))


def stack_entries(parts, labels: torch.Tensor, groups: torch.Tensor, index: torch.Tensor) -> Entries:
    """``[(c, tokens, source), ...]`` of the same crops (student, teacher) -> one batch of entries."""
    c = torch.cat([p[0] for p in parts])
    tokens = torch.cat([p[1] for p in parts])
    rep = len(parts)
    source = torch.cat([torch.full((p[0].shape[0],), p[2], dtype=torch.long, device=c.device)
                        for p in parts])
    return Entries(c, tokens, labels.float().repeat(rep), groups.long().repeat(rep), source,
                   index.long().repeat(rep))


class FeatureMemory(nn.Module):
    """A FIFO ring buffer of :class:`Entries`, of fixed ``capacity``.

    Features are stored in fp16 when ``half_precision``. Everything lives in non-persistent
    buffers: ``.to(device)`` moves the memory, and checkpoints never contain it (it is temporary
    and rebuilt by the warm start).

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
    def push(self, entries: Entries) -> None:
        """Append entries (detached), overwriting the oldest ones when full."""
        c, tokens = entries.c, entries.tokens
        if c.dim() != 2 or tokens.dim() != 3 or c.shape[0] != tokens.shape[0] or c.shape[1] != tokens.shape[2]:
            raise ValueError(f"memory entries need c (n,d) and tokens (n,N,d); got {tuple(c.shape)} "
                             f"and {tuple(tokens.shape)}")
        if self.allocated and tuple(tokens.shape[1:]) != tuple(self.tokens.shape[1:]):
            raise ValueError(
                f"memory entries have {self.tokens.shape[1]} tokens of width {self.tokens.shape[2]}; "
                f"got {tokens.shape[1]} x {tokens.shape[2]} (a teacher must have the student's "
                "token count and decoder width)")
        entries = Entries.of(*entries)
        _, world = dist_info()
        if self.distributed and world > 1:
            entries = self._gather(entries)
        self._write(entries)

    def _gather(self, e: Entries) -> Entries:
        """All entries of all ranks, rank 0's first (features and facts in one tensor each)."""
        feats = torch.cat([e.c.unsqueeze(1), e.tokens], 1).to(self.storage_dtype)  # (n, N+1, d)
        # float64 holds labels (float32) and the integer fields (< 2^53) exactly
        meta = torch.stack([e.labels.double(), e.groups.double(), e.source.double(),
                            e.index.double()], 1)
        feats = torch.cat(gather_all_tensors(feats))  # uneven counts: padded, gathered, cut back
        meta = torch.cat(gather_all_tensors(meta))
        return Entries(feats[:, 0], feats[:, 1:], meta[:, 0].float(), meta[:, 1].long(),
                       meta[:, 2].long(), meta[:, 3].long())

    def _write(self, e: Entries) -> None:
        n = e.rows
        if n == 0:
            return
        if not self.allocated:
            self._allocate(e.tokens.shape[1], e.tokens.shape[2], e.c.device)
        if n > self.capacity:  # only the newest entries survive
            e = e.take(slice(-self.capacity, None))
            self._ptr = (self._ptr + n - self.capacity) % self.capacity
            n = self.capacity
        device = self.c.device
        pos = (self._ptr + torch.arange(n, device=device)) % self.capacity
        self.c[pos] = e.c.to(device=device, dtype=self.c.dtype)
        self.tokens[pos] = e.tokens.to(device=device, dtype=self.tokens.dtype)
        self.labels[pos] = e.labels.to(device=device, dtype=self.labels.dtype)
        self.groups[pos] = e.groups.to(device)
        self.source[pos] = e.source.to(device)
        self.index[pos] = e.index.to(device)
        self._ptr = (self._ptr + n) % self.capacity
        self._count = min(self._count + n, self.capacity)

    def entries(self) -> Entries:
        """The valid entries (views of slots ``[0, len)``, not in insertion order)."""
        n = self._count
        if not self.allocated:
            empty = torch.empty(0, device=self.labels.device)
            return Entries(empty.view(0, 0), empty.view(0, 0, 0), self.labels[:0], self.groups[:0],
                           self.source[:0], self.index[:0])
        return Entries(self.c[:n], self.tokens[:n], self.labels[:n], self.groups[:n],
                       self.source[:n], self.index[:n])

    def ordered(self) -> Entries:
        """The valid entries oldest first (copies)."""
        if not self.allocated:
            return self.entries()
        n = self._count
        order = (self._ptr - n + torch.arange(n, device=self.labels.device)) % self.capacity
        return Entries(self.c, self.tokens, self.labels, self.groups, self.source,
                       self.index).take(order)
