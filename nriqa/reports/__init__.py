"""Reports and pictures for people: the demo report, the HTML score gallery, the analysis
pictures (semantic noise, saliency, embeddings) and a run's logs as tables."""
