"""Training: the Ray Train job, the per-worker loop, checkpoints and imports of published weights."""
