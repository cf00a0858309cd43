"""Project an image into a StyleGAN2 generator's latent space (W or W+) by optimisation.

The schedule follows project() in NVlabs/stylegan2-ada-pytorch projector.py: w statistics from 10,000
mapped z samples, Adam from w_avg with a ramped learning rate, decaying noise on w, optimised noise maps
with an autocorrelation penalty, and LPIPS-VGG16 at 256 px. W+ adds a penalty that keeps the code near
the W distribution (see w_distribution_penalty), because codes far from it render with artifacts
through generators adapted to other domains.

    result = project(G, target, lpips_model, mode="w+", num_steps=1000)
    image = render_projection(G, result)       # reconstruction with the optimised noise maps
    image = G.synthesis(result.ws)             # the code alone, with G's own noise maps
"""

import copy
import dataclasses
import math
from typing import Dict, Iterable, List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from .images import from_pil
from .perceptual import load_lpips, lpips_distance

MODES = ("w", "w+")

# Defaults of project() in stylegan2-ada-pytorch projector.py.
NUM_STEPS = 1000
W_AVG_SAMPLES = 10000  # z samples behind w_avg and w_std
W_AVG_SEED = 123  # the official projector draws those z from np.random.RandomState(123)
INITIAL_LEARNING_RATE = 0.1
LR_RAMPDOWN_LENGTH = 0.25  # fraction of the steps at the end over which the lr falls to 0 along a cosine
LR_RAMPUP_LENGTH = 0.05  # fraction of the steps at the start over which the lr rises linearly from 0
INITIAL_NOISE_FACTOR = 0.05  # std of the noise added to w at step 0, in units of w_std
NOISE_RAMP_LENGTH = 0.75  # fraction of the steps after which no noise is added to w
NOISE_REG_WEIGHT = 1e5  # weight of the noise-map autocorrelation penalty
NOISE_REG_MIN_SIZE = 8  # the penalty is taken at each 2x average-pooled level down to 8x8
ADAM_BETAS = (0.9, 0.999)

# Quantile of ||w - w_avg|| / w_std over the mapped samples that counts as the edge of the W distribution.
W_RADIUS_QUANTILE = 0.99
# Weight of w_distribution_penalty in W+ mode (W mode defaults to 0, as the official projector).
# NOTE: this value is not tuned on the FFHQ generator. It was chosen on tiny random 32 px generators
# with a random-backbone LPIPS, where it cut the spread of the entries 30x at a small LPIPS cost.
W_PLUS_REG_WEIGHT = 0.05

_RADIUS_EPS = 1e-8  # floor of the squared radius, so sqrt has a finite gradient at w = w_avg


@dataclasses.dataclass
class WStats:
    """Statistics of the W distribution of a generator, from mapped z samples."""

    w_avg: torch.Tensor  # [w_dim], mean of the sampled w
    w_std: float  # sqrt(E ||w - w_avg||^2), one scalar for all dimensions, as the official projector
    radius_limit: float  # W_RADIUS_QUANTILE quantile of ||w - w_avg|| / w_std over the samples


@dataclasses.dataclass
class ProjectionResult:
    """Output of project(): the latent code and what reproduces the target with it."""

    ws: torch.Tensor  # [1, num_ws, w_dim], the final code without the w noise of the schedule
    # Optimised noise maps, synthesis buffer name (e.g. "b8.conv0.noise_const") -> [R, R]. They fit this
    # one image and are meant for reconstruction only, so adapted generators keep their own noise maps.
    noise: Dict[str, torch.Tensor]
    history: List[dict]  # one dict per step: step, lr, lpips, noise_reg, w_reg, loss
    lpips: float  # LPIPS between the reconstruction (ws and the optimised noise) and the target
    mse: float  # mean squared error of the same pair, in [-1, 1] pixel units
    mode: str  # "w" or "w+"
    w_stats: WStats


def learning_rate(
    t: float,
    initial: float = INITIAL_LEARNING_RATE,
    rampdown_length: float = LR_RAMPDOWN_LENGTH,
    rampup_length: float = LR_RAMPUP_LENGTH,
) -> float:
    """Return the learning rate at progress t = step / num_steps in [0, 1]: a linear ramp-up, then a
    cosine ramp-down to 0 over the last `rampdown_length` of the run."""
    rampdown = min(1.0, (1.0 - t) / rampdown_length)
    ramp = 0.5 - 0.5 * math.cos(math.pi * rampdown)
    ramp *= min(1.0, t / rampup_length)
    return initial * ramp


def w_noise_scale(
    t: float,
    w_std: float,
    initial_factor: float = INITIAL_NOISE_FACTOR,
    ramp_length: float = NOISE_RAMP_LENGTH,
) -> float:
    """Return the std of the Gaussian noise added to w at progress t: quadratic decay to 0 at ramp_length."""
    return w_std * initial_factor * max(0.0, 1.0 - t / ramp_length) ** 2


def noise_regularization(noise_maps: Iterable[torch.Tensor]) -> torch.Tensor:
    """Compute the multi-scale autocorrelation penalty of noise maps [H, W] (StyleGAN2 projector).

    For each map and each 2x average-pooled level down to NOISE_REG_MIN_SIZE, add the squared mean of
    the map times itself shifted by one pixel, along x and along y (torch.roll, so the shift wraps
    around). White noise scores near 0, and maps that encode image structure score higher.
    """
    total = torch.zeros([])
    for noise in noise_maps:
        level = noise[None, None]  # [1, 1, H, W], the layout avg_pool2d needs
        total = total.to(noise.device)
        while True:
            total = total + (level * level.roll(shifts=1, dims=3)).mean().square()
            total = total + (level * level.roll(shifts=1, dims=2)).mean().square()
            if level.shape[2] <= NOISE_REG_MIN_SIZE:
                break
            level = F.avg_pool2d(level, kernel_size=2)
    return total


def normalize_noise_(noise_maps: Iterable[torch.Tensor]) -> None:
    """Shift and scale each noise map in place to zero mean and unit variance."""
    with torch.no_grad():
        for noise in noise_maps:
            noise -= noise.mean()
            noise *= noise.square().mean().rsqrt()


def ws_spread(ws: torch.Tensor, w_std: float) -> torch.Tensor:
    """Return the mean squared distance [N] of the entries of ws [N, num_ws, w_dim] from their mean, in
    units of w_std^2. It is 0 for a code in W (all entries equal)."""
    mean = ws.mean(dim=1, keepdim=True)  # [N, 1, w_dim]
    return (ws - mean).square().sum(dim=2).mean(dim=1) / w_std**2


def ws_radius_excess(ws: torch.Tensor, stats: WStats) -> torch.Tensor:
    """Return the mean over entries [N] of max(0, ||w - w_avg|| / w_std - radius_limit)^2 for ws
    [N, num_ws, w_dim]. It is 0 while every entry lies as close to w_avg as 99% of mapped samples."""
    w_avg = stats.w_avg.to(ws.device, ws.dtype)
    squared = (ws - w_avg).square().sum(dim=2) / stats.w_std**2  # [N, num_ws]
    radius = squared.clamp_min(_RADIUS_EPS).sqrt()
    return F.relu(radius - stats.radius_limit).square().mean(dim=1)


def w_distribution_penalty(ws: torch.Tensor, stats: WStats) -> torch.Tensor:
    """Compute the penalty [N] that keeps codes ws [N, num_ws, w_dim] near the W distribution.

    Unconstrained W+ codes reproduce the target better but drift out of the distribution the generator
    was trained on, and the synthesis layers of an adapted generator then render them with artifacts.
    Two terms counter this:
    - ws_spread: the entries of a W code are all equal, so their spread measures the step into W+. This
      is the delta regularisation of e4e (Tov et al. 2021, "Designing an Encoder for StyleGAN Image
      Manipulation"), which penalises the offsets of the entries from one base w. The mean of the entries
      serves as the base here, and the distances are squared so that the gradient is smooth at zero
      spread, where W+ projection starts.
    - ws_radius_excess: each entry should be as close to w_avg as typical mapped samples are. Within the
      radius_limit quantile the term is 0, so it does not pull codes towards the average face (which the
      truncation trick would do).
    Both terms are in units of w_std, so one weight fits generators of any w scale.
    """
    return ws_spread(ws, stats.w_std) + ws_radius_excess(ws, stats)


def compute_w_stats(
    G,
    num_samples: int = W_AVG_SAMPLES,
    seed: int = W_AVG_SEED,
    batch_size: int = 1000,
) -> WStats:
    """Map `num_samples` z from np.random.RandomState(seed) through G.mapping and return their WStats.

    The global numpy and torch RNGs are not used, and G.mapping's running w_avg is not updated.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}")
    device = _device_of(G)
    z_samples = np.random.RandomState(seed).randn(num_samples, G.z_dim)  # [S, z_dim], float64

    w_batches = []
    with torch.no_grad():
        for start in range(0, num_samples, batch_size):
            z = torch.from_numpy(z_samples[start : start + batch_size]).to(device)
            ws = G.mapping(z, None, skip_w_avg_update=True)  # [B, num_ws, w_dim], all entries equal
            w_batches.append(ws[:, 0].to(torch.float64))
    w = torch.cat(w_batches)  # [S, w_dim]

    w_avg = w.mean(dim=0)
    squared = (w - w_avg).square().sum(dim=1)  # [S]
    w_std = squared.mean().sqrt().item()
    radius = squared.sqrt() / w_std
    radius_limit = torch.quantile(radius, W_RADIUS_QUANTILE).item()
    return WStats(w_avg=w_avg.to(torch.float32), w_std=w_std, radius_limit=radius_limit)


def prepare_target(target: Union[torch.Tensor, Image.Image], resolution: int, channels: int) -> torch.Tensor:
    """Return the target as a float32 tensor [1, channels, resolution, resolution] in [-1, 1].

    A PIL image is centre-cropped to a square and resized with Lanczos filtering, as the official
    projector does. A tensor must already be [1, channels, resolution, resolution] in [-1, 1].
    """
    if isinstance(target, Image.Image):
        width, height = target.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        square = target.crop((left, top, left + side, top + side))
        return from_pil(square, resolution=resolution, channels=channels)

    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a PIL image or a tensor [1, C, H, W], got {type(target).__name__}")
    expected = [1, channels, resolution, resolution]
    if list(target.shape) != expected:
        raise ValueError(
            f"target has shape {list(target.shape)}, expected {expected} (the generator's channels and "
            f"resolution). Pass a PIL image to have it cropped and resized, or add the batch axis with "
            f"target.unsqueeze(0)"
        )
    if not target.is_floating_point():
        raise TypeError(f"target must be a float tensor in [-1, 1], got dtype {target.dtype}")
    if not torch.isfinite(target).all():
        raise ValueError("target contains NaN or infinite values")
    if target.min() >= 0 and target.max() > 2:
        raise ValueError(
            f"target values lie in [{target.min().item():.3g}, {target.max().item():.3g}], which looks like "
            f"[0, 255]. Convert with target / 127.5 - 1"
        )
    return target.to(torch.float32)


def project(
    G,
    target: Union[torch.Tensor, Image.Image],
    lpips_model=None,
    *,
    mode: str = "w",
    num_steps: int = NUM_STEPS,
    seed: int = 0,
    w_reg_weight: Optional[float] = None,
    noise_reg_weight: float = NOISE_REG_WEIGHT,
    initial_learning_rate: float = INITIAL_LEARNING_RATE,
    w_avg_samples: int = W_AVG_SAMPLES,
    progress: bool = True,
) -> ProjectionResult:
    """Find the code ws whose image under G reproduces `target`, by the official projector's schedule.

    G: an unconditional stylegan2.Generator. It is deep-copied, so its parameters and noise buffers stay
        as they are.
    target: a tensor [1, C, R, R] in [-1, 1] at G's resolution, or a PIL image (see prepare_target).
    lpips_model: from utils.perceptual (load_lpips or random_lpips), on G's device. None calls
        load_lpips, which needs the "vgg16" weights file.
    mode: "w" optimises one w shared by all num_ws entries, "w+" one w per entry, both from w_avg.
    num_steps: optimisation steps, 1000 in the official projector.
    seed: seeds the noise maps and the w noise, from a local generator. The same seed on the same
        device gives bitwise the same result on the CPU.
    w_reg_weight: weight of w_distribution_penalty. None means W_PLUS_REG_WEIGHT in W+ mode and 0 in
        W mode.
    noise_reg_weight: weight of noise_regularization.
    initial_learning_rate: peak Adam learning rate of the schedule (see learning_rate).
    w_avg_samples: z samples for compute_w_stats.
    progress: show a tqdm bar with the losses.
    """
    _check_generator(G)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if w_reg_weight is None:
        w_reg_weight = W_PLUS_REG_WEIGHT if mode == "w+" else 0.0

    device = _device_of(G)
    G = copy.deepcopy(G).eval().requires_grad_(False)
    target = prepare_target(target, G.img_resolution, G.img_channels).to(device)
    if lpips_model is None:
        lpips_model = load_lpips(device=device)
    _check_same_device(lpips_model, device)
    stats = compute_w_stats(G, num_samples=w_avg_samples)

    # Start from w_avg, with fresh white noise maps.
    generator = torch.Generator(device=device).manual_seed(seed)
    noise = {
        name: torch.randn(buffer.shape, generator=generator, device=device).requires_grad_(True)
        for name, buffer in G.synthesis.named_buffers()
        if name.endswith("noise_const")
    }
    entries = 1 if mode == "w" else G.num_ws
    w_opt = stats.w_avg.to(device).reshape(1, 1, -1).repeat(1, entries, 1)  # [1, entries, w_dim]
    w_opt.requires_grad_(True)
    optimizer = torch.optim.Adam([w_opt, *noise.values()], betas=ADAM_BETAS, lr=initial_learning_rate)

    history = []
    bar = tqdm(range(num_steps), desc=f"project {mode}", disable=not progress, leave=False)
    for step in bar:
        t = step / num_steps
        lr = learning_rate(t, initial_learning_rate)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # Noise on w explores around the current code early on and fades out by NOISE_RAMP_LENGTH.
        w_noise = torch.randn(w_opt.shape, generator=generator, device=device) * w_noise_scale(t, stats.w_std)
        ws = (w_opt + w_noise).expand(-1, G.num_ws, -1)  # [1, num_ws, w_dim]
        synth = render_with_noise(G, ws, noise)

        dist = lpips_distance(lpips_model, synth, target).sum()
        noise_reg = noise_regularization(noise.values())
        w_reg = w_distribution_penalty(w_opt, stats).sum()
        loss = dist + noise_reg_weight * noise_reg + w_reg_weight * w_reg

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        normalize_noise_(noise.values())

        record = dict(
            step=step, lr=lr, lpips=dist.item(), noise_reg=noise_reg.item(), w_reg=w_reg.item(), loss=loss.item()
        )
        history.append(record)
        bar.set_postfix_str(
            f"lpips {record['lpips']:.4f} noise {record['noise_reg']:.2e} w_reg {record['w_reg']:.3f}",
            refresh=False,
        )

    # Measure the final code without the schedule's w noise.
    final_ws = w_opt.detach().expand(-1, G.num_ws, -1).clone()  # [1, num_ws, w_dim]
    final_noise = {name: value.detach().clone() for name, value in noise.items()}
    with torch.no_grad():
        synth = render_with_noise(G, final_ws, final_noise)
        final_lpips = lpips_distance(lpips_model, synth, target).item()
        final_mse = (synth - target).square().mean().item()
    return ProjectionResult(
        ws=final_ws,
        noise=final_noise,
        history=history,
        lpips=final_lpips,
        mse=final_mse,
        mode=mode,
        w_stats=stats,
    )


def render_with_noise(G, ws: torch.Tensor, noise: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Render ws [N, num_ws, w_dim] with G.synthesis in noise mode "const", using the given noise maps in
    place of G's noise buffers, without changing G. Returns images [N, C, R, R]."""
    return torch.func.functional_call(G.synthesis, noise, (ws,), {"noise_mode": "const"})


def render_projection(G, result: ProjectionResult) -> torch.Tensor:
    """Render the reconstruction [1, C, R, R] of a projection: its ws with its optimised noise maps."""
    return render_with_noise(G, result.ws, result.noise)


def _device_of(G) -> torch.device:
    return next(G.parameters()).device


def _check_generator(G) -> None:
    for attribute in ("mapping", "synthesis", "num_ws", "img_resolution", "img_channels", "c_dim"):
        if not hasattr(G, attribute):
            raise TypeError(f"G must be a stylegan2.Generator, got {type(G).__name__} without .{attribute}")
    if G.c_dim != 0:
        raise ValueError(f"projection supports unconditional generators only, but G has c_dim={G.c_dim}")


def _check_same_device(module, device: torch.device) -> None:
    module_device = next(module.parameters()).device
    if module_device != device:
        raise ValueError(
            f"lpips_model is on {module_device} but the generator is on {device}. "
            f"Move it with .to({str(device)!r})"
        )
