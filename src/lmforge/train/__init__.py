"""Training: stages, callbacks, checkpoints."""
