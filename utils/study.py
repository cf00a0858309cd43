"""The layer-importance study: which synthesis layers carry style?

For each domain and each layer group (every resolution block, plus the mapping network and the ToRGB
layers as controls) a copy of the source generator is adapted with only that group trainable, for the
same short budget. Each run is measured by its CLIP gain towards the target text, how much structure and
identity survive (LPIPS and face identity between source and adapted images of the same z), and the
diversity of the adapted images. The adaptive layer selection of StyleGAN-NADA is run several times per
domain as well, and how often it picks each block is recorded next to the measured importance.
"""

import csv
import dataclasses
import io
import json
import logging
import math
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from stylegan2.fileio import atomic_write_text

from .freeze import choose_layers_adaptively
from .plots import plt, save_figure
from .trainer import Trainer

log = logging.getLogger(__name__)

# The hypothesis this study tests: the middle blocks (64 to 256 px) carry style best.
HYPOTHESIS_BLOCKS = ("b64", "b128", "b256")


def study_groups(G) -> list:
    """List (group name, layer spec) for the study: mapping, each block's convolutions, all ToRGB layers."""
    groups = [("mapping", ["mapping"])]
    groups += [(f"b{res}", [f"b{res}"]) for res in G.synthesis.block_resolutions]
    groups.append(("torgb", ["torgb"]))
    return groups


def adaptive_pick_rates(trainer: Trainer, repeats: int, k: int, batch: int, seed: int) -> dict:
    """Count how often the adaptive selection picks each block over `repeats` independent latent batches.

    Returns {block name: fraction of repeats in which at least one of its convolutions was picked}.
    """
    G = trainer.G_source
    sampler = torch.Generator().manual_seed(seed)
    counts = Counter()
    for _ in range(repeats):
        z = torch.randn([batch, G.z_dim], generator=sampler).to(trainer.device)
        with torch.no_grad():
            ws = G.mapping(z, None, truncation_psi=trainer.config.truncation_psi)
        layers, _ = choose_layers_adaptively(trainer.G_train, ws, trainer.global_loss, k=k)
        counts.update({name.split(".")[0] for name in layers})
    return {block: counts[block] / repeats for block in (f"b{r}" for r in G.synthesis.block_resolutions)}


def run_layer_study(
    G_source,
    guide,
    configs: dict,  # {domain: AdaptConfig}; each run takes its prompts, lr, batch and seed from here
    direction_for,  # domain -> (direction, target_embedding), as utils.adapt.compute_direction returns
    evaluate,  # (G_source, G_adapted, config) -> dict of metrics (utils.metrics.evaluate_generators)
    steps: int,  # training steps per run, the same for every group
    adaptive_repeats: int = 5,
    adaptive_k: int = 3,
) -> list:
    """Adapt one group at a time for every domain; returns one row (a dict of plain numbers) per run."""
    rows = []
    groups = study_groups(G_source)
    bar = tqdm(total=len(configs) * len(groups), desc="layer study", unit="run", dynamic_ncols=True)
    for domain, base_config in configs.items():
        direction, target_embedding = direction_for(domain)
        picks = None
        for group, spec in groups:
            config = dataclasses.replace(
                base_config, layers=spec, adaptive_k=0, iterations=steps, lr=_group_lr(G_source, group, base_config.lr)
            )
            trainer = Trainer(G_source, guide, direction, target_embedding, config)
            trainer.setup()
            if picks is None:
                picks = adaptive_pick_rates(trainer, adaptive_repeats, adaptive_k, config.adaptive_batch, config.seed)

            started = time.perf_counter()
            trainer.G_train.synthesis.train()
            for _ in range(steps):
                terms = trainer.train_step()
                trainer.step += 1
            trainer.G_train.eval()
            seconds = time.perf_counter() - started

            metrics = evaluate(G_source, trainer.G_train, config)
            rows.append(
                dict(
                    domain=domain,
                    group=group,
                    trainable_values=sum(p.numel() for p in trainer.G_train.parameters() if p.requires_grad),
                    lr=config.lr,
                    final_loss=terms["loss"],
                    adaptive_pick_rate=picks.get(group, 0.0),
                    train_seconds=round(seconds, 3),
                    **metrics,
                )
            )
            bar.set_postfix(domain=domain, group=group)
            bar.update(1)
            del trainer
    bar.close()
    return rows


def _group_lr(G, group: str, lr: float) -> float:
    """The learning rate of a study run: `lr`, divided by the mapping network's lr multiplier for "mapping".

    StyleGAN2's mapping layers scale their updates by lr_multiplier (0.01), so at the synthesis layers'
    lr the mapping control would barely move in a short run and show nothing about its importance.
    """
    if group != "mapping":
        return lr
    return lr / G.mapping.fc0.bias_gain


def write_study(rows: list, out_dir) -> tuple:
    """Write the rows as study.csv and study.json (atomically); returns both paths."""
    out_dir = Path(out_dir)
    columns = list(rows[0])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    csv_path = out_dir / "study.csv"
    json_path = out_dir / "study.json"
    atomic_write_text(csv_path, buffer.getvalue())
    atomic_write_text(json_path, json.dumps(rows, indent=2) + "\n")
    return csv_path, json_path


def mean_by_group(rows: list, metric: str) -> dict:
    """Average `metric` over the domains per group; returns {group: mean} in the study's group order."""
    groups = list(dict.fromkeys(row["group"] for row in rows))
    return {group: _mean([row[metric] for row in rows if row["group"] == group]) for group in groups}


def _mean(values):
    values = [value for value in values if value is not None and math.isfinite(value)]
    return sum(values) / len(values) if values else float("nan")


def plot_study(rows: list, metrics: list, out_path) -> Path:
    """Bar charts, one panel per metric: groups on the x axis, one bar per domain."""
    domains = list(dict.fromkeys(row["domain"] for row in rows))
    groups = list(dict.fromkeys(row["group"] for row in rows))
    figure, axes = plt.subplots(len(metrics), 1, figsize=(max(6, 0.8 * len(groups)), 2.6 * len(metrics)), squeeze=False)
    width = 0.8 / len(domains)
    for axis, metric in zip(axes[:, 0], metrics):
        for d, domain in enumerate(domains):
            values = [next(row[metric] for row in rows if row["domain"] == domain and row["group"] == g) for g in groups]
            axis.bar([i + d * width for i in range(len(groups))], values, width=width, label=domain)
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups)
        axis.set_ylabel(metric)
        axis.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(ncol=len(domains), fontsize="small")
    figure.tight_layout()
    return save_figure(figure, out_path)


def conclude(rows: list, gain_metric: str = "clip_score/gain", preservation_metric: str = "lpips/source_vs_adapted") -> dict:
    """Rank the groups and state whether the data support the middle-block hypothesis.

    Each group's score is its mean CLIP gain divided by (1 + its mean LPIPS change), so a group that
    reaches the target while keeping the structure ranks high. The hypothesis holds when the best-ranked
    synthesis block is one of HYPOTHESIS_BLOCKS.
    """
    gains = mean_by_group(rows, gain_metric)
    changes = mean_by_group(rows, preservation_metric) if preservation_metric in rows[0] else {}
    scores = {group: gains[group] / (1 + max(changes.get(group, 0.0), 0.0)) for group in gains}
    ranking = sorted(scores, key=lambda group: scores[group], reverse=True)
    blocks = [group for group in ranking if group.startswith("b")]
    present = [block for block in HYPOTHESIS_BLOCKS if block in scores]
    best_block = blocks[0] if blocks else None
    if not present:
        verdict = f"not testable: the generator has none of the blocks {', '.join(HYPOTHESIS_BLOCKS)}"
    elif best_block in HYPOTHESIS_BLOCKS:
        verdict = f"supported: the best block is {best_block}"
    else:
        verdict = f"not supported: the best block is {best_block}, outside {', '.join(HYPOTHESIS_BLOCKS)}"
    return dict(ranking=ranking, scores=scores, best_block=best_block, verdict=verdict)
