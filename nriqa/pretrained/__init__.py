"""Shipped pretrained models: ``NAME.safetensors`` (weights) beside ``NAME.json`` (its card).

See :mod:`nriqa.outputs.zoo` and docs/models.md."""
