"""Evaluate a domain-adapted generator against its source generator and write the results as one JSON file.

The metrics and their sources:

- CLIP score: mean cosine similarity of image embeddings to the target prompt, averaged over prompt
  templates as in the CLIP paper (Radford et al. 2021), per CLIP model and as the guide-weighted mean.
- CLIP quality and diversity of HyperDomainNet (Alanov et al. 2022, "HyperDomainNet: Universal Domain
  Adaptation for Generative Adversarial Networks"): quality is the mean image-text cosine similarity and
  diversity the mean of 1 - cos over pairs of image embeddings.
- Intra-cluster LPIPS diversity (Ojha et al. 2021, "Few-shot Image Generation via Cross-domain
  Correspondence"): the mean LPIPS distance between members of one cluster, averaged over clusters.
- Structure and identity preservation: mean LPIPS distance and mean face-identity similarity between the
  source and the adapted image rendered from the same latent z.

LPIPS and identity models are passed in as functions, so every metric here runs on hand-made inputs.
"""

import json
import math
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from stylegan2.fileio import atomic_write_text

from .clip_model import ClipGuide
from .directions import IMAGENET_TEMPLATES, embed_text
from .losses import clip_score
from .sampling import generate

# Ojha et al. 2021 group their samples into 10 clusters, one per few-shot training image.
LPIPS_CLUSTERS = 10

# HyperDomainNet's published evaluation code (core/evaluation.py in MACderRu/HyperDomainNet) embeds the
# target text with this single template, so its quality differs from the template-averaged CLIP score.
HYPERDOMAINNET_TEMPLATES = ("A {}",)

# Tolerances for a precomputed distance matrix, because a float32 distance of (a, b) and of (b, a) may
# differ in the last bits.
SYMMETRY_TOLERANCE = 1e-5
DIAGONAL_TOLERANCE = 1e-6

# Function types. Images are float tensors [B, C, H, W] in [-1, 1] on the CPU.
PairFunction = Callable[[torch.Tensor, torch.Tensor], object]  # returns B values (tensor, array or list)


# ---------------------------------------------------------------------------------------------------------
# CLIP metrics on embeddings.


def clip_text_score(
    image_embeddings: Sequence[torch.Tensor],
    text_embedding: Sequence[torch.Tensor],
    weights: Optional[Sequence[float]] = None,
) -> tuple:
    """Compute the CLIP score of images to a text: mean cosine per model, and the weighted mean over models.

    image_embeddings: one [N, D] tensor per model, as ClipGuide.encode_images returns.
    text_embedding: one [D] tensor per model, as utils.directions.embed_text returns.
    weights: one weight >= 0 per model, e.g. guide.weights; None weighs every model 1.

    Returns (per_model, weighted_mean): a list of floats and a float, each in [-1, 1].
    """
    weights = _check_per_model(image_embeddings, text_embedding, weights)
    per_model = [clip_score(images, text).item() for images, text in zip(image_embeddings, text_embedding)]
    return per_model, weighted_mean(per_model, weights)


def hyperdomainnet_quality(image_embedding: torch.Tensor, text_embedding: torch.Tensor) -> float:
    """Compute HyperDomainNet's CLIP quality: the mean cosine similarity of images [N, D] to a text [D].

    Alanov et al. 2022 embed the text with the single template "A {}" (HYPERDOMAINNET_TEMPLATES).
    """
    return clip_score(image_embedding, text_embedding).item()


def hyperdomainnet_diversity(image_embedding: torch.Tensor) -> float:
    """Compute HyperDomainNet's CLIP diversity: the mean of 1 - cos(e_i, e_j) over pairs i != j of [N, D].

    Alanov et al. 2022 average over the pairs below the diagonal, which gives the same mean because the
    cosine is symmetric. The result is in [0, 2]. Needs N >= 2.
    """
    if not isinstance(image_embedding, torch.Tensor) or image_embedding.ndim != 2:
        raise ValueError(f"image_embedding must be a tensor [N, D], got {_describe(image_embedding)}")
    count = image_embedding.shape[0]
    if count < 2:
        raise ValueError(f"diversity compares pairs of images and needs N >= 2 embeddings, got {count}")

    unit = F.normalize(image_embedding.double(), dim=-1)  # [N, D]
    cosine = unit @ unit.T  # [N, N]

    below_diagonal = torch.tril_indices(count, count, offset=-1)  # [2, N(N-1)/2]
    pair_cosine = cosine[below_diagonal[0], below_diagonal[1]]
    return (1 - pair_cosine).mean().item()


def mean_paired_cosine(embedding_a: torch.Tensor, embedding_b: torch.Tensor) -> float:
    """Return the mean over i of cos(embedding_a[i], embedding_b[i]) for two [N, D] embeddings."""
    valid = isinstance(embedding_a, torch.Tensor) and isinstance(embedding_b, torch.Tensor)
    valid = valid and embedding_a.ndim == 2 and embedding_a.shape == embedding_b.shape
    if not valid or embedding_a.shape[0] == 0:
        raise ValueError(
            f"expected two tensors [N, D] of one shape with N >= 1, got {_describe(embedding_a)} "
            f"and {_describe(embedding_b)}"
        )
    cosine = F.cosine_similarity(embedding_a.double(), embedding_b.double(), dim=-1)  # [N]
    return cosine.mean().item()


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    """Return sum_k weights[k] * values[k] / sum_k weights[k]. The weights must have a positive sum."""
    total = sum(weights)
    if len(values) != len(weights) or not total > 0:
        raise ValueError(f"expected one weight per value with a positive sum, got {values} and {weights}")
    return sum(weight * value for weight, value in zip(weights, values)) / total


def _check_per_model(image_embeddings, text_embedding, weights) -> list:
    """Check that there is one entry per model and that the weights are valid, and return them as floats."""
    count = len(image_embeddings)
    if count == 0:
        raise ValueError("got no image embeddings. Pass one [N, D] tensor per CLIP model")
    weights = [1.0] * count if weights is None else [float(weight) for weight in weights]
    if len(text_embedding) != count or len(weights) != count:
        raise ValueError(
            f"got {count} image embeddings, {len(text_embedding)} text embeddings and {len(weights)} "
            f"weights. Pass one of each per CLIP model"
        )
    if any(not math.isfinite(w) or w < 0 for w in weights) or not any(weights):
        raise ValueError(f"weights must be finite and >= 0 with at least one > 0, got {weights}")
    return weights


# ---------------------------------------------------------------------------------------------------------
# Distances between images.


def pairwise_distance_matrix(
    images: torch.Tensor, distance: PairFunction, batch_size: int = 16
) -> np.ndarray:
    """Compute the symmetric matrix [N, N] of distance(images[i], images[j]) with a zero diagonal.

    images: [N, C, H, W]. distance: a batched function of two [B, C, H, W] tensors that returns B values,
    such as LPIPS (which returns [B, 1, 1, 1]). It is called once per batch of up to batch_size pairs
    i < j, so N = 100 images take 4950 pairs. The pair (j, i) is not computed but copied, which assumes
    that the distance is symmetric, as LPIPS is.
    """
    _check_images("images", images)
    count = images.shape[0]
    matrix = np.zeros((count, count), dtype=np.float64)

    rows, columns = torch.triu_indices(count, count, offset=1)  # [N(N-1)/2] each, pairs i < j
    for start in range(0, len(rows), batch_size):
        row, column = rows[start : start + batch_size], columns[start : start + batch_size]
        values = _call_pair_function(distance, images[row], images[column], "distance")
        if (values < 0).any():
            raise ValueError(
                f"the distance function returned negative values {values[values < 0].tolist()}. "
                f"Pass a distance, which is >= 0"
            )
        matrix[row.numpy(), column.numpy()] = values
        matrix[column.numpy(), row.numpy()] = values
    return matrix


def paired_mean(
    function: PairFunction, images_a: torch.Tensor, images_b: torch.Tensor, batch_size: int = 16
) -> float:
    """Return the mean of function(images_a[i], images_b[i]) over i, calling it on batches of pairs.

    images_a, images_b: [N, C, H, W], e.g. source and adapted images rendered from the same z.
    function: a batched function of two [B, C, H, W] tensors that returns B finite values, such as an
    LPIPS distance or a face-identity similarity.
    """
    _check_images("images_a", images_a)
    if not isinstance(images_b, torch.Tensor) or images_b.shape != images_a.shape:
        raise ValueError(
            f"images_a and images_b must have one shape, got {_describe(images_a)} and {_describe(images_b)}"
        )

    values = []
    for start in range(0, images_a.shape[0], batch_size):
        batch = slice(start, start + batch_size)
        values.append(_call_pair_function(function, images_a[batch], images_b[batch], "function"))
    return float(np.concatenate(values).mean())


def _call_pair_function(function: PairFunction, images_a, images_b, label: str) -> np.ndarray:
    """Call function on two [B, C, H, W] batches and return its B values as a float64 array [B]."""
    result = function(images_a, images_b)
    if isinstance(result, torch.Tensor):
        result = result.detach().cpu().double().numpy()
    values = np.asarray(result, dtype=np.float64).reshape(-1)  # [B]; LPIPS returns [B, 1, 1, 1]

    count = images_a.shape[0]
    if values.size != count:
        raise ValueError(
            f"the {label} returned {values.size} values for a batch of {count} image pairs. "
            f"It must return one value per pair, e.g. a tensor [B] or [B, 1, 1, 1]"
        )
    if not np.isfinite(values).all():
        raise ValueError(
            f"the {label} returned non-finite values {values.tolist()}. It must return a finite value for "
            f"every pair"
        )
    return values


def _check_images(name: str, images) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"{name} must be images [N, C, H, W] with N >= 1, got {_describe(images)}")


def _describe(value) -> object:
    """Return a tensor's shape as a list, or the type name of anything else, for error messages."""
    return list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


# ---------------------------------------------------------------------------------------------------------
# Intra-cluster diversity.


def kmedoids_labels(distances, clusters: int) -> np.ndarray:
    """Cluster N items into min(clusters, N) groups by k-medoids on a distance matrix [N, N].

    Runs PAM (Kaufman and Rousseeuw 1987): the greedy BUILD start, then the best single medoid swap
    while one lowers the total distance. It has no randomness, so equal inputs give equal clusters, and
    ties go to the lowest index. Returns the cluster index of every item, [N].
    """
    matrix = check_distance_matrix(distances)
    if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 1:
        raise ValueError(f"clusters must be an integer >= 1, got {clusters!r}")
    # NOTE: written here rather than taken from the kmedoids package, which is GPL-3.0 licensed. At the
    # sizes evaluated here (N <= a few hundred) the O(k * N^2) swap search takes milliseconds.
    medoids = _pam_build(matrix, min(clusters, matrix.shape[0]))
    medoids = _pam_swap(matrix, medoids)
    return np.argmin(matrix[medoids], axis=0).astype(np.int64)


def _pam_build(matrix: np.ndarray, count: int) -> list:
    """Greedy start: the most central item, then repeatedly the item that lowers the total distance most."""
    medoids = [int(np.argmin(matrix.sum(axis=1)))]
    nearest = matrix[medoids[0]].copy()  # [N] distance of each item to its nearest medoid
    while len(medoids) < count:
        gains = np.maximum(nearest[None, :] - matrix, 0).sum(axis=1)  # [N] gain of adding each candidate
        gains[medoids] = -1
        best = int(np.argmax(gains))
        medoids.append(best)
        nearest = np.minimum(nearest, matrix[best])
    return medoids


def _pam_swap(matrix: np.ndarray, medoids: list) -> list:
    """Apply the best medoid/non-medoid swap while it lowers the total distance."""
    medoids = list(medoids)
    cost = matrix[medoids].min(axis=0).sum()
    while True:
        best_cost, best_swap = cost, None
        for slot in range(len(medoids)):
            others = medoids[:slot] + medoids[slot + 1 :]
            kept = matrix[others].min(axis=0) if others else np.full(matrix.shape[0], np.inf)  # [N]
            costs = np.minimum(kept[None, :], matrix).sum(axis=1)  # [N] total cost with each candidate
            costs[medoids] = np.inf
            candidate = int(np.argmin(costs))
            if costs[candidate] < best_cost - 1e-12:
                best_cost, best_swap = costs[candidate], (slot, candidate)
        if best_swap is None:
            return medoids
        medoids[best_swap[0]] = best_swap[1]
        cost = best_cost


def intra_cluster_distance(distances, clusters: int = LPIPS_CLUSTERS) -> float:
    """Compute the intra-cluster diversity of Ojha et al. 2021 from a distance matrix [N, N], e.g. LPIPS.

    Clusters the items by k-medoids into min(clusters, N) groups, averages the distances over the pairs
    inside each cluster, and averages these means over the clusters, each cluster counting once.

    Ojha et al. assign samples to the cluster of their nearest few-shot training image. A text-driven
    adaptation has no training images, so k-medoids chooses the centers among the samples. Ojha et al. also
    draw at most 50 members per cluster, but here every member counts. Clusters with fewer than 2 members have
    no pairs and are left out of the average, as the NaN means are in Ojha et al.'s script.

    Raises ValueError when no cluster has 2 members, which happens exactly when N <= clusters.
    """
    matrix = check_distance_matrix(distances)
    labels = kmedoids_labels(matrix, clusters)

    cluster_means = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue
        block = matrix[np.ix_(members, members)]  # [M, M]
        rows, columns = np.triu_indices(len(members), k=1)
        cluster_means.append(block[rows, columns].mean())

    if not cluster_means:
        raise ValueError(
            f"each of the {len(labels)} images is alone in its cluster with clusters={clusters}, so "
            f"no cluster has a pair to compare. Render more images than clusters (at least {clusters + 1})"
        )
    return float(np.mean(cluster_means))


def check_distance_matrix(distances) -> np.ndarray:
    """Check a distance matrix [N, N] (numpy or torch) and return it as float64 numpy.

    It must be finite, >= 0, symmetric within SYMMETRY_TOLERANCE and have a diagonal within
    DIAGONAL_TOLERANCE of 0.
    """
    if isinstance(distances, torch.Tensor):
        distances = distances.detach().cpu().numpy()
    matrix = np.asarray(distances, dtype=np.float64)

    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ValueError(
            f"distances must be a square matrix [N, N] with N >= 2, got shape {list(matrix.shape)}"
        )
    if not np.isfinite(matrix).all() or (matrix < 0).any():
        raise ValueError("distances must be finite and >= 0. Check the distance function that computed them")
    if not np.allclose(matrix, matrix.T, rtol=SYMMETRY_TOLERANCE, atol=SYMMETRY_TOLERANCE):
        raise ValueError(
            f"distances must be symmetric, but the largest |d[i, j] - d[j, i]| is "
            f"{np.abs(matrix - matrix.T).max():.3g}. Average the matrix with its transpose first"
        )
    largest_self_distance = np.abs(np.diag(matrix)).max()
    if largest_self_distance > DIAGONAL_TOLERANCE:
        raise ValueError(
            f"the distance of every image to itself must be 0, got diagonal values up to "
            f"{largest_self_distance:.3g}"
        )
    return matrix


# ---------------------------------------------------------------------------------------------------------
# Evaluating a pair of generators.


@torch.no_grad()
def evaluate_generators(
    G_source,  # frozen source generator, e.g. FFHQ
    G_adapted,  # adapted generator with the same z_dim
    guide: ClipGuide,  # CLIP models that score the images
    target_text: str,  # prompt of the target domain, e.g. "anime painting"
    seeds: Sequence[int],  # one image per seed, drawn as utils.sampling.z_from_seeds does
    lpips_distance: Optional[PairFunction] = None,  # batched LPIPS on [B, C, H, W] pairs, or None to skip
    identity_similarity: Optional[PairFunction] = None,  # batched identity similarity, or None to skip it
    truncation_psi: float = 0.7,
    templates: Sequence[str] = IMAGENET_TEMPLATES,  # prompt templates averaged for the CLIP score
    batch_size: int = 4,  # images per generator, CLIP, LPIPS and identity call
    lpips_clusters: int = LPIPS_CLUSTERS,  # clusters of the intra-cluster LPIPS diversity; 0 skips that metric
) -> dict:
    """Render source and adapted images from the same latents and compute every metric as a float.

    Keys, with <model> the CLIP model name with "/" replaced by "-" (ViT-B-32):
      clip_score/{source,adapted}[/<model>]: CLIP score to target_text, templates averaged, guide-weighted
      clip_score/gain: clip_score/adapted - clip_score/source
      hdn_quality/{source,adapted}[/<model>], hdn_diversity/{source,adapted}[/<model>]: HyperDomainNet
      lpips_intra_cluster/adapted: intra-cluster LPIPS diversity of the adapted images (with lpips_distance)
      lpips/source_vs_adapted: mean LPIPS between images of the same z (with lpips_distance)
      identity/source_vs_adapted: mean identity similarity between images of the same z (with
        identity_similarity)

    The functions receive CPU float32 images [B, C, H, W] in [-1, 1] and must move them to their device.
    NOTE: both image sets stay in CPU memory, 2 * N * 12 MiB for RGB at 1024 px.
    """
    with_clusters = lpips_distance is not None and lpips_clusters > 0
    seeds = _check_seeds(seeds, with_clusters, lpips_clusters)

    # Render both generators from the same z.
    source_images = generate(G_source, seeds, truncation_psi=truncation_psi, batch_size=batch_size)
    adapted_images = generate(G_adapted, seeds, truncation_psi=truncation_psi, batch_size=batch_size)

    # Embed images and texts, one tensor per CLIP model.
    source_embeddings = _encode_in_batches(guide, source_images, batch_size)  # per model [N, D]
    adapted_embeddings = _encode_in_batches(guide, adapted_images, batch_size)
    text_embedding = embed_text(guide, target_text, templates)  # per model [D]
    hdn_text_embedding = embed_text(guide, target_text, HYPERDOMAINNET_TEMPLATES)

    metrics = {}
    metrics.update(_clip_metrics(guide, source_embeddings, adapted_embeddings, text_embedding))
    metrics.update(
        _hyperdomainnet_metrics(guide, source_embeddings, adapted_embeddings, hdn_text_embedding)
    )

    if with_clusters:
        matrix = pairwise_distance_matrix(adapted_images, lpips_distance, batch_size)
        metrics["lpips_intra_cluster/adapted"] = intra_cluster_distance(matrix, lpips_clusters)
    if lpips_distance is not None:
        metrics["lpips/source_vs_adapted"] = paired_mean(
            lpips_distance, source_images, adapted_images, batch_size
        )

    if identity_similarity is not None:
        metrics["identity/source_vs_adapted"] = paired_mean(
            identity_similarity, source_images, adapted_images, batch_size
        )
    return metrics


def _check_seeds(seeds, with_clusters: bool, clusters: int) -> list:
    """Check the seeds before any rendering, so a bad count fails at once."""
    seeds = [int(seed) for seed in seeds]
    if len(seeds) < 2:
        raise ValueError(f"diversity compares pairs of images, so pass at least 2 seeds, got {seeds}")
    if len(set(seeds)) != len(seeds):
        duplicates = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        raise ValueError(
            f"seeds {duplicates} occur more than once, and duplicated images would lower the diversity. "
            f"Pass distinct seeds"
        )
    if with_clusters and len(seeds) <= clusters:
        raise ValueError(
            f"intra-cluster LPIPS needs more images than clusters, got {len(seeds)} seeds and "
            f"lpips_clusters={clusters}. Pass at least {clusters + 1} seeds or fewer clusters"
        )
    return seeds


def _encode_in_batches(guide: ClipGuide, images: torch.Tensor, batch_size: int) -> list:
    """Embed images [N, C, H, W] with every model of the guide; returns one [N, D] CPU tensor per model."""
    per_batch = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(guide.device)
        per_batch.append([embedding.cpu() for embedding in guide.encode_images(batch)])
    return [torch.cat(embeddings) for embeddings in zip(*per_batch)]


def _clip_metrics(guide, source_embeddings, adapted_embeddings, text_embedding) -> dict:
    source_per_model, source_mean = clip_text_score(source_embeddings, text_embedding, guide.weights)
    adapted_per_model, adapted_mean = clip_text_score(adapted_embeddings, text_embedding, guide.weights)

    metrics = {
        "clip_score/source": source_mean,
        "clip_score/adapted": adapted_mean,
        "clip_score/gain": adapted_mean - source_mean,
    }
    for name, source, adapted in zip(guide.names, source_per_model, adapted_per_model):
        metrics[f"clip_score/source/{_key(name)}"] = source
        metrics[f"clip_score/adapted/{_key(name)}"] = adapted
    return metrics


def _hyperdomainnet_metrics(guide, source_embeddings, adapted_embeddings, text_embedding) -> dict:
    metrics = {}
    for domain, embeddings in (("source", source_embeddings), ("adapted", adapted_embeddings)):
        quality = [hyperdomainnet_quality(images, text) for images, text in zip(embeddings, text_embedding)]
        diversity = [hyperdomainnet_diversity(images) for images in embeddings]

        metrics[f"hdn_quality/{domain}"] = weighted_mean(quality, guide.weights)
        metrics[f"hdn_diversity/{domain}"] = weighted_mean(diversity, guide.weights)
        for name, quality_value, diversity_value in zip(guide.names, quality, diversity):
            metrics[f"hdn_quality/{domain}/{_key(name)}"] = quality_value
            metrics[f"hdn_diversity/{domain}/{_key(name)}"] = diversity_value
    return metrics


def _key(model_name: str) -> str:
    """Turn a CLIP model name into a key segment: "ViT-B/32" becomes "ViT-B-32", as open_clip spells it."""
    return model_name.replace("/", "-")


# ---------------------------------------------------------------------------------------------------------
# Writing.


def write_metrics(metrics: dict, path: Union[str, Path]) -> Path:
    """Write metrics to a JSON file atomically, raising ValueError for a NaN or infinite number.

    Values may be numbers, strings, booleans, None, lists and dicts with string keys. A non-finite number
    means a broken metric, and strict JSON has no NaN, so nothing is written and the error names its key.
    """
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict of metric names to values, got {type(metrics).__name__}")
    _check_json_value("metrics", metrics)

    path = Path(path)
    atomic_write_text(path, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return path


def _check_json_value(key: str, value) -> None:
    """Raise for a value that strict JSON cannot hold. `key` is the value's path, e.g. metrics['a'][0]."""
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                raise TypeError(
                    f"{key} has the key {name!r} of type {type(name).__name__}, but JSON keys must be strings"
                )
            _check_json_value(f"{key}[{name!r}]", item)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json_value(f"{key}[{index}]", item)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key} is {value}, not a finite number. Fix the metric that produced it")
    elif not isinstance(value, (str, int, float, bool, type(None))):
        raise TypeError(
            f"{key} is a {type(value).__name__}, which JSON cannot store. "
            f"Convert it to a float, e.g. with .item()"
        )
