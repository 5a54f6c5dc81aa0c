"""Shipped pretrained models: ``NAME.safetensors`` (weights) beside ``NAME.json`` (its card).

See :mod:`nriqa.inference.zoo` and docs/models.md."""
