"""Freezing by layer name, and the adaptive layer selection."""

import pytest
import torch

from stylegan2 import Generator
from utils.freeze import choose_layers_adaptively, freeze_except, layers_reading_ws, select_parameters
from tests.tiny import TINY_GENERATOR


@pytest.fixture
def G():
    torch.manual_seed(0)
    return Generator(**TINY_GENERATOR)


def test_block_token_leaves_torgb_frozen(G):
    names = select_parameters(G, ["b16"])
    assert "synthesis.b16.conv0.weight" in names
    assert "synthesis.b16.conv1.affine.bias" in names
    assert not [name for name in names if "torgb" in name]


def test_torgb_enabled_when_named(G):
    assert select_parameters(G, ["b16.torgb"]) == [
        "synthesis.b16.torgb.weight",
        "synthesis.b16.torgb.bias",
        "synthesis.b16.torgb.affine.weight",
        "synthesis.b16.torgb.affine.bias",
    ]


def test_kinds_select_across_blocks(G):
    affines = select_parameters(G, ["affine"])
    assert affines and all(".affine." in name and "torgb" not in name for name in affines)
    assert len(select_parameters(G, ["torgb"])) == 4 * 4  # 4 blocks x (weight, bias, affine weight, bias)
    assert select_parameters(G, "const") == ["synthesis.b4.const"]


def test_mapping_only_when_named(G):
    assert not [name for name in select_parameters(G, ["b4", "b8", "b16", "b32"]) if name.startswith("mapping")]
    assert select_parameters(G, ["mapping"]) == [name for name, _ in G.named_parameters() if name.startswith("mapping")]


def test_comma_string_spec(G):
    assert select_parameters(G, "b8, b16") == select_parameters(G, ["b8", "b16"])


def test_unknown_layer_lists_valid(G):
    with pytest.raises(ValueError, match=r"unknown layer names \['b2048'\]; valid names: mapping, b4, .*b32\.torgb"):
        select_parameters(G, ["b8", "b2048"])


def test_step_changes_only_enabled(G):
    enabled = freeze_except(G, ["b16", "b8.conv1.affine"])
    before = {name: p.detach().clone() for name, p in G.named_parameters()}
    optimizer = torch.optim.Adam([p for p in G.parameters() if p.requires_grad], lr=0.01, betas=(0.0, 0.99))
    G(torch.randn([2, 16])).square().mean().backward()
    optimizer.step()

    changed = sorted(name for name, p in G.named_parameters() if not torch.equal(p, before[name]))
    # noise_strength starts at 0 with constant noise; its gradient is nonzero, so it changes too.
    assert changed == sorted(enabled)
    assert all(p.grad is None for name, p in G.named_parameters() if name not in enabled)


def test_empty_selection_rejected(G):
    with pytest.raises(ValueError, match="selects no parameters"):
        freeze_except(G, [])


def test_adaptive_picks_favoured_entry(G):
    # Zero every style affine but that of b8.conv1, so only ws[:, 2] (which that layer reads) gets a gradient.
    favoured = "b8.conv1"
    index = 2
    assert layers_reading_ws(G, index) == [favoured]
    with torch.no_grad():
        for name, module in G.synthesis.named_modules():
            if name.endswith("affine") and name != f"{favoured}.affine":
                module.weight.zero_()
    ws = G.mapping(torch.randn([4, 16]), None).detach()
    before = {name: p.detach().clone() for name, p in G.named_parameters()}

    layers, change = choose_layers_adaptively(G, ws, lambda img: img.square().mean(), k=1, steps=2, lr=1.0)

    assert layers == [favoured]
    assert change[index] > 0
    assert torch.count_nonzero(change).item() == 1
    assert all(torch.equal(p, before[name]) for name, p in G.named_parameters())  # weights untouched


def test_adaptive_shared_entry_enables_both(G):
    # ws[:, 3] is read by b8.torgb and b16.conv0; with ToRGB excluded only the convolution is chosen.
    assert layers_reading_ws(G, 3) == ["b16.conv0"]
    assert layers_reading_ws(G, 3, include_torgb=True) == ["b8.torgb", "b16.conv0"]
    # The last entry feeds only the last ToRGB, so it maps to no trainable convolution.
    assert layers_reading_ws(G, G.num_ws - 1) == []
