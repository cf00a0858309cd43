"""The layer table and the style-mixing figures."""

import numpy as np
import torch

from utils.anatomy import layer_table, mixing_ranges, save_style_mixing, style_mixing_grid
from utils.profiles import smoke_generator


def test_layer_table_rows():
    G = smoke_generator()
    rows = {row["name"]: row for row in layer_table(G)}
    assert rows["b8.conv0"]["ws_index"] == 1
    assert rows["b64.torgb"]["ws_index"] == G.num_ws - 1
    assert rows["mapping"]["ws_index"] == ""
    assert sum(row["num_values"] for row in rows.values() if row["kind"] != "affine") == sum(
        p.numel() for p in G.parameters()
    )


def test_mixing_ranges_at_1024():
    assert mixing_ranges(18) == {"coarse": (0, 4), "middle": (4, 8), "fine": (8, 18)}
    assert mixing_ranges(12) == {"coarse": (0, 4), "middle": (4, 8), "fine": (8, 12)}


def test_mixing_cell_takes_range_from_column():
    G = smoke_generator()
    grid = style_mixing_grid(G, [1, 2], [3], (0, G.num_ws))
    cells = torch.from_numpy(np.array(grid)).float()
    size = G.img_resolution
    column_source = cells[0:size, size : 2 * size]
    mixed_all = cells[size : 2 * size, size : 2 * size]
    assert torch.equal(column_source, mixed_all)  # the whole ws from the column: the column's image
    assert not torch.equal(cells[size : 2 * size, 0:size], mixed_all)


def test_save_style_mixing(tmp_path):
    paths = save_style_mixing(smoke_generator(), [1, 2], [3, 4], tmp_path)
    assert sorted(paths) == ["coarse", "fine", "middle"]
    assert all(path.exists() for path in paths.values())
