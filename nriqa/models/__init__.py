"""Backbones, the attention-panel decoder and the DEIQT model."""

from nriqa.models.backbones import Backbone
from nriqa.models.decoder import DecoderOutput, PanelDecoder
from nriqa.models.deiqt import DEIQT

__all__ = ["DEIQT", "Backbone", "DecoderOutput", "PanelDecoder"]
