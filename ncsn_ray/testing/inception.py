"""Random InceptionV3 weights in torch-fidelity's format, for tests and benchmarks offline.

The real weights cannot be downloaded everywhere. This is torch-fidelity's own
``FeatureExtractorInceptionV3`` architecture, randomly initialised (He-normal convolutions so
features keep a usable scale), saved as the plain ``state_dict`` its
``feature_extractor_weights_path`` loads. It costs what the real network costs; scores made
with it only prove the plumbing.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["random_inception_weights"]


def random_inception_weights(folder: Path, seed: int = 0) -> Path:
    """Write ``folder/weights-inception-random.pth`` and return its path."""
    import torch
    from torch import nn
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Untrained(FeatureExtractorInceptionV3):
        # torch-fidelity's constructor loads weights; load nothing (keep the random init).
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return super().load_state_dict(state_dict, strict=False)

    empty = folder / "empty.pt"
    torch.save({}, empty)
    torch.manual_seed(seed)
    network = Untrained("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = folder / "weights-inception-random.pth"
    torch.save(network.state_dict(), path)
    return path
