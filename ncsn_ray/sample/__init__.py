"""Generation and inpainting: sampler settings, sample-set format, the Ray Data pipeline and its actors."""
