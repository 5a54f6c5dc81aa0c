"""Inference: model files, the model zoo, the Scorer, export and streamed score files."""
