"""Run profiles shared by the notebooks and the command lines.

- full:  the real FFHQ 1024 generator (and CLIP) on a CUDA GPU; weights are downloaded on first use.
- smoke: tiny randomly initialised models on the CPU; exercises every code path in minutes, and its
         pictures show nothing meaningful.
- auto:  full when a CUDA GPU is present, else smoke (announced in one line).
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from stylegan2 import Generator, load_generator

from .weights import fetch

log = logging.getLogger(__name__)

PROFILES = ("auto", "smoke", "full")
REPO_ROOT = Path(__file__).resolve().parent.parent

# The smoke profile's stand-in for the FFHQ generator: 64 px, 64 channels at most, 2 mapping layers.
SMOKE_GENERATOR_KWARGS = dict(
    z_dim=64,
    c_dim=0,
    w_dim=64,
    img_resolution=64,
    img_channels=3,
    mapping_kwargs=dict(num_layers=2),
    synthesis_kwargs=dict(channel_base=1024, channel_max=64, num_fp16_res=2, conv_clamp=256),
)


@dataclass
class Run:
    """Settings of one notebook or command run: profile, device and output folder."""

    profile: str  # "smoke" or "full" (auto already resolved)
    device: torch.device
    output_dir: Path  # figures and JSON files go here


def resolve_profile(profile: str) -> str:
    """Return "smoke" or "full" for `profile`, deciding "auto" by whether a CUDA GPU is present."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if profile != "auto":
        return profile
    if torch.cuda.is_available():
        print(f"profile auto -> full: CUDA GPU {torch.cuda.get_device_name(0)} found, using the real weights")
        return "full"
    print("profile auto -> smoke: no CUDA GPU found, running tiny random models on the CPU (pictures are noise)")
    return "smoke"


def default_output_dir(profile: str) -> Path:
    """pictures/ for full runs; runs/smoke/ for smoke runs, so their noise images never replace real figures."""
    return REPO_ROOT / ("pictures" if profile == "full" else "runs/smoke")


def start_run(profile: str = "auto", output_dir=None) -> Run:
    """Resolve the profile, pick the device and create the output folder."""
    profile = resolve_profile(profile)
    if profile == "full" and not torch.cuda.is_available():
        raise RuntimeError(
            "profile 'full' needs a CUDA GPU, and none is available here; use profile='smoke' (or 'auto')"
        )
    device = torch.device("cuda" if profile == "full" else "cpu")
    output_dir = Path(output_dir) if output_dir else default_output_dir(profile)
    output_dir.mkdir(parents=True, exist_ok=True)
    return Run(profile=profile, device=device, output_dir=output_dir)


def smoke_generator(seed: int = 0) -> Generator:
    """A tiny generator with the official random initialisation; the same weights for the same seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(**SMOKE_GENERATOR_KWARGS)
    return G.eval().requires_grad_(False)


def source_generator(run: Run) -> Generator:
    """The source (face) generator of a run: FFHQ 1024 for full runs, the tiny stand-in for smoke runs."""
    if run.profile == "smoke":
        return smoke_generator().to(run.device)
    return load_generator(fetch("ffhq"), device=run.device)
