"""Photo-editing helpers: weight blending, photo listing, the figure row and the whole pipeline."""

import pytest
import torch
from PIL import Image

from utils.editing import blend_generators, edit_photo, edit_photos, interpolation_strip, list_photos, photo_row
from utils.perceptual import random_lpips
from utils.profiles import smoke_generator
from tests.test_adapt import _source


def _domain(G):
    domain = _source()
    with torch.no_grad():
        for parameter in domain.parameters():
            parameter.add_(0.1)
    return domain


def test_blend_endpoints_and_midpoint():
    G = _source()
    domain = _domain(G)
    half = dict(blend_generators(G, domain, 0.5).named_parameters())
    for name, parameter in G.named_parameters():
        assert torch.allclose(half[name], parameter + 0.05, atol=1e-6), name
    assert all(torch.equal(a, b) for a, b in zip(blend_generators(G, domain, 0.0).parameters(), G.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(blend_generators(G, domain, 1.0).parameters(), domain.parameters()))


def test_interpolation_strip_layout():
    G = _source()
    strip = interpolation_strip(G, _domain(G), [1, 2], alphas=(0.0, 1.0))
    assert strip.size == (2 * 32, 2 * 32)


def test_list_photos_sorted(tmp_path):
    for name in ["b.JPG", "a.png", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    assert [path.name for path in list_photos(tmp_path)] == ["a.png", "b.JPG"]


def test_list_photos_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no photos .* in .*put portrait photos there"):
        list_photos(tmp_path)
    with pytest.raises(FileNotFoundError, match="photo folder not found: .*missing"):
        list_photos(tmp_path / "missing")


def test_edit_photo_end_to_end():
    G = smoke_generator()
    domains = {"anime": blend_generators(G, G, 0.0)}
    edit = edit_photo("pictures/photos/grace_hopper.jpg", G, domains, random_lpips(), projection_steps=5,
                      pti_steps=3, progress=False)
    assert edit.aligned.size == (64, 64)
    assert edit.reconstruction.shape == (1, 3, 64, 64)
    # PTI only lowers the error of the projection it starts from.
    assert edit.metrics["reconstruction/mse"] < edit.metrics["projection/mse"]
    # With the domain equal to the source, the stylised image is the reconstruction.
    assert torch.allclose(edit.stylised["anime"], edit.reconstruction, atol=1e-5)
    row = photo_row(edit)
    assert row.width == 4 * 64
    assert isinstance(row, Image.Image)


def test_edit_photos_skips_faceless(tmp_path):
    G = smoke_generator()
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (120, 130, 140)).save(blank)
    metrics, failures = edit_photos(["pictures/photos/grace_hopper.jpg", blank], G, {}, random_lpips(),
                                    tmp_path / "rows", projection_steps=2, pti_steps=1, progress=False)
    assert sorted(metrics) == ["grace_hopper"]
    assert list(failures) == ["blank"]
    assert "no face found" in failures["blank"]
    assert (tmp_path / "rows" / "grace_hopper.png").exists()
