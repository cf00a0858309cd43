"""Projection, pivotal tuning, domain transplant and LPIPS loading, on tiny 32 px generators.

LPIPS here has a random VGG16 backbone (random_lpips), so distances are smaller than with ImageNet
weights, and the MSE between two random samples of the tiny generator serves as the scale for
"low" reconstruction error.
"""

import copy
import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from stylegan2 import Generator
from utils.perceptual import (
    load_lpips,
    lpips_distance,
    packaged_linear_weights_path,
    random_lpips,
)
from utils.projector import (
    W_RADIUS_QUANTILE,
    compute_w_stats,
    learning_rate,
    noise_regularization,
    normalize_noise_,
    prepare_target,
    project,
    render_projection,
    w_distribution_penalty,
    w_noise_scale,
    ws_radius_excess,
    ws_spread,
)
from utils.pti import pivotal_tuning, transplant_domain
from utils.weights import REGISTRY, WeightsError
from tests.tiny import TINY_GENERATOR

# One conv at 4 px, two per block from 8 px up, and the last ToRGB.
TINY_NUM_WS = 2 * int(math.log2(TINY_GENERATOR["img_resolution"])) - 2
PROJECTION_STEPS = 100
PTI_PROJECTION_STEPS = 50  # the W projection behind the pivot
PTI_STEPS = 30


def _generator(seed, **changes):
    """Build a tiny generator whose noise strengths and biases are non-zero, so every input matters."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(**dict(TINY_GENERATOR, **changes))
        with torch.no_grad():
            for parameter in G.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))  # they start at 0
    return G.eval().requires_grad_(False)


def _perturbed(G, seed, scale=0.1):
    """Return a copy of G with every parameter moved by scale * randn."""
    moved = copy.deepcopy(G)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in moved.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return moved


def _snapshot(module):
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _assert_state_equal(module, snapshot):
    state = module.state_dict()
    assert state.keys() == snapshot.keys()
    for name, tensor in state.items():
        assert torch.equal(tensor, snapshot[name]), name


@pytest.fixture(scope="module")
def G():
    return _generator(0)


@pytest.fixture(scope="module")
def lpips_model():
    return random_lpips(seed=0)


@pytest.fixture(scope="module")
def samples(G):
    """Two images of G from known w: [2, 3, 32, 32], with their ws [2, num_ws, w_dim]."""
    z = torch.randn([2, G.z_dim], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ws = G.mapping(z, None)
        images = G.synthesis(ws, noise_mode="const")
    return images, ws


@pytest.fixture(scope="module")
def sample_mse(samples):
    images, _ = samples
    return (images[0] - images[1]).square().mean().item()


@pytest.fixture(scope="module")
def projections(G, lpips_model, samples):
    target = samples[0][:1]
    return {
        mode: project(G, target, lpips_model, mode=mode, num_steps=PROJECTION_STEPS, seed=0, progress=False)
        for mode in ("w", "w+")
    }


# Schedules and regularisers against hand computations.


@pytest.mark.parametrize(
    "t, expected",
    [
        (0.0, 0.0),  # the ramp-up starts at 0
        (0.025, 0.05),  # halfway up the 0.05 ramp-up, before the ramp-down
        (0.5, 0.1),  # the plateau
        (0.8, 0.1 * (0.5 + 0.5 * math.cos(math.pi * 0.2))),  # (1 - 0.8) / 0.25 = 0.8 of the cosine
        (1.0, 0.0),  # the ramp-down ends at 0
    ],
)
def test_learning_rate_schedule(t, expected):
    assert learning_rate(t) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "t, expected",
    [
        (0.0, 2.0 * 0.05),
        (0.025, 2.0 * 0.05 * (1 - 0.025 / 0.75) ** 2),  # (29 / 30)^2
        (0.5, 2.0 * 0.05 / 9),  # (1 - 0.5 / 0.75)^2 = 1 / 9
        (0.8, 0.0),  # past the 0.75 ramp
        (1.0, 0.0),
    ],
)
def test_w_noise_schedule(t, expected):
    assert w_noise_scale(t, w_std=2.0) == pytest.approx(expected, abs=1e-12)


def test_noise_regularization_small_map():
    noise = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # Along x the shifted map is [[2, 1], [4, 3]]: products 2, 2, 12, 12, mean 7.
    # Along y it is [[3, 4], [1, 2]]: products 3, 8, 3, 8, mean 5.5. The map is below 8x8, so one level.
    assert noise_regularization([noise]).item() == pytest.approx(7.0**2 + 5.5**2)


def test_noise_regularization_levels():
    ones = torch.ones([16, 16])
    # 16x16 and the pooled 8x8 level each give 1 + 1.
    assert noise_regularization([ones]).item() == pytest.approx(4.0)

    rows, columns = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    checkerboard = ((rows + columns) % 2 * 2 - 1).float()
    # Every one-pixel shift gives products of -1 (mean -1, squared 1), and 2x2 pooling gives zeros.
    assert noise_regularization([checkerboard]).item() == pytest.approx(2.0)
    assert noise_regularization([ones, checkerboard]).item() == pytest.approx(6.0)


def test_normalize_noise_in_place():
    noise = torch.arange(16.0).reshape(4, 4) * 3 + 5
    normalize_noise_([noise])
    assert noise.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert noise.square().mean().item() == pytest.approx(1.0, abs=1e-6)


def test_w_stats_match_samples(G):
    stats = compute_w_stats(G, num_samples=2000)
    z = np.random.RandomState(123).randn(2000, G.z_dim)
    with torch.no_grad():
        w = G.mapping(torch.from_numpy(z), None)[:, 0].double()
    torch.testing.assert_close(stats.w_avg, w.mean(dim=0).float())
    radius = (w - w.mean(dim=0)).norm(dim=1)
    assert stats.w_std == pytest.approx(radius.square().mean().sqrt().item(), rel=1e-6)
    below = (radius / stats.w_std <= stats.radius_limit).double().mean().item()
    assert below == pytest.approx(W_RADIUS_QUANTILE, abs=1e-3)


def test_w_penalty_zero_for_typical_code(G):
    stats = compute_w_stats(G, num_samples=2000)
    z = torch.randn([9, G.z_dim], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ws = G.mapping(z, None)  # [9, num_ws, w_dim], every entry equal
    radius = (ws[:, 0] - stats.w_avg).norm(dim=1) / stats.w_std
    median = radius.argsort()[4]
    assert radius[median] < stats.radius_limit

    penalty = w_distribution_penalty(ws[median : median + 1], stats)
    assert penalty.shape == (1,)
    assert penalty.item() < 1e-10  # the mean of equal entries can differ from them by rounding


def test_w_penalty_grows_with_spread(G):
    stats = compute_w_stats(G, num_samples=2000)
    ws = stats.w_avg.reshape(1, 1, -1).repeat(1, G.num_ws, 1)
    offsets = torch.randn(ws.shape, generator=torch.Generator().manual_seed(2))
    offsets -= offsets.mean(dim=1, keepdim=True)
    scales = (0.0, 0.5, 1.0, 2.0, 4.0)
    penalties = [w_distribution_penalty(ws + scale * offsets, stats).item() for scale in scales]
    assert penalties[0] < 1e-10
    assert all(a < b for a, b in zip(penalties, penalties[1:])), penalties


def test_ws_spread_hand_computed():
    w_std = 2.0
    base = torch.tensor([1.0, -1.0, 0.5])
    delta = torch.tensor([0.3, 0.4, 0.0])  # norm 0.5
    ws = torch.stack([base + delta, base - delta])[None]  # [1, 2, 3]
    # Both entries lie 0.5 from their mean: 0.25 / w_std^2.
    assert ws_spread(ws, w_std).item() == pytest.approx(0.25 / 4)


def test_ws_radius_excess_hand_computed(G):
    stats = compute_w_stats(G, num_samples=2000)
    unit = torch.zeros(G.w_dim)
    unit[0] = 1.0
    far = stats.w_avg + (stats.radius_limit + 1.5) * stats.w_std * unit  # 1.5 past the limit
    ws = stats.w_avg.reshape(1, 1, -1).repeat(1, 4, 1)
    ws[0, 2] = far
    # One entry of four contributes 1.5^2, and the entries at w_avg (radius 0) contribute nothing.
    assert ws_radius_excess(ws, stats).item() == pytest.approx(1.5**2 / 4, rel=1e-4)


def test_w_penalty_gradient_finite_at_w_avg(G):
    stats = compute_w_stats(G, num_samples=2000)
    ws = stats.w_avg.reshape(1, 1, -1).repeat(1, G.num_ws, 1).requires_grad_(True)
    w_distribution_penalty(ws, stats).sum().backward()
    assert torch.isfinite(ws.grad).all()


# Projection.


@pytest.mark.parametrize("mode", ["w", "w+"])
def test_projection_recovers_sample(projections, lpips_model, samples, sample_mse, mode):
    result = projections[mode]
    images, _ = samples
    sample_lpips = lpips_distance(lpips_model, images[:1], images[1:]).item()
    # Measured with 100 steps: MSE 0.010 (W) and 0.019 (W+), against 0.17 between the two samples, and
    # LPIPS 0.005 and 0.006, against 0.038.
    assert result.mse < 0.15 * sample_mse
    assert result.lpips < 0.3 * sample_lpips
    assert result.ws.shape == (1, TINY_NUM_WS, TINY_GENERATOR["w_dim"])
    assert len(result.history) == PROJECTION_STEPS
    assert result.history[-1]["lpips"] < result.history[0]["lpips"]


def test_w_mode_code_in_w(projections):
    ws = projections["w"].ws
    assert torch.equal(ws, ws[:, :1].expand_as(ws))


def test_w_plus_regularised_spread(projections, G, lpips_model, samples):
    unregularised = project(
        G, samples[0][:1], lpips_model, mode="w+", num_steps=PROJECTION_STEPS, w_reg_weight=0.0, progress=False
    )
    regularised = projections["w+"]
    stats = regularised.w_stats
    spread = ws_spread(regularised.ws, stats.w_std).item()
    # Measured: spread 0.03 with the default weight and 0.97 without the penalty, where the code also
    # lands 1.3 w_std from the true w and renders with MSE 0.97.
    assert spread < 0.2 * ws_spread(unregularised.ws, stats.w_std).item()


def test_reconstruction_uses_optimised_noise(projections, G):
    result = projections["w"]
    with torch.no_grad():
        image = render_projection(G, result)
    assert image.shape == (1, 3, 32, 32)
    for name, noise in result.noise.items():
        assert noise.shape == G.synthesis.get_buffer(name).shape
        assert not torch.equal(noise, G.synthesis.get_buffer(name))
        assert noise.mean().abs().item() < 1e-5  # normalised after every step


def test_projection_deterministic(G, lpips_model, samples):
    target = samples[0][:1]
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()
    runs = [project(G, target, lpips_model, mode="w+", num_steps=8, seed=3, progress=False) for _ in range(2)]
    other_seed = project(G, target, lpips_model, mode="w+", num_steps=8, seed=4, progress=False)

    assert torch.equal(runs[0].ws, runs[1].ws)
    for name in runs[0].noise:
        assert torch.equal(runs[0].noise[name], runs[1].noise[name])
    assert not torch.equal(runs[0].ws, other_seed.ws)
    assert torch.equal(torch.get_rng_state(), torch_state)
    numpy_after = np.random.get_state()
    assert numpy_after[0] == numpy_state[0]
    assert np.array_equal(numpy_after[1], numpy_state[1])
    assert numpy_after[2:] == numpy_state[2:]


def test_caller_generator_unchanged(lpips_model, samples):
    G = _generator(0).train().requires_grad_(True)
    before = _snapshot(G)

    result = project(G, samples[0][:1], lpips_model, mode="w+", num_steps=5, progress=False)
    tuned = pivotal_tuning(
        G, result.ws, samples[0][:1], lpips_model, num_steps=3, lpips_threshold=0, progress=False
    )

    _assert_state_equal(G, before)
    assert G.training
    assert all(parameter.requires_grad for parameter in G.parameters())
    assert all(parameter.grad is None for parameter in G.parameters())
    assert tuned.steps == 3
    assert not any(parameter.requires_grad for parameter in tuned.G.parameters())


def test_target_checks(G):
    with pytest.raises(ValueError, match=r"target has shape \[3, 32, 32\], expected \[1, 3, 32, 32\]"):
        prepare_target(torch.zeros([3, 32, 32]), 32, 3)
    with pytest.raises(ValueError, match=r"expected \[1, 3, 32, 32\]"):
        prepare_target(torch.zeros([1, 3, 64, 64]), 32, 3)
    with pytest.raises(ValueError, match=r"looks like \[0, 255\]"):
        prepare_target(torch.full([1, 3, 32, 32], 200.0), 32, 3)
    with pytest.raises(TypeError, match="float tensor"):
        prepare_target(torch.zeros([1, 3, 32, 32], dtype=torch.uint8), 32, 3)
    with pytest.raises(ValueError, match="mode must be one of"):
        project(G, torch.zeros([1, 3, 32, 32]), None, mode="z")


def test_target_pil_centre_crop():
    pixels = np.zeros([32, 48, 3], dtype=np.uint8)
    pixels[:, :, 2] = 255  # blue
    pixels[:, :8, 0] = 255  # magenta bands on the 8 columns each side, which the crop removes
    pixels[:, 40:, 0] = 255
    target = prepare_target(Image.fromarray(pixels), 16, 3)
    assert target.shape == (1, 3, 16, 16)
    torch.testing.assert_close(target[0, 0], torch.full([16, 16], -1.0))
    torch.testing.assert_close(target[0, 2], torch.full([16, 16], 1.0))


# Pivotal tuning and transplant.


def test_pti_beats_projection_alone(G, lpips_model):
    # An image of a perturbed copy of G, which G cannot reproduce exactly from any code.
    z = torch.randn([1, G.z_dim], generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        target = _perturbed(G, seed=3, scale=0.05)(z)
    projection = project(G, target, lpips_model, mode="w", num_steps=PTI_PROJECTION_STEPS, progress=False)
    tuned = pivotal_tuning(
        G, projection.ws, target, lpips_model, num_steps=PTI_STEPS, lpips_threshold=0, progress=False
    )

    # Measured: MSE 0.16 after projection and 0.045 after 30 tuning steps, LPIPS 0.024 and 0.012.
    assert tuned.mse < 0.5 * projection.mse
    assert tuned.lpips < projection.lpips
    assert tuned.steps == PTI_STEPS
    assert not tuned.stopped_early
    assert tuned.history[-1]["mse"] < tuned.history[0]["mse"]
    # The mapping network and the buffers (noise maps included) are those of G.
    tuned_state = tuned.G.state_dict()
    for name, tensor in G.state_dict().items():
        if name.startswith("mapping.") or name.endswith(("noise_const", "resample_filter")):
            assert torch.equal(tuned_state[name], tensor), name


def test_pti_stops_at_threshold(G, lpips_model, samples):
    pivot = samples[1][:1]  # the ws that rendered the target
    result = pivotal_tuning(G, pivot, samples[0][:1], lpips_model, lpips_threshold=1.0, progress=False)
    assert result.stopped_early
    assert result.steps == 0
    assert len(result.history) == 1
    _assert_state_equal(result.G, _snapshot(G))


def test_pti_pivot_shape_checked(G, lpips_model, samples):
    with pytest.raises(ValueError, match=r"pivot_ws must have shape \[1, 8, 16\], got \[1, 16\]"):
        pivotal_tuning(G, torch.zeros([1, 16]), samples[0][:1], lpips_model, progress=False)


def test_transplant_lands_exactly(G):
    source = G
    domain = _perturbed(source, seed=1)
    tuned = _perturbed(source, seed=2)
    with torch.no_grad():
        tuned.synthesis.b8.conv0.noise_const.add_(1.0)
        tuned.mapping.w_avg.add_(0.5)
    generators = {"source": source, "domain": domain, "tuned": tuned}
    before = {name: _snapshot(module) for name, module in generators.items()}

    result = transplant_domain(source, domain, tuned)

    source_parameters = dict(source.named_parameters())
    domain_parameters = dict(domain.named_parameters())
    tuned_parameters = dict(tuned.named_parameters())
    for name, parameter in result.named_parameters():
        expected = tuned_parameters[name] + (domain_parameters[name] - source_parameters[name])
        assert torch.equal(parameter, expected), name
    for name, buffer in result.named_buffers():
        assert torch.equal(buffer, tuned.get_buffer(name)), name
    for name, module in generators.items():
        _assert_state_equal(module, before[name])


def test_transplant_mismatch_rejected(G):
    other = _generator(0, synthesis_kwargs=dict(channel_base=256, channel_max=8))
    with pytest.raises(ValueError, match="G_domain and G_tuned have different configurations"):
        transplant_domain(G, other, G)
    with pytest.raises(ValueError, match="G_source and G_tuned have different configurations"):
        transplant_domain(other, G, G)


# LPIPS loading and distance.


def _fake_vgg16_file(folder, rename=None, reshape=None):
    """Write random tensors under torchvision vgg16's names and shapes, as the registry file name."""
    with torch.device("meta"):
        reference = torchvision.models.vgg16(weights=None).state_dict()
    names_and_shapes = {name: tensor.shape for name, tensor in reference.items()}
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in names_and_shapes.items():
        if name.startswith("classifier."):
            # The loader skips the classifier, so one value per key replaces its 120M parameters.
            state[name] = torch.zeros([1])
        else:
            state[name] = torch.randn(shape, generator=generator)
    if rename is not None:
        old, new = rename
        state[new] = state.pop(old)
    if reshape is not None:
        state[reshape] = state[reshape][:1]
    path = folder / REGISTRY["vgg16"].filename
    torch.save(state, path)
    return path, state


def test_vgg16_backbone_loads_exactly(tmp_path):
    _, state = _fake_vgg16_file(tmp_path)
    model = load_lpips(cache_dir=tmp_path, offline=True)

    backbone = model.net.state_dict()
    assert len(backbone) == 26  # 13 convolutions, weight and bias each
    for name, tensor in backbone.items():
        _slice, index, kind = name.split(".")
        assert torch.equal(tensor, state[f"features.{index}.{kind}"]), name

    linear = torch.load(packaged_linear_weights_path(), map_location="cpu", weights_only=True)
    for name, tensor in linear.items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert not model.training
    assert not any(parameter.requires_grad for parameter in model.parameters())


def test_vgg16_missing_offline(tmp_path):
    with pytest.raises(WeightsError, match="offline mode is on") as error:
        load_lpips(cache_dir=tmp_path, offline=True)
    assert REGISTRY["vgg16"].url in str(error.value)


def test_vgg16_wrong_keys_rejected(tmp_path):
    _fake_vgg16_file(tmp_path, rename=("features.0.weight", "features.1.weight"))
    with pytest.raises(WeightsError, match=r"missing features\.0\.weight, unexpected features\.1\.weight"):
        load_lpips(cache_dir=tmp_path, offline=True)


def test_vgg16_wrong_shape_rejected(tmp_path):
    _fake_vgg16_file(tmp_path, reshape="features.28.weight")
    with pytest.raises(WeightsError, match=r"features\.28\.weight \[1, 512, 3, 3\] \(expected \[512, 512, 3, 3\]\)"):
        load_lpips(cache_dir=tmp_path, offline=True)


def test_random_lpips_seeded(lpips_model):
    state = torch.get_rng_state()
    again, other = random_lpips(seed=0), random_lpips(seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    for name, tensor in lpips_model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    weight = "net.slice1.0.weight"
    assert not torch.equal(other.state_dict()[weight], lpips_model.state_dict()[weight])


def test_lpips_distance_shapes_and_resize(lpips_model):
    images = torch.rand([2, 3, 64, 64], generator=torch.Generator().manual_seed(0)) * 2 - 1
    others = images.flip(dims=[3])

    distance = lpips_distance(lpips_model, images, others, resize_to=32)
    assert distance.shape == (2,)
    assert (distance > 0).all()
    assert lpips_distance(lpips_model, images, images).abs().max().item() < 1e-6

    small = lpips_model(
        torch.nn.functional.interpolate(images, size=(32, 32), mode="area"),
        torch.nn.functional.interpolate(others, size=(32, 32), mode="area"),
    ).reshape(2)
    torch.testing.assert_close(distance, small)

    gray = lpips_distance(lpips_model, images[:, :1], others[:, :1])
    assert gray.shape == (2,)
    with pytest.raises(ValueError, match="must have the same shape"):
        lpips_distance(lpips_model, images, others[:, :, :32])
