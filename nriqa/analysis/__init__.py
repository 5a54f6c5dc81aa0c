"""Pictures that explain models: semantic noise (QFM-IQM), saliency and embeddings (LML-IQA)."""
