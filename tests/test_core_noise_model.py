"""Noise ladder and score network: shapes, dtypes, devices, level conditioning."""

import math
import warnings

import pytest
import torch

from ncsn_core import NCSN, ToyScoreMLP, build_model, config_from_dict, geometric_sigmas, make_score_fn, suggest_sigma_max

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_geometric_ladder_matches_the_paper():
    sigmas = geometric_sigmas(1.0, 0.01, 10)
    assert sigmas.shape == (10,) and sigmas.dtype == torch.float32
    assert sigmas[0].item() == pytest.approx(1.0) and sigmas[-1].item() == pytest.approx(0.01)
    ratios = sigmas[1:] / sigmas[:-1]
    assert torch.allclose(ratios, torch.full_like(ratios, 0.01 ** (1 / 9)), rtol=1e-5)
    assert torch.all(sigmas[:-1] > sigmas[1:])


@pytest.mark.parametrize("args", [(0.01, 1.0, 10), (1.0, 0.0, 10), (1.0, 0.1, 0), (1.0, 0.5, 1)])
def test_geometric_ladder_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        geometric_sigmas(*args)


def test_suggest_sigma_max_is_the_largest_pairwise_distance():
    points = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [-3.0, -4.0]])
    assert suggest_sigma_max(points) == pytest.approx(10.0)
    images = torch.zeros(5, 1, 2, 2)
    images[3] = 1.0
    assert suggest_sigma_max(images) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "channels,size,ngf", [(1, 8, 8), (1, 28, 8), (3, 32, 8), (3, 64, 4), (1, 7, 4)]
)
def test_ncsn_keeps_the_input_shape_for_every_configured_size(channels, size, ngf):
    model = NCSN(channels, num_levels=10, ngf=ngf)
    x = torch.rand(3, channels, size, size)
    out = model(x, torch.tensor([0, 4, 9]))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_paper_widths_build_with_the_expected_parameter_scale():
    mnist = build_model(config_from_dict({"data": {"channels": 1, "image_size": 28}, "model": {"ngf": 64}}))
    cifar = build_model(config_from_dict({"data": {"channels": 3, "image_size": 32}, "model": {"ngf": 128}}))
    n_mnist = sum(p.numel() for p in mnist.parameters())
    n_cifar = sum(p.numel() for p in cifar.parameters())
    # The original CIFAR-10 NCSN has about 30M parameters; width doubles -> ~4x parameters.
    assert 25e6 < n_cifar < 35e6
    assert 3.5 < n_cifar / n_mnist < 4.5


def test_ncsn_is_conditioned_on_the_level():
    torch.manual_seed(0)
    model = NCSN(1, num_levels=10, ngf=8)
    with torch.no_grad():  # make the per-level embeddings clearly different
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                module.weight.normal_(1.0, 0.5)
    x = torch.rand(1, 1, 8, 8).repeat(2, 1, 1, 1)
    out = model(x, torch.tensor([0, 9]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    again = model(x, torch.tensor([0, 0]))
    assert torch.allclose(again[0], again[1], atol=1e-5)


def test_ncsn_maps_pixels_to_minus_one_one_inside():
    model = NCSN(1, num_levels=2, ngf=4)
    captured = {}
    model.begin_conv.register_forward_hook(lambda mod, inp, out: captured.setdefault("x", inp[0]))
    x = torch.rand(2, 1, 8, 8)
    model(x, torch.tensor([0, 1]))
    assert torch.allclose(captured["x"], 2 * x - 1)


def test_toy_mlp_shapes_and_conditioning():
    model = ToyScoreMLP(dim=2, num_levels=3, hidden=16, depth=2)
    with torch.no_grad():
        model.films[0].weight.normal_()
    x = torch.randn(4, 2)
    out = model(x.repeat(2, 1), torch.tensor([0] * 4 + [2] * 4))
    assert out.shape == (8, 2)
    assert not torch.allclose(out[:4], out[4:])


def test_bf16_score_fn_computes_in_bf16_and_returns_float32_on_cpu():
    model = NCSN(1, num_levels=2, ngf=4)
    x = torch.rand(2, 1, 8, 8)
    seen: list[torch.dtype] = []
    model.begin_conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    fp32 = make_score_fn(model)(x, torch.tensor([0, 1]))
    bf16 = make_score_fn(model, precision="bf16")(x, torch.tensor([0, 1]))
    assert seen == [torch.float32, torch.bfloat16], "the bf16 path must run the convolutions in bfloat16"
    assert bf16.dtype == torch.float32 and bf16.shape == x.shape
    assert not torch.equal(fp32, bf16), "bf16 rounding leaves no trace: precision was ignored"
    assert torch.allclose(fp32, bf16, atol=0.1 * fp32.abs().max().item() + 1e-3)
    with pytest.raises(ValueError, match="precision"):
        make_score_fn(model, precision="fp8")


@CUDA
def test_ncsn_runs_on_cuda():
    model = NCSN(3, num_levels=10, ngf=8).cuda()
    x = torch.rand(2, 3, 32, 32, device="cuda")
    out = make_score_fn(model, precision="bf16")(x, torch.tensor([0, 9], device="cuda"))
    assert out.device.type == "cuda" and out.shape == x.shape and out.dtype == torch.float32
    assert math.isfinite(out.sum().item())


@pytest.mark.timeout(300)
def test_compiled_score_fn_matches_eager_on_cpu():
    torch.manual_seed(0)
    model = ToyScoreMLP(dim=2, num_levels=3, hidden=16, depth=2)
    x, level = torch.randn(8, 2), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    eager = make_score_fn(model)(x, level)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = make_score_fn(model, compile=True)(x, level)
    assert not [w for w in caught if "torch.compile failed" in str(w.message)], "fell back to eager"
    assert compiled.shape == eager.shape
    assert torch.allclose(compiled, eager, atol=1e-5)


def test_cin_plus_normalises_channel_means_with_their_unbiased_variance():
    """Hand-computed: constant channels 0, 1, 2 have means [0, 1, 2], m = 1 and unbiased
    variance 1, so with gamma = alpha = 1 and beta = 0 the output channels are the constants
    (mu - m) / sqrt(1 + 1e-5) = [-1, 0, 1] / 1.000005 (the biased variance 2/3 would give
    +-1.2247); instance norm of a constant channel is 0."""
    from ncsn_core.layers import ConditionalInstanceNorm2dPlus

    norm = ConditionalInstanceNorm2dPlus(3, num_levels=1)
    with torch.no_grad():
        norm.embed.weight.copy_(torch.tensor([[1.0] * 6 + [0.0] * 3]))
    x = torch.arange(3.0).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    out = norm(x, torch.zeros(1, dtype=torch.long))
    expected = torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(1 + 1e-5)
    assert torch.allclose(out[0, :, 0, 0], expected, atol=1e-6)
    assert torch.allclose(out, expected.view(1, 3, 1, 1).expand_as(out), atol=1e-6)


def test_chained_residual_pooling_counts_the_zero_padding_at_borders():
    """Hand-computed: the 5x5 average of a field of ones is 1 inside, 9/25 in a corner (3x3 of
    the 25 taps are inside) and 15/25 at the middle of an edge (3x5), as the original's
    nn.AvgPool2d(5, stride=1, padding=2); excluding the padding would give 1 everywhere."""
    from ncsn_core.layers import CondCRPBlock

    pool = CondCRPBlock(2, n_stages=2, num_levels=1).pool
    out = pool(torch.ones(1, 1, 7, 7))[0, 0]
    assert out[3, 3].item() == pytest.approx(1.0)
    assert out[0, 0].item() == pytest.approx(9 / 25)
    assert out[0, 3].item() == pytest.approx(15 / 25)


def test_elu_is_torch_elu_to_float_rounding_with_its_first_and_second_derivatives():
    """The blocks' ELU (exp-based, for speed) is torch.nn.ELU's function: values and
    gradients within float32 rounding over the range activations take, gradient 1 at 0 as
    torch's, and second derivatives (sliced score matching) that gradgradcheck accepts."""
    from ncsn_core.layers import ELU

    x = torch.cat([torch.linspace(-20, 20, 4001), torch.tensor([0.0, -1e-8, 1e-8])]).requires_grad_()
    ours, theirs = ELU()(x), torch.nn.functional.elu(x)
    assert torch.allclose(ours, theirs, rtol=0, atol=2e-7)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    (g_theirs,) = torch.autograd.grad(theirs.sum(), x)
    assert torch.allclose(g_ours, g_theirs, rtol=0, atol=2e-7)
    assert g_ours[-3].item() == 1.0, "gradient at exactly 0 is 1, as torch.nn.ELU"
    x64 = torch.randn(3, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ELU(), (x64,)) and torch.autograd.gradgradcheck(ELU(), (x64,))
    assert not any(isinstance(m, torch.nn.ELU) for m in NCSN(1, 4, 8).modules()), "every block uses it"
