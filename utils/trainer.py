"""The domain-adaptation trainer: a frozen source generator, a trainable copy, and CLIP losses between them.

Each step samples latents, maps them with the frozen mapping network and renders them with both
generators. The trainable copy then moves so that the CLIP-space change from source to adapted image
points along the text (or image) direction (StyleGAN-NADA, Gal et al. 2021). The run writes a `.jsonl` log, loss plots,
sample grids and atomic checkpoints to its output folder, and resumes exactly from the last checkpoint.
"""

import copy
import json
import logging
import time
from pathlib import Path

import torch
from tqdm import tqdm

from stylegan2.fileio import atomic_path, atomic_write_text

from . import losses
from .freeze import choose_layers_adaptively, freeze_except
from .images import image_grid, save_image
from .plots import plot_losses
from .provenance import state_dict_sha256
from .sampling import z_from_seeds
from .train_config import AdaptConfig

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "stylegan2-adapt-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.jsonl"


class TrainingError(RuntimeError):
    """Training stopped: a non-finite loss or gradient, or a checkpoint that does not fit this run."""


class Trainer:
    """Adapts a copy of `G_source` towards the target of `direction` under `config`."""

    def __init__(self, G_source, guide, direction, target_embedding, config: AdaptConfig, out_dir=None):
        """
        G_source: the frozen source generator (left unchanged).
        guide: the CLIP models (utils.clip_model.ClipGuide) that embed images.
        direction: per CLIP model, the unit direction [D] from source to target in CLIP space.
        target_embedding: per CLIP model, the target embedding [D] of the global loss and the metric.
        out_dir: folder of logs, samples and checkpoints; None for a trainer that only runs train_step().
        """
        self.config = config.validate()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.device = next(G_source.parameters()).device
        self.guide = guide
        self.direction = direction
        self.target_embedding = target_embedding

        self.G_source = G_source.eval().requires_grad_(False)
        self.G_train = copy.deepcopy(G_source)
        self.G_train.synthesis.gradient_checkpointing = config.gradient_checkpointing
        self.source_sha256 = state_dict_sha256(G_source)
        # Mixed precision covers CLIP only (the guide's autocast); the loss scaler keeps its fp16 gradients.
        self.use_amp = config.amp and self.device.type == "cuda"
        guide.autocast = self.use_amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

        self.step = 0
        self.sampler = torch.Generator().manual_seed(config.seed)
        self.enabled = None
        self.optimizer = None
        self.history = []

    # ------------------------------------------------------------------ set-up

    def setup(self, resume: bool = False, overwrite: bool = False) -> None:
        """Choose the trainable layers and build the optimizer, or restore both from the checkpoint.

        resume: continue from out_dir/checkpoint.pt when it exists.
        overwrite: without resume, delete an earlier run's checkpoint, log and samples in out_dir first.
            Without it, a folder that contains a run raises TrainingError, so nothing is lost by accident.
        """
        if self.out_dir is None:
            self._build_optimizer(self._choose_layers())
            return
        checkpoint_path = self.out_dir / CHECKPOINT_NAME
        if resume and checkpoint_path.exists():
            _remove_stale_temporaries(self.out_dir)
            self._load_checkpoint(checkpoint_path)
            return
        if resume:
            log.warning("no checkpoint in %s; starting from step 0", self.out_dir)
        elif checkpoint_path.exists() and not overwrite:
            raise TrainingError(
                f"{self.out_dir} contains an earlier run ({checkpoint_path.name}); continue it with --resume, start "
                f"over with --overwrite (deletes its checkpoint, log and samples), or use another output folder"
            )

        self._build_optimizer(self._choose_layers())  # checks the layer names before anything is written
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(self.out_dir)
        _remove_run_outputs(self.out_dir)

    def _choose_layers(self) -> list:
        if not self.config.adaptive_k:
            return list(self.config.layers)
        selectable = self.G_source.num_ws - 1  # the last entry feeds only the last ToRGB
        if self.config.adaptive_k > selectable:
            raise ValueError(
                f"adaptive_k={self.config.adaptive_k} exceeds the {selectable} ws entries this generator's "
                f"convolutions read; use adaptive_k <= {selectable}"
            )
        z = torch.randn([self.config.adaptive_batch, self.G_source.z_dim], generator=self.sampler).to(self.device)
        with torch.no_grad():
            ws = self.G_source.mapping(z, None, truncation_psi=self.config.truncation_psi)

        layers, change = choose_layers_adaptively(
            self.G_train, ws, self.global_loss, k=self.config.adaptive_k, steps=self.config.adaptive_steps
        )
        log.info("adaptive selection chose %s (ws change per entry %s)", layers, [round(c, 5) for c in change.tolist()])
        self.adaptive_change = change.tolist()
        return layers

    def global_loss(self, img):
        """Compute the global CLIP loss of images [N, C, H, W] to the target, summed over the CLIP models."""
        return self._weighted(losses.global_loss, self.guide.encode_images(img), self.target_embedding)

    def _build_optimizer(self, layers) -> None:
        self.layers = list(layers)
        self.enabled = freeze_except(self.G_train, self.layers)
        # Only when the mapping network itself trains does the adapted image come from its own mapping.
        self.train_mapping = any(name.startswith("mapping.") for name in self.enabled)
        parameters = dict(self.G_train.named_parameters())
        self.optimizer = torch.optim.Adam(
            [parameters[name] for name in self.enabled], lr=self.config.lr, betas=tuple(self.config.betas)
        )

    # ------------------------------------------------------------------ training

    def train(self) -> None:
        """Run the remaining steps up to config.iterations, writing logs, samples and checkpoints."""
        if self.out_dir is None:
            raise ValueError("train() writes logs and checkpoints: build the Trainer with an out_dir")
        config = self.config
        self.G_train.synthesis.train()  # the unfused modulated convolution, as StyleGAN2 trains
        bar = tqdm(total=config.iterations, initial=self.step, desc=config.domain, unit="step", dynamic_ncols=True)
        try:
            while self.step < config.iterations:
                self._train_and_record(bar)
        except KeyboardInterrupt:
            bar.close()
            log.warning("interrupted at step %d. %s", self.step, self._last_checkpoint_note())
            raise
        bar.close()
        self.G_train.eval()

    def _train_and_record(self, bar) -> None:
        """Run one step, log it, and write the samples, plot and checkpoint that fall due."""
        config = self.config
        started = time.perf_counter()
        terms = self.train_step()
        self.step += 1
        record = dict(step=self.step, **terms, seconds=round(time.perf_counter() - started, 4))
        self._append_log(record)
        bar.set_postfix({name: f"{value:.4f}" for name, value in terms.items()})
        bar.update(1)

        last = self.step == config.iterations
        if self.step % config.sample_every == 0 or last:
            self.write_samples()
            plot_losses(self.out_dir / LOG_NAME, self.out_dir / "loss.png")
        if self.step % config.checkpoint_every == 0 or last:
            self.save_checkpoint()

    def train_step(self) -> dict:
        """One optimisation step; returns the named loss values."""
        config = self.config
        z = torch.randn([config.batch, self.G_source.z_dim], generator=self.sampler).to(self.device)
        with torch.no_grad():
            ws = self.G_source.mapping(z, None, truncation_psi=config.truncation_psi)
            source_embedding = self.guide.encode_images(self.G_source.synthesis(ws, noise_mode="const"))

        # The generator runs its own fp16 blocks on CUDA; autocast would also put its fp32 blocks in fp16.
        adapted = self.G_train.synthesis(self._adapted_ws(z, ws), noise_mode="const")
        adapted_embedding = self.guide.encode_images(adapted)
        terms = self.loss_terms(source_embedding, adapted_embedding)
        total = sum(weight * terms[name] for name, weight in self._loss_weights().items())

        self._check_finite(total, "loss", terms)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if not self.use_amp:
            self._check_finite_gradients()  # with AMP the scaler skips steps with inf gradients itself
        self.scaler.step(self.optimizer)
        self.scaler.update()
        values = {name: float(value.detach()) for name, value in terms.items()}
        values["loss"] = float(total.detach())
        return values

    def _adapted_ws(self, z, ws):
        """Return the adapted generator's ws: the source's, unless the mapping network is being trained."""
        if not self.train_mapping:
            return ws
        return self.G_train.mapping(z, None, truncation_psi=self.config.truncation_psi, skip_w_avg_update=True)

    def loss_terms(self, source_embedding, adapted_embedding) -> dict:
        """Compute the named loss terms with a non-zero weight, each summed over the weighted CLIP models."""
        terms = {}
        if self.config.direction_weight:
            terms["directional"] = self._weighted(
                losses.directional_loss, adapted_embedding, source_embedding, self.direction
            )
        if self.config.global_weight:
            terms["global"] = self._weighted(losses.global_loss, adapted_embedding, self.target_embedding)
        if self.config.angle_weight:
            terms["angle"] = self._weighted(losses.angle_consistency_loss, source_embedding, adapted_embedding)
        return terms

    def _loss_weights(self) -> dict:
        config = self.config
        weights = {"directional": config.direction_weight, "global": config.global_weight, "angle": config.angle_weight}
        return {name: weight for name, weight in weights.items() if weight}

    def _weighted(self, loss_fn, *per_model_arguments):
        """Sum loss_fn over the CLIP models, each term times that model's weight."""
        total = 0.0
        for weight, arguments in zip(self.guide.weights, zip(*per_model_arguments)):
            if weight:
                total = total + weight * loss_fn(*arguments)
        return total

    def _check_finite(self, total, what, terms) -> None:
        if torch.isfinite(total).all():
            return
        values = {name: float(value.detach()) for name, value in terms.items()}
        raise TrainingError(
            f"the {what} is not finite at step {self.step + 1} ({values}); training stopped. "
            f"{self._last_checkpoint_note()}"
        )

    def _check_finite_gradients(self) -> None:
        for name, parameter in self.G_train.named_parameters():
            if parameter.grad is not None and not torch.isfinite(parameter.grad).all():
                raise TrainingError(
                    f"the gradient of {name} is not finite at step {self.step + 1}; training stopped. "
                    f"{self._last_checkpoint_note()}"
                )

    def _last_checkpoint_note(self) -> str:
        path = self.out_dir / CHECKPOINT_NAME
        if not path.exists():
            return "No checkpoint was written yet; start again (with a lower lr if the loss diverged)"
        step = torch.load(path, map_location="cpu", weights_only=True)["step"]
        return f"The last good checkpoint, {path} (step {step}), is kept; continue from it with --resume"

    # ------------------------------------------------------------------ outputs

    def _append_log(self, record: dict) -> None:
        self.history.append(record)
        with open(self.out_dir / LOG_NAME, "a") as file:
            file.write(json.dumps(record) + "\n")

    @torch.no_grad()
    def render_pairs(self, seeds):
        """Render source and adapted images [2 * len(seeds), C, H, W] for fixed seeds, source first."""
        z = z_from_seeds(seeds, self.G_source.z_dim).to(self.device)
        ws = self.G_source.mapping(z, None, truncation_psi=self.config.truncation_psi)
        was_training = self.G_train.synthesis.training
        self.G_train.synthesis.eval()
        source = self.G_source.synthesis(ws, noise_mode="const").float().cpu()
        adapted = self.G_train.synthesis(self._adapted_ws(z, ws), noise_mode="const").float().cpu()
        self.G_train.synthesis.train(was_training)
        return torch.cat([source, adapted])

    def write_samples(self) -> Path:
        """Save a grid with the source images in the top row and the adapted ones below."""
        seeds = self.config.sample_seeds
        grid = image_grid(self.render_pairs(seeds), columns=len(seeds))
        return save_image(grid, self.out_dir / "samples" / f"step_{self.step:05d}.png")

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Write the trainable state, optimizer, step, RNG states and config, atomically."""
        parameters = dict(self.G_train.named_parameters())
        payload = dict(
            format=CHECKPOINT_FORMAT,
            format_version=CHECKPOINT_VERSION,
            step=self.step,
            layers=self.layers,
            enabled=self.enabled,
            trainable={name: parameters[name].detach().cpu().clone() for name in self.enabled},
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=dict(
                sampler=self.sampler.get_state(),
                torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            ),
            config=self.config.to_dict(),
            source_sha256=self.source_sha256,
        )
        path = self.out_dir / CHECKPOINT_NAME
        with atomic_path(path) as temporary:
            torch.save(payload, temporary)
        return path

    def _load_checkpoint(self, path: Path) -> None:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any failure means the file cannot be used
            raise TrainingError(f"cannot read the checkpoint {path} ({type(error).__name__}: {error})") from None
        if payload.get("format") != CHECKPOINT_FORMAT or payload.get("format_version") != CHECKPOINT_VERSION:
            raise TrainingError(f"{path} is not a version-{CHECKPOINT_VERSION} training checkpoint of this project")
        if payload["source_sha256"] != self.source_sha256:
            raise TrainingError(
                f"{path} was trained from another source generator (weights sha256 {payload['source_sha256'][:12]}, "
                f"this run's is {self.source_sha256[:12]}); use a new --out folder or the same source weights"
            )
        _check_same_config(payload["config"], self.config, path)

        self._build_optimizer(payload["layers"])
        if payload["enabled"] != self.enabled:
            raise TrainingError(f"{path} trained other parameters than its layers select now; use a new --out folder")
        parameters = dict(self.G_train.named_parameters())
        with torch.no_grad():
            for name, tensor in payload["trainable"].items():
                parameters[name].copy_(tensor)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scaler.load_state_dict(payload["scaler"])
        self.sampler.set_state(payload["rng"]["sampler"])
        torch.set_rng_state(payload["rng"]["torch"])
        if payload["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
        self.step = payload["step"]
        if self.step > self.config.iterations:
            raise TrainingError(
                f"{path} is at step {self.step}, past iterations={self.config.iterations}; to continue it, "
                f"give more iterations than {self.step}"
            )
        self.history = _truncate_log(self.out_dir / LOG_NAME, self.step)
        log.info("resumed %s at step %d", path, self.step)

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def clip_scores(self) -> dict:
        """CLIP similarity of source and adapted images to the target, on the metric seeds."""
        images = self.render_pairs(self.config.metric_seeds).to(self.device)
        count = len(self.config.metric_seeds)
        source = self.guide.encode_images(images[:count])
        adapted = self.guide.encode_images(images[count:])
        source_score = float(self._weighted(losses.clip_score, source, self.target_embedding))
        adapted_score = float(self._weighted(losses.clip_score, adapted, self.target_embedding))
        total_weight = sum(self.guide.weights)
        return dict(
            source=source_score / total_weight,
            adapted=adapted_score / total_weight,
            gain=(adapted_score - source_score) / total_weight,
        )


def _check_same_config(saved: dict, config: AdaptConfig, path) -> None:
    # Settings that may change on resume: how long to train and how often to write outputs.
    changeable = {"iterations", "sample_every", "checkpoint_every", "sample_seeds", "metric_seeds"}
    current = config.to_dict()
    differing = sorted(key for key in current if key not in changeable and saved.get(key) != current[key])
    if differing:
        details = ", ".join(f"{key}: {saved.get(key)!r} -> {current[key]!r}" for key in differing)
        raise TrainingError(
            f"{path} was written with other settings ({details}); resume with the same settings, or start over "
            f"with --overwrite (notebooks: fresh_training=True), or use another output folder"
        )


def _truncate_log(path: Path, step: int) -> list:
    """Drop log lines written after `step` (an interrupted run may have logged past its last checkpoint)."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            # A process killed while appending leaves a partial line; the checkpoint is what resume relies on.
            log.warning("%s: dropping unreadable line %d", path, number)
    kept = [record for record in records if isinstance(record, dict) and record.get("step", step + 1) <= step]
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in kept))
    return kept


def _remove_run_outputs(folder: Path) -> None:
    """Delete an earlier run's checkpoint, log, loss plot and sample grids, so they cannot mix with a new run."""
    for name in (CHECKPOINT_NAME, LOG_NAME, "loss.png"):
        (folder / name).unlink(missing_ok=True)
    for grid in (folder / "samples").glob("step_*.png"):
        grid.unlink()


def _remove_stale_temporaries(folder: Path) -> None:
    # A process killed while writing leaves its temporary file behind; the real files are intact.
    for temporary in folder.glob(".*.tmp"):
        temporary.unlink(missing_ok=True)

