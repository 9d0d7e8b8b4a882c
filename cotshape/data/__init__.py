"""Building the training sets: sampling, verification, selection, paraphrase, degradation."""
