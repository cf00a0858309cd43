"""Named groups of generator parameters, for freezing and unfreezing by name, and the ws index of each layer.

Group names (R is a block resolution, 4 ... img_resolution):

    mapping               the whole mapping network (z -> w)
    bR                    everything in the synthesis block of resolution R
    b4.const              the learned 4x4 input of the first block
    bR.conv0, bR.conv1    one modulated convolution: weight, bias, noise strength and its style affine
    bR.torgb              the block's ToRGB layer with its style affine
    bR.conv0.affine, ...  only the style affine (w -> per-channel scales) of that layer

Which entry of ws [N, num_ws, w_dim] each layer reads: block b4 has conv1 at ws[0] and torgb at ws[1]; in
block R = 2**k >= 8, conv0 reads ws[2k - 5], conv1 ws[2k - 4] and torgb ws[2k - 3]. Each ToRGB shares its
entry with the next block's conv0 (at 1024: 18 entries, b1024.torgb reads ws[17]).
"""

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class LayerGroup:
    """A named set of generator parameters."""

    name: str  # e.g. "mapping", "b64", "b64.conv0", "b64.conv0.affine"
    kind: str  # "mapping", "block", "const", "conv", "torgb" or "affine"
    resolution: int  # block resolution in pixels; 0 for the mapping network
    ws_index: int  # entry of ws the layer reads; -1 for groups that are not a single layer
    parameters: tuple  # parameter names as in G.named_parameters()

    @property
    def num_params(self) -> int:
        return len(self.parameters)


def layer_ws_indices(G: nn.Module) -> dict:
    """Return {layer name: ws index} for every synthesis layer, e.g. {"b4.conv1": 0, "b4.torgb": 1, ...}.

    Derived from the same block bookkeeping the synthesis network uses to slice ws, so it is the real one.
    """
    indices = {}
    start = 0
    for block in G.synthesis.blocks():
        names = ["conv1"]
        if hasattr(block, "conv0"):
            names.insert(0, "conv0")
        if block.num_torgb:
            names.append("torgb")
        for offset, layer in enumerate(names):
            indices[f"b{block.resolution}.{layer}"] = start + offset
        start += block.num_conv
    return indices


def layer_groups(G: nn.Module) -> list:
    """List the generator's parameter groups, from the mapping network to the last block's ToRGB."""
    parameter_names = [name for name, _ in G.named_parameters()]

    def under(prefix):
        return tuple(name for name in parameter_names if name.startswith(prefix + "."))

    groups = [LayerGroup("mapping", "mapping", 0, -1, under("mapping"))]
    ws_indices = layer_ws_indices(G)
    for block in G.synthesis.blocks():
        block_name = f"b{block.resolution}"
        groups.append(LayerGroup(block_name, "block", block.resolution, -1, under(f"synthesis.{block_name}")))
        if hasattr(block, "const"):
            groups.append(LayerGroup(f"{block_name}.const", "const", block.resolution, 0, (f"synthesis.{block_name}.const",)))
        for layer in ("conv0", "conv1", "torgb"):
            name = f"{block_name}.{layer}"
            if name not in ws_indices:
                continue
            kind = "torgb" if layer == "torgb" else "conv"
            index = ws_indices[name]
            groups.append(LayerGroup(name, kind, block.resolution, index, under(f"synthesis.{name}")))
            groups.append(LayerGroup(f"{name}.affine", "affine", block.resolution, index, under(f"synthesis.{name}.affine")))
    return groups


def group_table(G: nn.Module) -> list:
    """Rows for the mapping network, b4.const and each convolution and ToRGB layer (affine included): name,
    kind, resolution, ws index, parameter shapes and number of values."""
    parameters = dict(G.named_parameters())
    rows = []
    for group in layer_groups(G):
        if group.kind not in ("mapping", "const", "conv", "torgb"):
            continue
        rows.append(
            dict(
                name=group.name,
                kind=group.kind,
                resolution=group.resolution,
                ws_index=group.ws_index,
                shapes={name.removeprefix("synthesis."): list(parameters[name].shape) for name in group.parameters},
                num_values=sum(parameters[name].numel() for name in group.parameters),
            )
        )
    return rows
