"""Conversions between generator images in [-1, 1] and uint8 arrays / PIL images."""

import numpy as np
import pytest
import torch
from PIL import Image

from utils.images import from_pil, image_grid, save_image, to_pil, to_uint8


def test_uint8_rounds_like_generate_py():
    img = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 3.0]).reshape(1, 1, 1, 6)
    assert to_uint8(img).ravel().tolist() == [0, 0, 128, 255, 255, 255]


def test_uint8_channel_order():
    img = torch.full([2, 3, 4, 5], -1.0)
    img[:, 0] = 1.0  # red
    pixels = to_uint8(img)
    assert pixels.shape == (2, 4, 5, 3)
    assert pixels[0, 0, 0].tolist() == [255, 0, 0]


def test_pil_modes_follow_channels():
    rgb = to_pil(torch.zeros([1, 3, 8, 8]))
    gray = to_pil(torch.zeros([2, 1, 8, 8]))
    assert [image.mode for image in rgb] == ["RGB"]
    assert [image.mode for image in gray] == ["L", "L"]
    assert gray[0].size == (8, 8)


def test_round_trip_within_one_step():
    img = torch.rand([2, 3, 6, 6]) * 2 - 1
    back = from_pil(to_pil(img))
    assert back.shape == img.shape
    assert (back - img).abs().max() <= 1 / 127.5 + 1e-6


def test_rgba_composited_on_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert from_pil(image).flatten().unique().tolist() == [1.0]


@pytest.mark.parametrize("mode", ["P", "CMYK", "LA", "1", "I;16"])
def test_other_modes_convert(mode):
    image = Image.new("RGB", (4, 4), (10, 200, 30)).convert(mode)
    batch = from_pil(image)
    assert batch.shape == (1, 3, 4, 4)
    assert batch.min() >= -1
    assert batch.max() <= 1


def test_sixteen_bit_scaled():
    image = Image.fromarray(np.full([4, 4], 65535, dtype=np.uint16))
    assert from_pil(image, channels=1).flatten().unique().tolist() == [1.0]


def test_resize_and_grayscale():
    batch = from_pil([Image.new("RGB", (10, 7)), Image.new("RGB", (3, 3))], resolution=8, channels=1)
    assert batch.shape == (2, 1, 8, 8)


def test_mixed_sizes_need_resolution():
    with pytest.raises(ValueError, match="pass resolution="):
        from_pil([Image.new("RGB", (4, 4)), Image.new("RGB", (5, 5))])


def test_wrong_image_shape_named():
    with pytest.raises(ValueError, match=r"expected generator images \[N, C, H, W\] with C = 1 or 3, got \[3, 8, 8\]"):
        to_uint8(torch.zeros([3, 8, 8]))


def test_grid_layout():
    img = torch.full([5, 3, 2, 2], -1.0)
    img[4] = 1.0
    grid = np.asarray(image_grid(img, columns=2))
    assert grid.shape == (6, 4, 3)
    assert grid[4:6, 0:2].min() == 255  # fifth image: third row, first column
    assert grid[4:6, 2:4].max() == 0  # empty cell


def test_save_image_atomic(tmp_path):
    path = save_image(image_grid(torch.zeros([1, 3, 4, 4])), tmp_path / "grid.png")
    assert Image.open(path).size == (4, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


def test_saved_file_has_usual_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    path = save_image(image_grid(torch.zeros([1, 3, 4, 4])), tmp_path / "grid.png")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_save_onto_folder_rejected(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder; give a file path"):
        save_image(image_grid(torch.zeros([1, 3, 4, 4])), tmp_path)
