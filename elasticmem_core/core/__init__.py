"""Foundations every part uses: typed config, run bookkeeping, the frozen backbone and sentence embedder, seeded
sampling, intervals and tests, greedy evaluation and results files."""
