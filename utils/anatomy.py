"""The generator's anatomy: a table of its layers and style-mixing figures over ranges of ws."""

import csv
import io
import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from stylegan2 import group_table
from stylegan2.fileio import atomic_write_text

from .images import image_grid, save_image
from .sampling import z_from_seeds


def layer_table(G) -> list:
    """List one row per layer: name, kind, resolution, ws index, parameter shapes and number of values."""
    rows = []
    for row in group_table(G):
        shapes = "; ".join(f"{name} {shape}" for name, shape in row["shapes"].items())
        rows.append(dict(row, shapes=shapes, ws_index=row["ws_index"] if row["ws_index"] >= 0 else ""))
    return rows


def write_layer_table(rows: list, out_dir) -> tuple:
    """Write the table as layers.csv and layers.json; returns both paths."""
    out_dir = Path(out_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "layers.csv", buffer.getvalue())
    atomic_write_text(out_dir / "layers.json", json.dumps(rows, indent=2) + "\n")
    return out_dir / "layers.csv", out_dir / "layers.json"


def format_table(rows: list, columns: list) -> str:
    """Format `columns` of the rows as a Markdown table for display in a notebook."""
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(str(row[column]) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def mixing_ranges(num_ws: int) -> dict:
    """Return the coarse, middle and fine ranges of ws entries, split as the StyleGAN paper does at 1024 px.

    At 1024 px (18 entries) coarse is 0-3 (4-8 px: pose, face shape), middle 4-7 (16-32 px: features,
    hair style) and fine 8-17 (64-1024 px: colour scheme, micro-structure) (Karras et al. 2019, section
    3.1). Smaller generators keep the same resolutions where they have them.
    """
    coarse_end = min(4, num_ws)
    middle_end = min(8, num_ws)
    return {"coarse": (0, coarse_end), "middle": (coarse_end, middle_end), "fine": (middle_end, num_ws)}


@torch.no_grad()
def style_mixing_grid(G, row_seeds, column_seeds, ws_range, truncation_psi=0.7) -> Image.Image:
    """Render a grid whose cell (r, c) takes ws[ws_range] from column_seeds[c], the rest from row_seeds[r].

    The top row shows the column sources and the left column the row sources; the corner stays blank.
    """
    device = next(G.parameters()).device
    rows_ws = G.mapping(z_from_seeds(row_seeds, G.z_dim).to(device), None, truncation_psi=truncation_psi)
    columns_ws = G.mapping(z_from_seeds(column_seeds, G.z_dim).to(device), None, truncation_psi=truncation_psi)
    start, end = ws_range

    images = [torch.full([1, G.img_channels, G.img_resolution, G.img_resolution], 1.0)]  # blank corner
    images += [G.synthesis(columns_ws[i : i + 1]).cpu() for i in range(len(column_seeds))]
    for r in range(len(row_seeds)):
        images.append(G.synthesis(rows_ws[r : r + 1]).cpu())
        mixed = rows_ws[r : r + 1].repeat(len(column_seeds), 1, 1)  # [C, num_ws, w_dim]
        mixed[:, start:end] = columns_ws[:, start:end]
        images.append(G.synthesis(mixed).cpu())
    return image_grid(torch.cat(images), columns=len(column_seeds) + 1)


def save_style_mixing(G, row_seeds, column_seeds, out_dir, truncation_psi=0.7) -> dict:
    """Save one labelled style-mixing grid per range (coarse, middle, fine); returns {range: path}."""
    paths = {}
    for name, ws_range in mixing_ranges(G.num_ws).items():
        if ws_range[0] >= ws_range[1]:
            continue
        grid = style_mixing_grid(G, row_seeds, column_seeds, ws_range, truncation_psi)
        paths[name] = save_image(_label(grid, f"{name}: ws[{ws_range[0]}:{ws_range[1]}] from the top row"),
                                 Path(out_dir) / f"style_mixing_{name}.png")
    return paths


def _label(image: Image.Image, text: str) -> Image.Image:
    """Return the image with a white strip holding `text` above it."""
    strip = 14 + image.width // 128
    labelled = Image.new("RGB", (image.width, image.height + strip), "white")
    labelled.paste(image.convert("RGB"), (0, strip))
    ImageDraw.Draw(labelled).text((4, 2), text, fill="black")
    return labelled
