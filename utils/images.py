"""Convert between generator images (float tensors, nominally [-1, 1]) and uint8 arrays or PIL images."""

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylegan2.fileio import atomic_write_bytes

_MODES = {1: "L", 3: "RGB"}


def _check_images(img):
    if not isinstance(img, torch.Tensor) or img.ndim != 4 or img.shape[1] not in _MODES:
        shape = list(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(f"expected generator images [N, C, H, W] with C = 1 or 3, got {shape}")


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """Map images [N, C, H, W] from [-1, 1] to uint8 [N, H, W, C], clamping values outside the range.

    Rounds as the official generate.py does: x * 127.5 + 128, then truncation towards zero.
    """
    _check_images(img)
    pixels = (img.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def to_pil(img: torch.Tensor) -> list:
    """Convert images [N, C, H, W] in [-1, 1] to a list of PIL images ("L" for 1 channel, "RGB" for 3)."""
    pixels = to_uint8(img)
    mode = _MODES[pixels.shape[-1]]
    return [Image.fromarray(array[..., 0] if mode == "L" else array, mode) for array in pixels]


def from_pil(images, resolution: int = None, channels: int = 3) -> torch.Tensor:
    """Convert PIL images (one or a list) to a float tensor [N, channels, H, W] in [-1, 1].

    Any mode Pillow reads (RGBA, P, CMYK, I;16, L, ...) is converted to RGB or L first; `resolution`
    resizes each image to a square of that size with Lanczos filtering.
    """
    if channels not in _MODES:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if isinstance(images, Image.Image):
        images = [images]

    arrays = []
    for image in images:
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected PIL images, got {type(image).__name__}")
        image = convert_mode(image, _MODES[channels])
        if resolution is not None:
            image = image.resize((resolution, resolution), Image.LANCZOS)
        array = np.asarray(image, dtype=np.float32)
        arrays.append(array[..., None] if array.ndim == 2 else array)

    shapes = {array.shape for array in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images differ in size {sorted(shapes)}; pass resolution= to resize them to one size")
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # [N, C, H, W]
    return batch / 127.5 - 1


def convert_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert a PIL image of any mode to "RGB" or "L": 16/32-bit scaled to 8 bits, transparency on white."""
    if image.mode == mode:
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit and 32-bit integer images: scale to 8 bits before converting.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparent pixels onto white rather than letting them turn black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(mode)


def image_grid(img: torch.Tensor, columns: int = None) -> Image.Image:
    """Tile images [N, C, H, W] in [-1, 1] into one PIL image with `columns` columns (default: near-square)."""
    pixels = to_uint8(img)
    count, height, width, channels = pixels.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.zeros([rows * height, columns * width, channels], dtype=np.uint8)
    for i, array in enumerate(pixels):
        row, column = divmod(i, columns)
        grid[row * height : (row + 1) * height, column * width : (column + 1) * width] = array
    return Image.fromarray(grid[..., 0] if channels == 1 else grid, _MODES[channels])


def save_image(image: Image.Image, path) -> Path:
    """Save a PIL image atomically; the format follows the file extension (.png, .jpg, ...)."""
    path = Path(path)
    buffer = io.BytesIO()
    image.save(buffer, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    atomic_write_bytes(path, buffer.getvalue())
    return path
