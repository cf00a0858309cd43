"""The StyleGAN2 generator: mapping network plus synthesis network, with the official constructor."""

import copy

from torch import nn

from .mapping import MappingNetwork
from .synthesis import SynthesisNetwork


class Generator(nn.Module):
    """StyleGAN2 generator (Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", 2020).

    The constructor takes the same arguments as the official stylegan2-ada-pytorch `Generator`, so the
    keyword arguments recorded in an official network pickle build it directly, and its parameter and
    buffer names equal the official G_ema state_dict names.
    """

    def __init__(
        self,
        z_dim,  # Size of the input latent z.
        c_dim,  # Size of the class label; 0 for an unconditional generator.
        w_dim,  # Size of the intermediate latent w.
        img_resolution,  # Output resolution in pixels, a power of two.
        img_channels,  # Output channels: 3 for RGB, 1 for grayscale.
        mapping_kwargs={},  # Passed to MappingNetwork, e.g. num_layers (the official default is shared).
        synthesis_kwargs={},  # Passed to SynthesisNetwork, e.g. channel_base, num_fp16_res, conv_clamp.
    ):
        super().__init__()
        _check_sizes(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels)
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        # Plain copies of the constructor arguments, so save_generator can rebuild this network exactly.
        self.init_kwargs = dict(
            z_dim=z_dim,
            c_dim=c_dim,
            w_dim=w_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            mapping_kwargs=copy.deepcopy(dict(mapping_kwargs)),
            synthesis_kwargs=copy.deepcopy(dict(synthesis_kwargs)),
        )

        # Synthesis is built first, as in the official code, so state_dict() lists synthesis.* first.
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(
        self,
        z,  # Latents [N, z_dim]; float32 or float64.
        c=None,  # Class labels [N, c_dim]; None (or an empty [N, 0] tensor) when c_dim is 0.
        truncation_psi=1,  # 1 disables truncation; smaller values trade variety for typicality.
        truncation_cutoff=None,  # Truncate only the first `truncation_cutoff` entries of ws.
        noise_mode="const",  # "const" (the stored noise), "random" or "none".
        **synthesis_kwargs,  # force_fp32, fused_modconv.
    ):
        """Return images [N, img_channels, img_resolution, img_resolution], float32, nominally in [-1, 1]."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, **synthesis_kwargs)

    def extra_repr(self):
        return (
            f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, "
            f"img_resolution={self.img_resolution}, img_channels={self.img_channels}"
        )


def _check_sizes(**sizes) -> None:
    """Raise ValueError unless every size is a plain integer, positive except z_dim and c_dim (>= 0)."""
    for name, value in sizes.items():
        minimum = 0 if name in ("z_dim", "c_dim") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if sizes["z_dim"] == 0 and sizes["c_dim"] == 0:
        raise ValueError("z_dim and c_dim are both 0, so the mapping network would have no input")
