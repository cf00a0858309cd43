"""Choose which generator parameters train: freeze everything, then enable named groups.

A layer spec is a list of tokens; each token is one of
- a group name from stylegan2.layer_groups: "mapping", "b64" (a whole block), "b64.conv0", "b64.torgb",
  "b64.conv0.affine", "b4.const";
- a kind, which selects that kind in every block: "conv" (both convolutions with their affines),
  "torgb", "affine" (only the style affines), "const";
- a full parameter name such as "synthesis.b64.conv0.weight".

The mapping network and the ToRGB layers stay frozen unless a token names them ("mapping", "torgb",
"b64.torgb", ...): a block token like "b64" enables its two convolutions only.
"""

import torch

from stylegan2 import layer_groups, layer_ws_indices

KINDS = ("conv", "torgb", "affine", "const")
# The middle blocks, which StyleGAN-NADA and this project's layer study point to as carrying style.
DEFAULT_LAYERS = ("b64", "b128", "b256")


def valid_tokens(G) -> list:
    """All group names and kinds a layer spec may use for this generator."""
    return [group.name for group in layer_groups(G)] + list(KINDS)


def select_parameters(G, layers) -> list:
    """Resolve a layer spec to parameter names, in G.named_parameters() order.

    Raises ValueError naming any unknown token and listing the valid ones.
    """
    if isinstance(layers, str):
        layers = [token for token in layers.replace(",", " ").split() if token]
    groups = {group.name: group for group in layer_groups(G)}
    all_names = [name for name, _ in G.named_parameters()]
    unknown = [token for token in layers if token not in groups and token not in KINDS and token not in all_names]
    if unknown:
        raise ValueError(f"unknown layer names {unknown}; valid names: {', '.join(valid_tokens(G))}")

    selected = set()
    for token in layers:
        if token in all_names:
            selected.add(token)
        elif token in KINDS:
            for group in groups.values():
                # "affine" means the convolutions' affines; ToRGB affines need "torgb" or a ToRGB name.
                if group.kind == token and not (token == "affine" and ".torgb" in group.name):
                    selected.update(group.parameters)
        else:
            group = groups[token]
            names = set(group.parameters)
            if group.kind == "block":
                names -= set(groups[f"{token}.torgb"].parameters) if f"{token}.torgb" in groups else set()
            selected.update(names)
    return [name for name in all_names if name in selected]


def freeze_except(G, layers) -> list:
    """Set requires_grad on the parameters `layers` selects and clear it everywhere else; returns their names."""
    names = select_parameters(G, layers)
    if not names:
        raise ValueError(f"the layer spec {list(layers)} selects no parameters; name at least one layer")
    G.requires_grad_(False)
    parameters = dict(G.named_parameters())
    for name in names:
        parameters[name].requires_grad_(True)
    return names


def layers_reading_ws(G, index: int, include_torgb: bool = False) -> list:
    """Names of the synthesis layers ("b8.conv0", ...) that read ws[:, index]."""
    return [
        name
        for name, ws_index in layer_ws_indices(G).items()
        if ws_index == index and (include_torgb or not name.endswith("torgb"))
    ]


def choose_layers_adaptively(G, ws, loss_fn, k: int, steps: int = 1, lr: float = 0.01, include_torgb: bool = False):
    """Pick the layers whose ws entries an optimisation of `loss_fn` moves most (StyleGAN-NADA's adaptive
    layer selection, Gal et al. 2021).

    ws: [N, num_ws, w_dim] starting codes (W+); loss_fn(img) -> scalar loss of the images G renders.
    Runs `steps` SGD steps on a copy of ws with G's weights untouched, ranks the ws entries by their mean
    absolute change, and returns (layer names, per-entry change [num_ws]). Entries read by no selectable
    layer (the last ToRGB's entry, unless include_torgb) are skipped; k counts ws entries, and an entry
    read by two layers enables both.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    start = ws.detach().clone()
    codes = start.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([codes], lr=lr)
    was_enabled = {name: p.requires_grad for name, p in G.named_parameters()}
    G.requires_grad_(False)
    try:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(G.synthesis(codes, noise_mode="const")).backward()
            optimizer.step()
    finally:
        for name, parameter in G.named_parameters():
            parameter.requires_grad_(was_enabled[name])

    change = (codes.detach() - start).abs().mean(dim=(0, 2))  # [num_ws]
    ranked = [i for i in torch.argsort(change, descending=True).tolist() if layers_reading_ws(G, i, include_torgb)]
    layers = [name for index in ranked[:k] for name in layers_reading_ws(G, index, include_torgb)]
    return layers, change
