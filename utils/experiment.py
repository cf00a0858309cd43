"""The models and settings both notebooks share: source generator, CLIP, LPIPS, identity, domains.

An Experiment loads each model once for its profile (the real weights in `full`, tiny random stand-ins in
`smoke`) and offers the steps the notebooks run: train a domain, evaluate a generator, record provenance.
"""

import hashlib
import json
import logging
import platform
import time
from pathlib import Path

import torch

from stylegan2 import load_generator
from stylegan2.fileio import atomic_write_bytes

from .adapt import adapt, build_guide, compute_direction, load_source
from .identity import describe_batch, descriptor_similarity
from .metrics import evaluate_generators, write_metrics
from .perceptual import load_lpips, lpips_distance, random_lpips
from .profiles import REPO_ROOT, Run
from .provenance import code_version, state_dict_sha256
from .train_config import DEFAULT_CONFIG_FILE, load_config

log = logging.getLogger(__name__)

DOMAINS = ("anime", "sketch", "watercolor")


class Experiment:
    """Loaded models and per-domain configurations for one notebook run."""

    def __init__(self, run: Run, domains=DOMAINS, config_path=DEFAULT_CONFIG_FILE, overrides: dict = None):
        domains = parse_list(domains)
        if not domains:
            raise ValueError("domains is empty; name at least one domain of configs/domains.json")
        self.run = run
        self.started = time.time()
        self.configs = {domain: load_config(domain, run.profile, overrides, path=config_path) for domain in domains}
        first = next(iter(self.configs.values()))
        self.G_source = load_source(run.profile, run.device)
        self.guide = build_guide(first, run.device)
        self.lpips = load_lpips(run.device) if run.profile == "full" else random_lpips(device=run.device)
        self._directions = {}
        self._descriptors = {}  # identity descriptors by image bytes: the study renders the same sources often

    @property
    def models_dir(self) -> Path:
        """Where trained domain generators go: models/ for full runs, <output_dir>/models for smoke runs."""
        return REPO_ROOT / "models" if self.run.profile == "full" else self.run.output_dir / "models"

    def direction_for(self, domain: str):
        """Return (direction, target embedding) of a domain, computed once and cached."""
        if domain not in self._directions:
            self._directions[domain] = compute_direction(self.G_source, self.guide, self.configs[domain])
        return self._directions[domain]

    def lpips_pairs(self, img_a, img_b):
        """Compute LPIPS [B] between CPU image batches on the run's device."""
        device = self.run.device
        return lpips_distance(self.lpips, img_a.to(device), img_b.to(device)).cpu()

    def identity_pairs(self, img_a, img_b):
        """Compute the cosine similarity [B] of dlib face descriptors of CPU image batches, caching descriptors."""
        vectors = [self._descriptor(image) for image in torch.cat([img_a, img_b])]
        count = img_a.shape[0]
        return [descriptor_similarity(vectors[i], vectors[count + i]) for i in range(count)]

    def _descriptor(self, image):
        key = hashlib.sha256(image.numpy().tobytes()).hexdigest()
        if key not in self._descriptors:
            self._descriptors[key] = describe_batch(image[None])[0][0]
        return self._descriptors[key]

    def evaluate(self, G_adapted, domain: str, seeds, lpips_clusters: int = 10) -> dict:
        """Compute all metrics of an adapted generator against the source (utils.metrics.evaluate_generators)."""
        config = self.configs[domain]
        return evaluate_generators(
            self.G_source,
            G_adapted,
            self.guide,
            config.target_text,
            seeds,
            lpips_distance=self.lpips_pairs,
            identity_similarity=self.identity_pairs,
            truncation_psi=config.truncation_psi,
            lpips_clusters=lpips_clusters,
        )

    def train_domain(self, domain: str, out_dir, fresh: bool = False) -> dict:
        """Adapt the source generator to `domain`; the model is also copied to models_dir/<domain>.pt.

        An interrupted run in out_dir resumes; fresh=True deletes it and starts over instead.
        """
        summary = adapt(self.configs[domain], out_dir, resume=not fresh, overwrite=fresh, G_source=self.G_source,
                        guide=self.guide)
        target = self.models_dir / f"{domain}.pt"
        atomic_write_bytes(target, Path(summary["model"]).read_bytes())
        summary["model"] = str(target)
        return summary

    def load_domain(self, domain: str):
        """Load the trained generator of a domain from models_dir onto the run's device."""
        return load_generator(self.models_dir / f"{domain}.pt", device=self.run.device)

    def domain_generators(self, train_missing: bool = True) -> dict:
        """Load {domain: trained generator} from models_dir, training a missing model first (or raising)."""
        generators = {}
        for domain in self.configs:
            if not (self.models_dir / f"{domain}.pt").exists():
                if not train_missing:
                    raise FileNotFoundError(
                        f"{self.models_dir / (domain + '.pt')} is missing; run research.ipynb to train it"
                    )
                print(f"{domain}: no trained model in {self.models_dir}, training it now")
                self.train_domain(domain, self.run.output_dir / "training" / domain)
            generators[domain] = self.load_domain(domain)
        return generators

    def provenance(self) -> dict:
        """Return what produced this run's results: profile, code, weights, configurations, versions."""
        return dict(
            profile=self.run.profile,
            device=str(self.run.device),
            code_version=code_version(),
            source_weights_sha256=state_dict_sha256(self.G_source),
            clip_models=self.guide.names,
            configs={domain: config.to_dict() for domain, config in self.configs.items()},
            torch=torch.__version__,
            python=platform.python_version(),
            seconds=round(time.time() - self.started, 1),
        )

    def write_json(self, data: dict, name: str) -> Path:
        """Write `data` as <output_dir>/<name>, refusing non-finite numbers (utils.metrics.write_metrics)."""
        return write_metrics(data, self.run.output_dir / name)



# Budgets of the research notebook per profile. The full budget aims at about 75 minutes on a 6 GB GPU.
# NOTE: that time is an estimate, not measured: no GPU run of the full profile has been made yet.
RESEARCH_DEFAULTS = {
    "full": dict(study_steps=60, study_seeds=16, adaptive_repeats=5, eval_seeds=64),
    "smoke": dict(study_steps=2, study_seeds=4, adaptive_repeats=2, eval_seeds=12),
}


# Budgets of the inference notebook: the official projector runs 1000 steps and PTI 350.
INFERENCE_DEFAULTS = {
    "full": dict(projection_steps=1000, pti_steps=350),
    "smoke": dict(projection_steps=30, pti_steps=10),
}


# Smallest value of each budget; the final evaluation clusters its images into 10 groups, so it needs 11.
_MINIMUM = dict(study_steps=1, study_seeds=2, adaptive_repeats=1, eval_seeds=11, projection_steps=1, pti_steps=0)


def research_settings(profile: str, **chosen) -> dict:
    """Return the research notebook's budgets: the profile's defaults, updated by the non-None `chosen`."""
    return _settings(RESEARCH_DEFAULTS[profile], chosen)


def inference_settings(profile: str, **chosen) -> dict:
    """Return the inference notebook's budgets: the profile's defaults, updated by the non-None `chosen`."""
    return _settings(INFERENCE_DEFAULTS[profile], chosen)


def parse_list(value, item_type=str) -> list:
    """Turn a notebook parameter into a list: a list stays, a string is read as JSON or as comma-separated.

    papermill's -p passes every value as a string, so -p domains '["anime", "sketch"]' and
    -p domains anime,sketch both arrive here as text.
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else [item for item in text.split(",") if item.strip()]
        except json.JSONDecodeError:
            raise ValueError(f"cannot read {value!r} as a list; write it as a,b,c or as a JSON list") from None
    if not isinstance(value, (list, tuple)):
        value = [value]
    try:
        return [item_type(item.strip() if isinstance(item, str) else item) for item in value]
    except (TypeError, ValueError):
        raise ValueError(f"expected a list of {item_type.__name__} values, got {value!r}") from None


def _settings(defaults: dict, chosen: dict) -> dict:
    settings = dict(defaults)
    settings.update({key: value for key, value in chosen.items() if value is not None})
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"unknown settings {unknown}; valid: {sorted(defaults)}")
    for name, value in settings.items():
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = settings[name] = int(value)  # papermill's -p may pass numbers as text
        if isinstance(value, bool) or not isinstance(value, int) or value < _MINIMUM[name]:
            raise ValueError(f"{name} must be an integer >= {_MINIMUM[name]}, got {value!r}")
    return settings
