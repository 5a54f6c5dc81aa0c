"""DEIQT's attention-panel decoder (Qin et al., AAAI 2023).

One pre-norm transformer decoder layer. Its queries are learned "panel member" embeddings plus the
global feature ``c``; they attend to each other, then to the tokens ``P``. A shared linear head
scores each member and the crop's score is the panel's mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DecoderOutput:
    score: torch.Tensor  # (B,) the panel's mean score
    members: torch.Tensor  # (B, Q) each member's score
    tokens: torch.Tensor  # (B, Q, d) the members' output tokens
    attn: torch.Tensor | None = None  # (B, Q, N) cross-attention over P, averaged over heads


class PanelDecoder(nn.Module):
    def __init__(self, width: int = 384, heads: int = 6, queries: int = 6, ffn_ratio: float = 4.0,
                 dropout: float = 0.0):
        super().__init__()
        self.queries = nn.Parameter(torch.empty(1, queries, width))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.norm1 = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm3 = nn.LayerNorm(width)
        hidden = int(width * ffn_ratio)
        self.ffn = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, width), nn.Dropout(dropout))
        self.head = nn.Linear(width, 1, bias=False)

    def forward(self, c: torch.Tensor, tokens: torch.Tensor, need_attn: bool = False) -> DecoderOutput:
        q = self.queries + c.unsqueeze(1)
        h = self.norm1(q)
        q = q + self.self_attn(h, h, h, need_weights=False)[0]
        h = self.norm2(q)
        # need_weights=False keeps PyTorch's fused attention path; weights only when asked for.
        out, attn = self.cross_attn(h, tokens, tokens, need_weights=need_attn,
                                    average_attn_weights=True)
        q = q + out
        q = q + self.ffn(self.norm3(q))
        # Scores in fp32 even under autocast: bf16 keeps ~3 significant digits, which ties
        # predictions and shifts rank correlations against the fp32 scorer.
        with torch.autocast(q.device.type, enabled=False):
            members = F.linear(q.float(), self.head.weight.float()).squeeze(-1)
        return DecoderOutput(members.mean(1), members, q, attn)
