"""The DEIQT model: a backbone read by an attention-panel decoder.

Inference is "just call the model": ``model(x)`` scores crops ``(B,3,S,S)``, and
``model(crops)`` with crops ``(B,K,3,S,S)`` averages each image's K crop scores. Pixels are uint8 or
float in [0, 1]; the backbone applies its own normalisation. Scores are higher = better, on the
[0, 1] scale labels are normalised to per dataset before training (not clamped to it).
"""

from __future__ import annotations

import torch
from torch import nn

from nriqa.models.backbones import Backbone
from nriqa.models.decoder import DecoderOutput, PanelDecoder


class DEIQT(nn.Module):
    def __init__(self, backbone: Backbone, decoder: PanelDecoder):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder

    @classmethod
    def from_config(cls, cfg, weights: str | None = None) -> DEIQT:
        """Build from a :class:`nriqa.config.ModelConfig`; ``weights`` overrides ``cfg.weights``."""
        backbone = Backbone.from_config(cfg, weights, width=cfg.width)
        if cfg.freeze or cfg.freeze_bn:
            backbone.freeze(cfg.freeze, cfg.freeze_bn)
        decoder = PanelDecoder(cfg.width, cfg.heads, cfg.queries, cfg.ffn_ratio, cfg.dropout)
        return cls(backbone, decoder)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder inputs: global feature ``(B,d)`` and tokens ``(B,N,d)``."""
        return self.backbone(x)

    def head(self, c: torch.Tensor, tokens: torch.Tensor, need_attn: bool = False) -> DecoderOutput:
        return self.decoder(c, tokens, need_attn=need_attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            return self.score_crops(x)
        return self.head(*self.features(x)).score

    def score_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """Mean score over each image's crops: ``(B,K,3,S,S) -> (B,)``."""
        b, k = crops.shape[:2]
        return self.forward(crops.flatten(0, 1)).view(b, k).mean(1)
