"""Score networks s_theta(x, i) ~ grad_x log q_{sigma_i}(x).

* :class:`NCSN` is the paper's image model (Appendix A): a RefineNet-style U-Net with
  dilated convolutions, conditional instance normalisation++ and ELU. One network serves
  every noise level; it is conditioned on the level index. Images come in as pixels in
  ``[0, 1]`` and are mapped to ``2x - 1`` inside the network. Like the original NCSN (and
  unlike NCSNv2) the output is *not* divided by sigma.
* :class:`NCSNv2` is the follow-up's network: the same RefineNet, unconditional, with the
  output divided by the level's sigma.
* :class:`PreconditionedUNet` is a small noise-conditional U-Net (convolutions at H and H/2, a
  dense bottleneck) with EDM's preconditioning, for small images: the digits default. Its
  convolutions share weights across positions, which the digits' strokes reward: at the same
  training cost it covers the digits' variety (recall) where the MLP below draws prototypes
  (docs/results/quality.md).
* :class:`PreconditionedMLP` is a sigma-conditioned MLP denoiser with EDM's preconditioning
  (Karras et al. 2022), for images small enough to flatten (the 8x8 digits: D = 64): the
  digits default before the U-Net (clean samples, too alike).
* :class:`ToyScoreMLP` is a small level-conditioned MLP for 2-D toy data.

All have the signature ``model(x, level) -> score`` with ``score.shape == x.shape`` and
``level`` a ``(B,)`` int64 tensor of indices into the noise ladder (0 = largest sigma).
A network with a score at any sigma says how in its class attribute ``any_sigma``:
``"scaled"`` (NCSNv2: the output at any level, rescaled by sigma_level / sigma) or
``"value"`` (:class:`PreconditionedMLP`, :class:`PreconditionedUNet`: ``level`` may be a float
``(B,)`` tensor of sigmas).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from .layers import ELU, CondRefineBlock, CondResidualBlock, conv3x3, make_norm
from .wrappers import unwrap_model

__all__ = ["NCSN", "NCSNv2", "PreconditionedMLP", "PreconditionedUNet", "ToyScoreMLP", "ANY_SIGMA_KINDS",
           "VALUE_CONDITIONED_KINDS", "build_model", "make_score_fn", "unwrap_model"]

ANY_SIGMA_KINDS = ("ncsnv2", "mlp", "unet")  # model.kind values whose network has a score at every sigma
VALUE_CONDITIONED_KINDS = ("mlp", "unet")  # ... conditioned on sigma's value (they train on any sigma, too)


class _RefineNetScore(nn.Module):
    """The dilated RefineNet both score networks share (layer names as in :class:`NCSN`).

    Encoder (channels for width ``ngf``; resolution relative to the input H):
      conv3x3 -> ngf @H
      2 residual blocks ngf @H
      2 residual blocks 2ngf, first one downsamples @H/2
      2 residual blocks 2ngf, dilation 2 @H/2
      2 residual blocks 2ngf, dilation 4 @H/2
    Decoder: four RefineNet blocks fusing the encoder stages back up to @H, then
    norm, ELU, conv3x3 to the input channels. ``conditional``: NCSN's level-conditioned
    norms everywhere and average pooling; otherwise NCSNv2's plain norms in the encoder,
    no norms in the RefineNet blocks and max pooling.
    """

    def __init__(self, channels: int, num_levels: int, ngf: int, *, conditional: bool):
        super().__init__()
        if channels < 1 or num_levels < 1 or ngf < 1:
            raise ValueError(f"channels, num_levels and ngf must be positive (got {channels}, {num_levels}, {ngf})")
        self.channels, self.num_levels, self.ngf = channels, num_levels, ngf
        L = num_levels
        norm = "conditional" if conditional else "plain"
        refine = {"normalized": conditional, "pool": "avg" if conditional else "max"}
        self.begin_conv = conv3x3(channels, ngf)
        self.res1 = nn.ModuleList([CondResidualBlock(ngf, ngf, L, norm=norm), CondResidualBlock(ngf, ngf, L, norm=norm)])
        self.res2 = nn.ModuleList([
            CondResidualBlock(ngf, 2 * ngf, L, resample="down", norm=norm),
            CondResidualBlock(2 * ngf, 2 * ngf, L, norm=norm),
        ])
        self.res3 = nn.ModuleList([
            CondResidualBlock(2 * ngf, 2 * ngf, L, resample="down", dilation=2, norm=norm),
            CondResidualBlock(2 * ngf, 2 * ngf, L, dilation=2, norm=norm),
        ])
        self.res4 = nn.ModuleList([
            CondResidualBlock(2 * ngf, 2 * ngf, L, resample="down", dilation=4, norm=norm),
            CondResidualBlock(2 * ngf, 2 * ngf, L, dilation=4, norm=norm),
        ])
        self.refine4 = CondRefineBlock([2 * ngf], 2 * ngf, L, **refine)
        self.refine3 = CondRefineBlock([2 * ngf, 2 * ngf], 2 * ngf, L, **refine)
        self.refine2 = CondRefineBlock([2 * ngf, 2 * ngf], ngf, L, **refine)
        self.refine1 = CondRefineBlock([ngf, ngf], ngf, L, end=True, **refine)
        self.end_norm = make_norm(norm, ngf, L)
        self.end_conv = conv3x3(ngf, channels)
        self.act = ELU()

    @staticmethod
    def _stage(blocks: nn.ModuleList, h: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            h = block(h, level)
        return h

    def refinenet(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, H, W)`` pixels in [0, 1] (mapped to ``2x - 1`` here); ``level``: ``(B,)``."""
        h = self.begin_conv(2.0 * x - 1.0)
        l1 = self._stage(self.res1, h, level)
        l2 = self._stage(self.res2, l1, level)
        l3 = self._stage(self.res3, l2, level)
        l4 = self._stage(self.res4, l3, level)
        r4 = self.refine4([l4], level, l4.shape[-2:])
        r3 = self.refine3([l3, r4], level, l3.shape[-2:])
        r2 = self.refine2([l2, r3], level, l2.shape[-2:])
        r1 = self.refine1([l1, r2], level, l1.shape[-2:])
        return self.end_conv(self.act(self.end_norm(r1, level)))


class NCSN(_RefineNetScore):
    """Noise Conditional Score Network, ``CondRefineNetDilated`` of the paper (Appendix A).

    Every norm is conditioned on the noise level (conditional instance norm++); the output
    is the score itself (not divided by sigma). Numerics as the original code
    (ermongroup/ncsn): see :mod:`ncsn_core.layers`.

    Args:
        channels: image channels (1 for MNIST/digits, 3 for CIFAR-10/CelebA).
        num_levels: L, the number of noise levels the network is conditioned on.
        ngf: base width (64 for MNIST, 128 for CIFAR-10 and CelebA in the paper).

    Any image size works (odd sizes are rounded up by the single downsampling step).
    """

    def __init__(self, channels: int, num_levels: int, ngf: int = 64):
        super().__init__(channels, num_levels, ngf, conditional=True)

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, H, W)`` pixels in [0, 1]; ``level``: ``(B,)`` int64. Returns ``(B, C, H, W)``."""
        return self.refinenet(x, level)


class NCSNv2(_RefineNetScore):
    """NCSNv2's score network (Song & Ermon 2020, ``NCSNv2`` of ermongroup/ncsnv2, used for
    32x32 and 64x64 images): the same dilated RefineNet, *unconditional* (plain instance
    norm++ in the encoder, no norms and max pooling in the RefineNet blocks), and the output
    divided by the level's sigma (technique 3: ``s(x, sigma) = s(x) / sigma``).

    Args:
        channels: image channels.
        sigmas: the noise ladder ``(L,)``, descending; kept as the buffer ``sigmas``.
        ngf: base width (128 for CIFAR-10 and CelebA in NCSNv2).
    """

    any_sigma = "scaled"

    def __init__(self, channels: int, sigmas: torch.Tensor, ngf: int = 128):
        super().__init__(channels, int(sigmas.numel()), ngf, conditional=False)
        self.register_buffer("sigmas", sigmas.detach().clone().to(torch.float32))

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, H, W)`` pixels in [0, 1]; ``level``: ``(B,)`` int64 indices into the ladder,
        or a float ``(B,)`` tensor of sigmas themselves (the network is unconditional: sigma only
        scales its output). Returns ``(B, C, H, W)``."""
        sigma = level.to(x.dtype) if level.is_floating_point() else self.sigmas[level]
        unconditional = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self.refinenet(x, unconditional) / sigma.view(-1, *([1] * (x.ndim - 1)))


class _Preconditioned(nn.Module):
    """EDM's preconditioning (Karras et al. 2022, Table 1) around a raw network ``F``, returning
    the score. With ``sigma_d`` the data's standard deviation (``model.sigma_data``)::

        c_skip = sigma_d^2 / (sigma^2 + sigma_d^2)     c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2)
        c_in = 1 / sqrt(sigma^2 + sigma_d^2)            c_noise = log(sigma) / 4
        D(x, sigma) = c_skip x + c_out F(c_in (x - 1/2), c_noise)       (the denoiser)
        s(x, sigma) = (D(x, sigma) - x) / sigma^2                       (Tweedie's formula)

    Pixels are in ``[0, 1]``; the input is centred on 1/2 before scaling. Trained with
    :func:`ncsn_core.losses.dsm_loss` and ``sigma_data`` (EDM's weighting
    ``lambda(sigma) = sigma^2 (sigma^2 + sigma_d^2) / sigma_d^2`` on the score, which is
    ``1 / c_out^2`` on the denoiser: every level's target for ``F`` has unit variance).
    Subclasses define ``raw(x_in (B, C, H, W), c_noise (B,)) -> (B, C, H, W)``.
    """

    any_sigma = "value"

    def __init__(self, sigmas: torch.Tensor, sigma_data: float):
        super().__init__()
        self.sigma_data = float(sigma_data)
        self.register_buffer("sigmas", sigmas.detach().clone().to(torch.float32))

    def raw(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _sigma(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """``(B,)`` sigmas: ``level`` itself when it holds floats, else the ladder at those indices."""
        sigma = level if level.is_floating_point() else self.sigmas[level]
        return sigma.to(x.dtype).reshape(x.shape[0])

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``D(x, sigma)``: ``x`` ``(B, C, H, W)``, ``sigma`` ``(B,)`` -> ``(B, C, H, W)``."""
        s = sigma.view(-1, *([1] * (x.ndim - 1)))
        var = s**2 + self.sigma_data**2
        c_skip, c_out, c_in = self.sigma_data**2 / var, s * self.sigma_data / var.sqrt(), var.rsqrt()
        return c_skip * x + c_out * self.raw(c_in * (x - 0.5), sigma.log() / 4)

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, H, W)`` pixels in [0, 1]; ``level``: ``(B,)`` int64 ladder indices or
        float sigmas. Returns the score ``(B, C, H, W)``."""
        sigma = self._sigma(x, level)
        return (self.denoise(x, sigma) - x) / sigma.view(-1, *([1] * (x.ndim - 1))) ** 2


class PreconditionedMLP(_Preconditioned):
    """A sigma-conditioned MLP denoiser with EDM's preconditioning (:class:`_Preconditioned`),
    for images flattened to vectors, returning the score.

    ``F``: the flattened image through ``Linear(D, width)`` plus an embedding of ``c_noise``
    (``Linear(1, 64) -> SiLU -> Linear(64, width)``), SiLU, then ``depth - 1`` blocks of
    ``Linear(width, width) -> SiLU``, and ``Linear(width, D)``.

    Args:
        shape: ``(C, H, W)`` of the images.
        sigmas: the noise ladder ``(L,)``, descending; kept as the buffer ``sigmas``.
        width: hidden width; depth: hidden layers; sigma_data: ``sigma_d``.
    """

    def __init__(self, shape: tuple[int, int, int], sigmas: torch.Tensor, width: int = 512, depth: int = 4,
                 sigma_data: float = 0.5):
        super().__init__(sigmas, sigma_data)
        self.shape = tuple(shape)
        dim = self.shape[0] * self.shape[1] * self.shape[2]
        self.noise_embedding = nn.Sequential(nn.Linear(1, 64), nn.SiLU(), nn.Linear(64, width))
        self.inp = nn.Linear(dim, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.out = nn.Linear(width, dim)
        self.act = nn.SiLU()

    def raw(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        h = self.act(self.inp(x_in.flatten(1)) + self.noise_embedding(c_noise.view(-1, 1)))
        for layer in self.hidden:
            h = self.act(layer(h))
        return self.out(h).view_as(x_in)


class _FiLMResBlock(nn.Module):
    """``x -> (skip(x) + conv(act(FiLM(norm(conv(act(norm(x))))))) / sqrt 2``: two 3x3
    convolutions, the noise embedding as a per-channel scale and shift between them (FiLM),
    GroupNorm before each (``groups`` 0: none), SiLU."""

    def __init__(self, c_in: int, c_out: int, embedding: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in) if groups else nn.Identity()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(embedding, 2 * c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out) if groups else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        scale, shift = self.film(embedding)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(self.act(self.norm2(h) * (1 + scale) + shift))
        return (self.skip(x) + h) * 2**-0.5


class PreconditionedUNet(_Preconditioned):
    """A small noise-conditional U-Net with EDM's preconditioning (:class:`_Preconditioned`),
    for small images (the 8x8 digits), returning the score.

    ``F`` for width ``c`` (``model.ngf``) on ``(C, H, W)`` images, every block conditioned on an
    embedding of ``c_noise`` (``Linear(1, 128) -> SiLU -> Linear(128, 128)``) through FiLM::

        conv3x3 C -> c                                   @H
        res block c -> c                  (e1)           @H
        conv3x3 stride 2, c -> 2c; res block 2c -> 2c   (e2) @H/2
        dense bottleneck: flatten, Linear(2c H/2 W/2, hidden) + embedding, SiLU, Linear back, added to e2
        res block [bottleneck, e2] 4c -> 2c              @H/2
        transposed conv 2x2 stride 2, 2c -> c; res block [up, e1] 2c -> c   @H
        SiLU, conv3x3 c -> C

    The convolutions see every pixel's neighbourhood with the same weights (a stroke is a
    stroke anywhere); the dense bottleneck sees the whole image at once (which digit it is).
    H and W must be even.

    Args:
        shape: ``(C, H, W)`` of the images.
        sigmas: the noise ladder ``(L,)``, descending; kept as the buffer ``sigmas``.
        width: ``c``; hidden: the bottleneck's width; groups: GroupNorm groups (0: no norm);
        sigma_data: ``sigma_d``.
    """

    EMBEDDING = 128

    def __init__(self, shape: tuple[int, int, int], sigmas: torch.Tensor, width: int = 16, hidden: int = 256,
                 groups: int = 8, sigma_data: float = 0.5):
        super().__init__(sigmas, sigma_data)
        self.shape = tuple(shape)
        channels, height, breadth = self.shape
        if height % 2 or breadth % 2:
            raise ValueError(f"PreconditionedUNet needs an even image height and width, got {height}x{breadth}")
        c, e = width, self.EMBEDDING
        self.noise_embedding = nn.Sequential(nn.Linear(1, e), nn.SiLU(), nn.Linear(e, e))
        self.inp = nn.Conv2d(channels, c, 3, padding=1)
        self.enc1 = _FiLMResBlock(c, c, e, groups)
        self.down = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.enc2 = _FiLMResBlock(2 * c, 2 * c, e, groups)
        bottleneck = 2 * c * (height // 2) * (breadth // 2)
        self.dense_in = nn.Linear(bottleneck, hidden)
        self.dense_embedding = nn.Linear(e, hidden)
        self.dense_out = nn.Linear(hidden, bottleneck)
        self.dec2 = _FiLMResBlock(4 * c, 2 * c, e, groups)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.dec1 = _FiLMResBlock(2 * c, c, e, groups)
        self.out = nn.Conv2d(c, channels, 3, padding=1)
        self.act = nn.SiLU()

    def raw(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        embedding = self.noise_embedding(c_noise.view(-1, 1))
        h1 = self.enc1(self.inp(x_in), embedding)
        h2 = self.enc2(self.down(h1), embedding)
        dense = self.act(self.dense_in(h2.flatten(1)) + self.dense_embedding(embedding))
        middle = h2 + self.dense_out(dense).view_as(h2)
        u2 = self.dec2(torch.cat([middle, h2], dim=1), embedding)
        u1 = self.dec1(torch.cat([self.up(u2), h1], dim=1), embedding)
        return self.out(self.act(u1))


class ToyScoreMLP(nn.Module):
    """Level-conditioned MLP score model for low-dimensional data ``(B, D)``.

    Each hidden layer is ``Linear -> (per-level scale and shift) -> Softplus``; the
    per-level affine plays the role that conditional normalisation plays in :class:`NCSN`.
    """

    def __init__(self, dim: int = 2, num_levels: int = 1, hidden: int = 128, depth: int = 3):
        super().__init__()
        self.dim, self.num_levels = dim, num_levels
        widths = [dim] + [hidden] * depth
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.films = nn.ModuleList(nn.Embedding(num_levels, 2 * hidden) for _ in range(depth))
        for film in self.films:
            with torch.no_grad():
                film.weight[:, :hidden].fill_(1.0)
                film.weight[:, hidden:].zero_()
        self.out = nn.Linear(hidden, dim)
        self.act = nn.Softplus()

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        h = x
        for linear, film in zip(self.linears, self.films):
            scale, shift = film(level).chunk(2, dim=1)
            h = self.act(linear(h) * scale + shift)
        return self.out(h)


def build_model(config) -> nn.Module:
    """The network a :class:`ncsn_core.config.Config` describes (on CPU, fp32): its score
    network, or for a consistency model (``consistency.teacher`` set) the consistency function
    around a network of the teacher's kind (:class:`ncsn_core.consistency.ConsistencyFunction`)."""
    if config.has_auto():
        raise ValueError("the config still has auto values: resolve them from the data first (config.resolve_auto)")
    if getattr(config, "is_consistency", False):
        from dataclasses import replace

        from .consistency import ConsistencyFunction

        teacher_kind = replace(config, consistency=type(config.consistency)())
        return ConsistencyFunction(build_model(teacher_kind), config.consistency.sigma_min, config.model.sigma_data)
    num_levels = config.noise.num_levels
    if config.model.kind == "ncsn":
        return NCSN(config.data.channels, num_levels, config.model.ngf)
    if config.model.kind == "ncsnv2":
        from .noise import geometric_sigmas

        sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, num_levels)
        return NCSNv2(config.data.channels, sigmas, config.model.ngf)
    if config.model.kind in VALUE_CONDITIONED_KINDS:
        from .noise import geometric_sigmas

        sigmas = geometric_sigmas(config.noise.sigma_max, config.noise.sigma_min, num_levels)
        shape = (config.data.channels, config.data.image_size, config.data.image_size)
        if config.model.kind == "unet":
            return PreconditionedUNet(shape, sigmas, width=config.model.ngf, hidden=config.model.hidden,
                                      groups=config.model.groups, sigma_data=config.model.sigma_data)
        return PreconditionedMLP(shape, sigmas, width=config.model.hidden, depth=config.model.depth,
                                 sigma_data=config.model.sigma_data)
    if config.model.kind == "toy_mlp":
        return ToyScoreMLP(dim=2, num_levels=num_levels, hidden=config.model.hidden, depth=config.model.depth)
    raise ValueError(f"unknown model kind {config.model.kind!r}")


def make_score_fn(model: nn.Module, *, precision: str = "fp32", compile: bool = False):
    """Wrap a score network as ``score_fn(x, level)`` for the samplers.

    Args:
        precision: ``"fp32"`` or ``"bf16"`` (autocast on the input's device type; the score
            is returned in the input's dtype so the Langevin update stays in fp32).
        compile: run the network through ``torch.compile``. Compilation happens on the first
            call; on CPU it needs a C++ compiler and falls back to eager on failure.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    network = model.eval()
    compiled = torch.compile(network, dynamic=False) if compile else None

    def forward(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        nonlocal compiled
        if compiled is not None:
            try:
                return compiled(x, level)
            except Exception as err:  # noqa: BLE001 - any compiler failure: keep sampling, eagerly
                warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); running the network eagerly")
                compiled = None
        return network(x, level)

    def score_fn(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        if precision == "bf16":
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                return forward(x, level).to(x.dtype)
        return forward(x, level)

    return score_fn
