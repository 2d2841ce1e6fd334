"""Training: GRPO (with its supervised and warm-up stages) and the alignment stage beyond the paper."""
