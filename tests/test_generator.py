"""Generator interface: input checks, layer groups and their ws indices, train/eval paths."""

import pytest
import torch

from stylegan2 import Generator, layer_groups, layer_ws_indices
from stylegan2.configs import FFHQ_1024
from tests.tiny import TINY_GENERATOR

# The shared tiny configuration with fp16 flags and a clamp, so those code paths are built too.
TINY = dict(TINY_GENERATOR, synthesis_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=2, conv_clamp=256))


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    return Generator(**TINY).eval()


def test_output_shape_and_dtype(G):
    img = G(torch.randn([3, 16]))
    assert img.shape == (3, 3, 32, 32)
    assert img.dtype == torch.float32


def test_z_wrong_shape_shows_expected(G):
    with pytest.raises(ValueError, match=r"z has shape \[2, 17\], expected \[\*, 16\]"):
        G(torch.randn([2, 17]))


def test_z_integer_dtype_rejected(G):
    with pytest.raises(TypeError, match=r"z must be a floating-point tensor of shape \[N, 16\], got dtype torch.int64"):
        G(torch.zeros([2, 16], dtype=torch.int64))


def test_z_numpy_rejected(G):
    with pytest.raises(TypeError, match=r"z must be a torch.Tensor of shape \[N, 16\], got ndarray"):
        G(torch.randn([1, 16]).numpy())


def test_ws_single_w_gets_broadcast_hint(G):
    with pytest.raises(ValueError, match=r"ws has shape \[2, 16\], expected \[N, 8, 16\].*unsqueeze"):
        G.synthesis(torch.randn([2, 16]))


def test_ws_wrong_count_shows_expected(G):
    with pytest.raises(ValueError, match=r"ws has shape \[2, 18, 16\], expected \[\*, 8, 16\]"):
        G.synthesis(torch.randn([2, 18, 16]))


def test_ws_half_precision_accepted(G):
    ws = G.mapping(torch.randn([1, 16]), None)
    img = G.synthesis(ws.half())
    assert (img - G.synthesis(ws)).abs().max() < 0.05


def test_noise_mode_invalid(G):
    with pytest.raises(ValueError, match="noise_mode must be one of"):
        G(torch.randn([1, 16]), noise_mode="constant")


def test_noise_modes_differ(G):
    with torch.no_grad():
        for name, parameter in G.named_parameters():
            if name.endswith("noise_strength"):
                parameter.fill_(0.5)  # initialised to 0, which would hide the noise
    z = torch.randn([1, 16])
    torch.manual_seed(1)
    first = G(z, noise_mode="random")
    torch.manual_seed(2)
    second = G(z, noise_mode="random")
    assert not torch.equal(first, second)
    assert torch.equal(G(z, noise_mode="const"), G(z, noise_mode="const"))
    assert not torch.equal(G(z, noise_mode="const"), G(z, noise_mode="none"))


def test_conditional_needs_labels():
    G = Generator(**dict(TINY, c_dim=4))
    with pytest.raises(ValueError, match=r"pass class labels c of shape \[N, 4\]"):
        G(torch.randn([1, 16]))
    assert G(torch.randn([2, 16]), torch.eye(4)[:2]).shape == (2, 3, 32, 32)


def test_grayscale_output():
    G = Generator(**dict(TINY, img_channels=1))
    assert G(torch.randn([1, 16])).shape == (1, 1, 32, 32)


def test_bad_resolution_rejected():
    with pytest.raises(ValueError, match="img_resolution must be a power of two >= 4, got 48"):
        Generator(**dict(TINY, img_resolution=48))


def test_train_mode_matches_eval(G):
    # Training uses the unfused modulated convolution; both paths compute the same function.
    z = torch.randn([2, 16])
    ws = G.mapping(z, None)
    fused = G.synthesis(ws)
    G.train()
    try:
        unfused = G.synthesis(ws)
    finally:
        G.eval()
    assert (fused - unfused).abs().max() < 1e-5


def test_ws_indices_follow_official_table():
    with torch.device("meta"):
        G = Generator(**FFHQ_1024)
    indices = layer_ws_indices(G)
    assert indices["b4.conv1"] == 0
    assert indices["b4.torgb"] == 1
    for k in range(3, 11):
        assert indices[f"b{2 ** k}.conv0"] == 2 * k - 5
        assert indices[f"b{2 ** k}.conv1"] == 2 * k - 4
        assert indices[f"b{2 ** k}.torgb"] == 2 * k - 3
    assert max(indices.values()) == G.num_ws - 1


def test_ws_indices_are_what_layers_read(G):
    # Change one entry of ws at a time and record which style affines see a different input.
    indices = layer_ws_indices(G)
    layers = {name: G.synthesis.get_submodule(name) for name in indices}
    ws = G.mapping(torch.randn([1, 16]), None)
    for index in range(G.num_ws):
        seen = {}
        hooks = [
            layer.affine.register_forward_hook(lambda m, inputs, out, name=name: seen.__setitem__(name, inputs[0]))
            for name, layer in layers.items()
        ]
        G.synthesis(ws)
        baseline = dict(seen)
        changed = ws.clone()
        changed[:, index] += 1
        G.synthesis(changed)
        for hook in hooks:
            hook.remove()
        readers = sorted(name for name in layers if not torch.equal(seen[name], baseline[name]))
        assert readers == sorted(name for name, i in indices.items() if i == index), index


def test_groups_cover_every_parameter_once_per_level(G):
    groups = {group.name: group for group in layer_groups(G)}
    all_parameters = {name for name, _ in G.named_parameters()}
    top_level = [groups["mapping"]] + [groups[f"b{r}"] for r in G.synthesis.block_resolutions]
    covered = [name for group in top_level for name in group.parameters]
    assert sorted(covered) == sorted(all_parameters)
    assert groups["b8.conv0.affine"].parameters == ("synthesis.b8.conv0.affine.weight", "synthesis.b8.conv0.affine.bias")
    assert set(groups["b8.conv0"].parameters) == {
        "synthesis.b8.conv0.weight",
        "synthesis.b8.conv0.noise_strength",
        "synthesis.b8.conv0.bias",
        "synthesis.b8.conv0.affine.weight",
        "synthesis.b8.conv0.affine.bias",
    }
    assert groups["b16.torgb"].ws_index == 5
    assert groups["b4.const"].parameters == ("synthesis.b4.const",)


@pytest.mark.parametrize("noise_mode", ["const", "random"])
def test_gradient_checkpointing_same_gradients(noise_mode):
    torch.manual_seed(0)
    G = Generator(**TINY).train()
    for parameter in G.parameters():
        parameter.data.add_(0.01 * torch.randn_like(parameter))  # biases and noise strengths start at 0
    ws = G.mapping(torch.randn([2, 16]), None).detach()

    def gradients(checkpointing):
        G.zero_grad()
        G.synthesis.gradient_checkpointing = checkpointing
        torch.manual_seed(5)
        G.synthesis(ws, noise_mode=noise_mode).square().mean().backward()
        return {name: p.grad.clone() for name, p in G.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5), name


@pytest.mark.parametrize("psi", ["x", float("nan"), None])
def test_truncation_psi_checked(G, psi):
    with pytest.raises(ValueError, match="truncation_psi must be a finite number"):
        G(torch.randn([1, 16]), truncation_psi=psi)


@pytest.mark.parametrize("cutoff", [100, -1, "a", 2.5])
def test_truncation_cutoff_checked(G, cutoff):
    with pytest.raises(ValueError, match=r"truncation_cutoff must be None or an integer in \[0, 8\]"):
        G(torch.randn([1, 16]), truncation_psi=0.5, truncation_cutoff=cutoff)


def test_empty_batch_rejected(G):
    with pytest.raises(ValueError, match="z is an empty batch"):
        G(torch.randn([0, 16]))


@pytest.mark.parametrize("changes,message", [
    (dict(img_channels=0), "img_channels must be an integer >= 1, got 0"),
    (dict(img_resolution=32.0), "img_resolution must be an integer >= 1, got 32.0"),
    (dict(w_dim="a"), "w_dim must be an integer >= 1"),
    (dict(z_dim=-1), "z_dim must be an integer >= 0"),
    (dict(z_dim=0), "z_dim and c_dim are both 0"),
])
def test_constructor_sizes_checked(changes, message):
    with pytest.raises(ValueError, match=message):
        Generator(**dict(TINY, **changes))
