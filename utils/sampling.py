"""Sample images from a generator for fixed seeds, as the official generate.py does."""

import numpy as np
import torch


def z_from_seeds(seeds, z_dim: int) -> torch.Tensor:
    """Latents [len(seeds), z_dim]: row i is np.random.RandomState(seeds[i]).randn(z_dim), as generate.py draws.

    Returned as float64, the dtype numpy draws in; the mapping network computes in float32.
    """
    seeds = [int(seed) for seed in seeds]
    if any(seed < 0 or seed >= 2**32 for seed in seeds):
        raise ValueError(f"seeds must be integers in [0, 2**32), got {seeds}")
    return torch.from_numpy(np.stack([np.random.RandomState(seed).randn(z_dim) for seed in seeds]))


@torch.no_grad()
def generate(G, seeds, truncation_psi: float = 0.7, noise_mode: str = "const", batch_size: int = 4) -> torch.Tensor:
    """Render one image per seed; returns [len(seeds), C, H, W] float32 on the CPU, nominally in [-1, 1]."""
    device = next(G.parameters()).device
    z = z_from_seeds(seeds, G.z_dim)
    images = []
    for start in range(0, len(z), batch_size):
        batch = z[start : start + batch_size].to(device)
        images.append(G(batch, None, truncation_psi=truncation_psi, noise_mode=noise_mode).float().cpu())
    return torch.cat(images)
