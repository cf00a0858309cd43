"""The configuration of one domain-adaptation run, read from configs/domains.json plus overrides."""

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .profiles import REPO_ROOT

DEFAULT_CONFIG_FILE = REPO_ROOT / "configs" / "domains.json"


@dataclass
class AdaptConfig:
    """Settings of a domain-adaptation run; the defaults follow StyleGAN-NADA (Gal et al. 2021)."""

    domain: str = "anime"  # name of the run; the model is saved as <out>/<domain>.pt
    source_text: str = "photo"  # what the source generator draws
    target_text: str = "anime painting"  # what the adapted generator should draw
    target_images: list = field(default_factory=list)  # reference image files; non-empty makes the run image-guided
    layers: list = field(default_factory=lambda: ["b64", "b128", "b256"])  # trainable layers (utils.freeze)
    adaptive_k: int = 0  # >0: choose this many ws entries' layers adaptively instead of `layers`
    adaptive_steps: int = 1  # optimisation steps on W+ codes for the adaptive choice
    adaptive_batch: int = 8  # codes optimised for the adaptive choice
    iterations: int = 300  # training steps
    batch: int = 2  # latents per step
    lr: float = 0.002  # Adam learning rate
    betas: tuple = (0.0, 0.99)  # Adam betas, as StyleGAN2 trains
    truncation_psi: float = 0.7  # truncation of the training latents (1 disables)
    direction_weight: float = 1.0  # weight of the directional CLIP loss
    global_weight: float = 0.0  # weight of the global CLIP loss (image to target text)
    angle_weight: float = 0.0  # weight of the in-domain angle-consistency regulariser (needs batch >= 2)
    clip_models: list = field(default_factory=lambda: ["ViT-B-32", "ViT-B-16"])  # "tiny" in the smoke profile
    clip_model_weights: list = field(default_factory=lambda: [1.0, 1.0])  # loss weight of each CLIP model
    seed: int = 0  # seeds the latents of every step; the same seed gives the same run on the CPU
    sample_every: int = 50  # steps between sample grids and loss plots
    checkpoint_every: int = 50  # steps between checkpoints
    sample_seeds: list = field(default_factory=lambda: list(range(8)))  # fixed latents of the sample grids
    metric_seeds: list = field(default_factory=lambda: list(range(100, 116)))  # latents of the CLIP-score metric
    amp: bool = True  # mixed precision for CLIP on CUDA; ignored on the CPU
    gradient_checkpointing: bool = True  # recompute synthesis blocks in backward: ~1.5 GiB less at 1024 px
    profile: str = "smoke"  # "smoke" or "full"

    def validate(self) -> "AdaptConfig":
        """Raise ValueError naming the first invalid setting; return self."""
        positive = ("iterations", "batch", "sample_every", "checkpoint_every", "adaptive_steps", "adaptive_batch")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        betas = self.betas if isinstance(self.betas, (list, tuple)) else ()
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not 0 < self.truncation_psi <= 1:
            raise ValueError(f"truncation_psi must be in (0, 1], got {self.truncation_psi!r}")
        if self.adaptive_k < 0:
            raise ValueError(f"adaptive_k must be 0 (off) or positive, got {self.adaptive_k!r}")
        if len(self.clip_models) != len(self.clip_model_weights):
            raise ValueError(
                f"clip_models {self.clip_models} and clip_model_weights {self.clip_model_weights} differ in length"
            )
        if self.angle_weight > 0 and self.batch < 2:
            raise ValueError(f"angle_weight > 0 compares images within a batch: use batch >= 2, got {self.batch}")
        if min(self.direction_weight, self.global_weight, self.angle_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if self.direction_weight == self.global_weight == 0:
            raise ValueError("direction_weight and global_weight are both 0, so nothing would be trained")
        if not self.layers and not self.adaptive_k:
            raise ValueError("no trainable layers: give layers or adaptive_k > 0")
        return self

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "AdaptConfig":
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            valid = ", ".join(f.name for f in dataclasses.fields(cls))
            raise ValueError(f"unknown configuration keys {unknown}; valid keys: {valid}")
        data = dict(data)
        if isinstance(data.get("betas"), (list, tuple)):
            data["betas"] = tuple(float(beta) for beta in data["betas"])
        return cls(**data)


def load_config(domain: str, profile: str, overrides: dict = None, path=DEFAULT_CONFIG_FILE) -> AdaptConfig:
    """Merge the file's defaults, its profile entries, the domain's entries and `overrides` (in that order)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"configuration file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None

    domains = data.get("domains", {})
    if domain not in domains:
        raise ValueError(f"unknown domain {domain!r} in {path}; known domains: {', '.join(domains)}")
    merged = dict(data.get("defaults", {}))
    merged.update(data.get("profiles", {}).get(profile, {}))
    merged.update(domains[domain])
    merged.update({key: value for key, value in (overrides or {}).items() if value is not None})
    merged.update(domain=domain, profile=profile)
    return AdaptConfig.from_dict(merged).validate()
