"""The CORA model: CLIP backbone, text embeddings, region classifier, pre-matching, localizer."""
