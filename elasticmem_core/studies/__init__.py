"""Studies on a trained checkpoint: the budget frontier and its envelope, retrieval, compression, the walkthrough."""
