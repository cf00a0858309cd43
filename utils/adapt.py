"""Adapt the FFHQ generator to a new domain from a text prompt (or reference images), guided by CLIP.

    python -m utils.adapt --profile smoke --domain anime --out runs/adapt/anime
    python -m utils.adapt --profile full --domain sketch --out runs/adapt/sketch --iterations 400
    python -m utils.adapt --profile full --domain anime --out runs/adapt/anime --resume

Writes <out>/<domain>.pt (load it with stylegan2.load_generator), train_log.jsonl, loss.png,
samples/step_*.png (source row above adapted row), checkpoint.pt and <domain>_run.json with the
configuration, the provenance and the CLIP-score metric.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from stylegan2 import CheckpointError, load_generator, save_generator
from stylegan2.checkpoint import resolve_device
from stylegan2.fileio import atomic_write_text

from .clip_model import ClipGuide, load_guide, tiny_clip
from .directions import embed_images, embed_text, image_direction, text_direction
from .profiles import PROFILES, REPO_ROOT, resolve_profile, smoke_generator
from .provenance import code_version
from .sampling import z_from_seeds
from .train_config import DEFAULT_CONFIG_FILE, AdaptConfig, load_config
from .trainer import Trainer, TrainingError
from .weights import WeightsError, fetch

log = logging.getLogger(__name__)


def build_guide(config: AdaptConfig, device) -> ClipGuide:
    """Build the CLIP models of a run: tiny random ones in the smoke profile, pretrained ones otherwise."""
    if config.profile == "smoke":
        models = [tiny_clip(seed=i).to(device) for i, _ in enumerate(config.clip_models)]
        return ClipGuide(models, weights=config.clip_model_weights, names=[f"tiny{i}" for i in range(len(models))])
    # fp16 CLIP weights on CUDA (with amp) save about 0.9 GiB of a 1024 px step (bench/train_memory.py).
    half = config.amp and torch.device(device).type == "cuda"
    return load_guide(dict(zip(config.clip_models, config.clip_model_weights)), device=device, half=half)


def load_source(profile: str, device):
    """Load the source generator: the tiny stand-in in the smoke profile, FFHQ 1024 in the full profile."""
    device = resolve_device(device)  # an unusable device fails here, before a download
    if profile == "smoke":
        return smoke_generator().to(device)
    return load_generator(fetch("ffhq"), device=device)


@torch.no_grad()
def compute_direction(G_source, guide: ClipGuide, config: AdaptConfig):
    """Return (direction, target embedding), one unit vector [D] per CLIP model.

    Text-guided: from the source prompt to the target prompt. Image-guided: from the mean embedding of
    generated source images to the mean embedding of the reference images.
    """
    if not config.target_images:
        return (
            text_direction(guide, config.source_text, config.target_text),
            embed_text(guide, config.target_text),
        )
    device = next(G_source.parameters()).device
    z = z_from_seeds(range(1000, 1016), G_source.z_dim).to(device)
    source_images = G_source(z, None, truncation_psi=config.truncation_psi)
    return image_direction(guide, config.target_images, source_images), embed_images(guide, config.target_images)


def adapt(
    config: AdaptConfig, out_dir, resume: bool = False, G_source=None, guide=None, device=None, overwrite=False
) -> dict:
    """Train one domain; returns a summary with the output paths and the CLIP-score metric.

    G_source and guide default to the profile's models; pass them to reuse loaded models across domains.
    resume and overwrite: see Trainer.setup.
    """
    out_dir = Path(out_dir)
    device = torch.device(device or ("cuda" if config.profile == "full" else "cpu"))
    G_source = G_source if G_source is not None else load_source(config.profile, device)
    guide = guide if guide is not None else build_guide(config, device)
    direction, target_embedding = compute_direction(G_source, guide, config)

    trainer = Trainer(G_source, guide, direction, target_embedding, config, out_dir)
    trainer.setup(resume=resume, overwrite=overwrite)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started

    metadata = dict(
        domain=config.domain,
        source_text=config.source_text,
        target_text=config.target_text,
        target_images=[str(path) for path in config.target_images],
        layers=trainer.layers,
        steps=trainer.step,
        seed=config.seed,
        source_weights_sha256=trainer.source_sha256,
        code_version=code_version(),
    )
    model_path = save_generator(trainer.G_train, out_dir / f"{config.domain}.pt", metadata=metadata)
    summary = dict(
        model=str(model_path),
        metadata=metadata,
        config=config.to_dict(),
        enabled_parameters=len(trainer.enabled),
        clip_score=trainer.clip_scores(),
        train_seconds=round(seconds, 2),
        final_losses={key: value for key, value in (trainer.history[-1] if trainer.history else {}).items()},
    )
    atomic_write_text(out_dir / f"{config.domain}_run.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _parse_list(text):
    return [item for item in text.replace(",", " ").split() if item] if text is not None else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils.adapt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=PROFILES, default="auto", help="full: FFHQ 1024 and CLIP ViT-B/32 + "
                        "B/16 on a CUDA GPU; smoke: tiny random models on the CPU; auto: full if CUDA is present")
    parser.add_argument("--domain", default="anime", help="a domain of the config file (anime, sketch, watercolor)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/<profile>/adapt/<domain>)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_FILE, help="domains and defaults (JSON)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt if present")
    parser.add_argument("--overwrite", action="store_true", help="start over in an --out folder that contains an "
                        "earlier run, deleting its checkpoint, log and samples")
    parser.add_argument("--source-text", help="prompt describing the source images (default: 'photo')")
    parser.add_argument("--target-text", help="prompt describing the target domain, e.g. 'anime painting'")
    parser.add_argument("--target-images", help="comma-separated reference image files; makes the run image-guided")
    parser.add_argument("--layers", help="comma-separated trainable layers, e.g. b64,b128,b256 (see utils.freeze)")
    parser.add_argument("--adaptive-k", type=int, help="choose this many ws entries' layers adaptively (0: off)")
    parser.add_argument("--iterations", type=int, help="training steps (default 300)")
    parser.add_argument("--batch", type=int, help="latents per step (default 2)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default 0.002)")
    parser.add_argument("--seed", type=int, help="seed of the training latents (default 0)")
    parser.add_argument("--global-weight", type=float, help="weight of the global CLIP loss (default 0)")
    parser.add_argument("--angle-weight", type=float, help="weight of the angle-consistency loss (default 0)")
    parser.add_argument("--sample-every", type=int, help="steps between sample grids and loss plots")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false",
                        default=None, help="store the synthesis activations instead of recomputing them in "
                        "backward: faster, but about 1.5 GiB more memory at 1024 px")
    parser.add_argument("--no-amp", dest="amp", action="store_false", default=None,
                        help="disable mixed precision for CLIP on CUDA")
    return parser


def config_from_args(args) -> AdaptConfig:
    target_images = _parse_list(args.target_images)
    if args.target_images is not None and not target_images:
        raise ValueError(f"--target-images {args.target_images!r} names no file; give comma-separated image paths")
    overrides = dict(
        source_text=args.source_text,
        target_text=args.target_text,
        target_images=target_images,
        layers=_parse_list(args.layers),
        adaptive_k=args.adaptive_k,
        iterations=args.iterations,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        global_weight=args.global_weight,
        angle_weight=args.angle_weight,
        sample_every=args.sample_every,
        checkpoint_every=args.checkpoint_every,
        gradient_checkpointing=args.gradient_checkpointing,
        amp=args.amp,
    )
    return load_config(args.domain, resolve_profile(args.profile), overrides, path=args.config)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    if config.profile == "full" and not torch.cuda.is_available():
        parser.error("--profile full needs a CUDA GPU and none is available here; use --profile smoke (tiny "
                     "random models on the CPU)")
    out_dir = args.out or REPO_ROOT / "runs" / config.profile / "adapt" / config.domain
    if out_dir.exists() and not out_dir.is_dir():
        parser.error(f"--out {out_dir} is a file; give a folder (it is created if missing)")
    try:
        summary = adapt(config, out_dir, resume=args.resume, overwrite=args.overwrite)
    except (CheckpointError, WeightsError, TrainingError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; continue with the same command plus --resume (out: {out_dir})", file=sys.stderr)
        return 130
    score = summary["clip_score"]
    target = f"the {len(config.target_images)} reference images" if config.target_images else repr(config.target_text)
    print(f"wrote {summary['model']}")
    print(f"CLIP similarity to {target}: source {score['source']:.4f}, adapted {score['adapted']:.4f}, "
          f"gain {score['gain']:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
