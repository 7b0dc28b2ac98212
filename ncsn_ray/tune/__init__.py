"""Sampler search: the settings worth trying for a checkpoint, trials on Ray Tune, the quality-versus-cost front."""
