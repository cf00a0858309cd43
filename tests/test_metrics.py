"""Evaluation metrics against hand computations on small inputs, and end to end on tiny models."""

import json
import math

import numpy as np
import pytest
import torch

from stylegan2 import Generator
from utils.clip_model import ClipGuide, tiny_clip
from utils.directions import IMAGENET_TEMPLATES, embed_text
from utils.metrics import (
    HYPERDOMAINNET_TEMPLATES,
    check_distance_matrix,
    clip_text_score,
    evaluate_generators,
    hyperdomainnet_diversity,
    hyperdomainnet_quality,
    intra_cluster_distance,
    kmedoids_labels,
    mean_paired_cosine,
    paired_mean,
    pairwise_distance_matrix,
    write_metrics,
)
from utils.sampling import generate
from tests.tiny import TINY_GENERATOR

SQRT_HALF = math.sqrt(0.5)  # cos 45 degrees
SEEDS = list(range(12))  # more than the 10 clusters of the intra-cluster LPIPS

# Two clusters with interleaved indices: {0, 2, 4} at distances 1, 2, 1 (pairs 0-2, 0-4, 2-4) and
# {1, 3, 5} at distance 3 from each other. Members of different clusters are 9 apart.
TWO_CLUSTERS = np.array([
    [0, 9, 1, 9, 2, 9],
    [9, 0, 9, 3, 9, 3],
    [1, 9, 0, 9, 1, 9],
    [9, 3, 9, 0, 9, 3],
    [2, 9, 1, 9, 0, 9],
    [9, 3, 9, 3, 9, 0],
], dtype=np.float64)

# Three groups: {0, 1, 2} at distances 1, 2, 1, the pair {3, 4} at distance 4, and {5} alone, 20 from all.
# Members of the first two groups are 10 apart.
WITH_SINGLETON = np.array([
    [0, 1, 2, 10, 10, 20],
    [1, 0, 1, 10, 10, 20],
    [2, 1, 0, 10, 10, 20],
    [10, 10, 10, 0, 4, 20],
    [10, 10, 10, 4, 0, 20],
    [20, 20, 20, 20, 20, 0],
], dtype=np.float64)


def mean_squared_difference(images_a, images_b):
    """Stand-in for LPIPS: per-pair mean squared difference, shaped [B, 1, 1, 1] as LPIPS returns it."""
    return (images_a - images_b).square().mean(dim=(1, 2, 3), keepdim=True)


def flat_cosine(images_a, images_b):
    """Stand-in for an identity similarity: cosine of the flattened images, [B]."""
    return torch.nn.functional.cosine_similarity(images_a.flatten(1), images_b.flatten(1), dim=1)


def constant_images(values):
    """Images [N, 1, 2, 2] whose pixels all equal values[i]."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()


# ---------------------------------------------------------------------------------------------------------
# CLIP metrics.


def test_clip_text_score_hand_computed():
    # Model 1 (2-D): cosines 1 and 0 to [1, 0], mean 0.5.
    # Model 2 (3-D): cosines 0.8 and 0.48 to [0, 0.6, 0.8], mean 0.64.
    images = [
        torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        torch.tensor([[0.0, 0.0, 1.0], [0.6, 0.8, 0.0]]),
    ]
    texts = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.6, 0.8])]

    per_model, mean = clip_text_score(images, texts, weights=[1.0, 3.0])
    assert per_model == pytest.approx([0.5, 0.64])
    assert mean == pytest.approx((0.5 + 3 * 0.64) / 4)

    _, unweighted = clip_text_score(images, texts)
    assert unweighted == pytest.approx((0.5 + 0.64) / 2)


def test_clip_text_score_rejects_mismatch():
    images = [torch.eye(2), torch.eye(2)]
    with pytest.raises(ValueError, match="one of each per CLIP model"):
        clip_text_score(images, [torch.tensor([1.0, 0.0])])
    with pytest.raises(ValueError, match="weights must be finite"):
        clip_text_score(images, [torch.tensor([1.0, 0.0])] * 2, weights=[0.0, 0.0])


def test_hyperdomainnet_quality_hand_computed():
    images = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # both 45 degrees from [1, 1]
    assert hyperdomainnet_quality(images, torch.tensor([1.0, 1.0])) == pytest.approx(SQRT_HALF)


def test_hyperdomainnet_diversity_hand_computed():
    # Unit directions [1, 0], [0, 1], [-1, 0]: pair cosines 0, -1, 0, so 1 - cos is 1, 2, 1.
    images = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-3.0, 0.0]])
    assert hyperdomainnet_diversity(images) == pytest.approx(4 / 3)

    orthogonal = torch.eye(3)  # every pair has cosine 0
    assert hyperdomainnet_diversity(orthogonal) == pytest.approx(1.0)

    identical = torch.tensor([[0.6, 0.8]] * 4)
    assert hyperdomainnet_diversity(identical) == pytest.approx(0.0, abs=1e-12)


def test_hyperdomainnet_diversity_needs_pairs():
    with pytest.raises(ValueError, match="N >= 2"):
        hyperdomainnet_diversity(torch.tensor([[1.0, 0.0]]))


def test_mean_paired_cosine_hand_computed():
    source = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    adapted = torch.tensor([[3.0, 4.0], [0.0, -2.0]])  # cosines 0.6 and -1
    assert mean_paired_cosine(source, adapted) == pytest.approx(-0.2)

    with pytest.raises(ValueError, match="one shape"):
        mean_paired_cosine(source, adapted[:1])


# ---------------------------------------------------------------------------------------------------------
# Distances between images.


def test_pairwise_distance_matrix_hand_computed():
    images = constant_images([0.0, 1.0, 3.0, 6.0])
    calls = []

    def absolute_difference(images_a, images_b):
        calls.append(len(images_a))
        return (images_a - images_b).abs().mean(dim=(1, 2, 3), keepdim=True)  # [B, 1, 1, 1]

    matrix = pairwise_distance_matrix(images, absolute_difference, batch_size=4)

    expected = np.array([[0, 1, 3, 6], [1, 0, 2, 5], [3, 2, 0, 3], [6, 5, 3, 0]], dtype=np.float64)
    np.testing.assert_allclose(matrix, expected)
    assert calls == [4, 2]  # 6 pairs i < j in batches of 4


def test_pairwise_distance_matrix_rejects_bad_outputs():
    images = constant_images([0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="one value per pair"):
        pairwise_distance_matrix(images, lambda a, b: torch.zeros(len(a) + 1))
    with pytest.raises(ValueError, match="negative"):
        pairwise_distance_matrix(images, lambda a, b: -torch.ones(len(a)))
    with pytest.raises(ValueError, match="non-finite"):
        pairwise_distance_matrix(images, lambda a, b: torch.full([len(a)], float("nan")))


def test_paired_mean_hand_computed():
    source = constant_images([0.0, 1.0, 2.0])
    adapted = constant_images([1.0, 1.0, 4.0])
    calls = []

    def absolute_difference(images_a, images_b):
        calls.append(len(images_a))
        return (images_a - images_b).abs().mean(dim=(1, 2, 3)).tolist()  # a plain list works too

    value = paired_mean(absolute_difference, source, adapted, batch_size=2)
    assert value == pytest.approx((1 + 0 + 2) / 3)
    assert type(value) is float
    assert calls == [2, 1]


def test_paired_mean_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="one shape"):
        paired_mean(flat_cosine, constant_images([0.0, 1.0]), constant_images([0.0]))


# ---------------------------------------------------------------------------------------------------------
# k-medoids and intra-cluster diversity.


def test_kmedoids_finds_two_clusters():
    labels = kmedoids_labels(TWO_CLUSTERS, clusters=2)
    assert labels[0] == labels[2] == labels[4]
    assert labels[1] == labels[3] == labels[5]
    assert labels[0] != labels[1]


def test_intra_cluster_two_clusters_hand_computed():
    # The means within the clusters are (1 + 2 + 1) / 3 = 4/3 and 3, and their mean is 13/6.
    assert intra_cluster_distance(TWO_CLUSTERS, clusters=2) == pytest.approx(13 / 6)


def test_intra_cluster_skips_singletons():
    # Clusters {0, 1, 2} (mean 4/3), {3, 4} (mean 4) and {5}, which has no pair and is left out.
    labels = kmedoids_labels(WITH_SINGLETON, clusters=3)
    assert len(set(labels[[0, 1, 2]])) == 1
    assert labels[3] == labels[4]
    assert len(set(labels)) == 3

    assert intra_cluster_distance(WITH_SINGLETON, clusters=3) == pytest.approx((4 / 3 + 4) / 2)


def test_intra_cluster_single_cluster():
    rows, columns = np.triu_indices(6, k=1)
    expected = TWO_CLUSTERS[rows, columns].mean()
    assert intra_cluster_distance(TWO_CLUSTERS, clusters=1) == pytest.approx(expected)


def test_intra_cluster_more_clusters_than_images():
    # kmedoids caps the count at N, so every image is alone and no pair is left to average.
    labels = kmedoids_labels(TWO_CLUSTERS, clusters=10)
    assert sorted(labels.tolist()) == list(range(6))

    with pytest.raises(ValueError, match="at least 11"):
        intra_cluster_distance(TWO_CLUSTERS, clusters=10)
    with pytest.raises(ValueError, match="alone in its cluster"):
        intra_cluster_distance(TWO_CLUSTERS, clusters=6)


def test_intra_cluster_accepts_torch_matrix():
    value = intra_cluster_distance(torch.from_numpy(TWO_CLUSTERS).float(), clusters=2)
    assert value == pytest.approx(13 / 6)


def test_intra_cluster_deterministic():
    points = np.random.RandomState(0).randn(60, 5)
    matrix = np.linalg.norm(points[:, None] - points[None], axis=-1)  # [60, 60] Euclidean distances

    first = intra_cluster_distance(matrix, clusters=10)
    second = intra_cluster_distance(matrix.copy(), clusters=10)
    assert first == second
    np.testing.assert_array_equal(kmedoids_labels(matrix, 10), kmedoids_labels(matrix, 10))


@pytest.mark.parametrize(
    "matrix, message",
    [
        (np.zeros((3, 2)), "square matrix"),
        (np.zeros((1, 1)), "N >= 2"),
        (np.array([[0.0, 1.0], [2.0, 0.0]]), "symmetric"),
        (np.array([[0.0, -1.0], [-1.0, 0.0]]), ">= 0"),
        (np.array([[0.0, np.nan], [np.nan, 0.0]]), "finite"),
        (np.array([[1.0, 1.0], [1.0, 0.0]]), "to itself must be 0"),
    ],
)
def test_check_distance_matrix_rejects(matrix, message):
    with pytest.raises(ValueError, match=message):
        check_distance_matrix(matrix)


def test_kmedoids_rejects_bad_cluster_count():
    with pytest.raises(ValueError, match="integer >= 1"):
        kmedoids_labels(TWO_CLUSTERS, clusters=0)


# ---------------------------------------------------------------------------------------------------------
# Writing.


def test_write_metrics_round_trip(tmp_path):
    metrics = {"clip_score/gain": 0.25, "count": 3, "info": {"seeds": [1, 2], "text": "anime", "ok": True}}
    path = write_metrics(metrics, tmp_path / "out" / "metrics.json")
    assert json.loads(path.read_text()) == metrics


@pytest.mark.parametrize(
    "metrics, key",
    [
        ({"clip_score/gain": float("nan")}, "metrics['clip_score/gain']"),
        ({"nested": {"values": [0.0, float("inf")]}}, "metrics['nested']['values'][1]"),
    ],
)
def test_write_metrics_rejects_non_finite(tmp_path, metrics, key):
    path = tmp_path / "metrics.json"
    path.write_text("{}\n")

    with pytest.raises(ValueError, match=key.replace("[", r"\[").replace("]", r"\]")):
        write_metrics(metrics, path)
    assert path.read_text() == "{}\n"  # the old file is left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary file left


def test_write_metrics_rejects_non_json_types(tmp_path):
    with pytest.raises(TypeError, match="float32"):
        write_metrics({"score": np.float32(0.5)}, tmp_path / "a.json")
    with pytest.raises(TypeError, match="Tensor"):
        write_metrics({"score": torch.tensor(0.5)}, tmp_path / "b.json")
    with pytest.raises(TypeError, match="JSON keys must be strings"):
        write_metrics({1: 0.5}, tmp_path / "c.json")


# ---------------------------------------------------------------------------------------------------------
# Evaluating generators end to end.


def _tiny_generator(seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Generator(**TINY_GENERATOR).eval()


@pytest.fixture(scope="module")
def generators():
    return _tiny_generator(0), _tiny_generator(1)


@pytest.fixture(scope="module")
def guide():
    # Two models of different input sizes and weights. A "/" in a name becomes "-" in the keys.
    models = [tiny_clip(seed=0), tiny_clip(seed=1, image_size=48, patch_size=16)]
    return ClipGuide(models, weights=[1.0, 2.0], names=["tiny/32", "tiny48"])


@pytest.fixture(scope="module")
def self_metrics(generators, guide):
    G, _ = generators
    return evaluate_generators(
        G, G, guide, "anime painting", SEEDS,
        lpips_distance=mean_squared_difference, identity_similarity=flat_cosine,
    )


@pytest.fixture(scope="module")
def pair_metrics(generators, guide):
    G_source, G_adapted = generators
    return evaluate_generators(
        G_source, G_adapted, guide, "anime painting", SEEDS,
        lpips_distance=mean_squared_difference, identity_similarity=flat_cosine,
    )


EXPECTED_KEYS = {
    "clip_score/source", "clip_score/adapted", "clip_score/gain",
    "clip_score/source/tiny-32", "clip_score/adapted/tiny-32",
    "clip_score/source/tiny48", "clip_score/adapted/tiny48",
    "lpips_intra_cluster/adapted", "lpips/source_vs_adapted", "identity/source_vs_adapted",
} | {
    f"{metric}/{domain}{model}"
    for metric in ("hdn_quality", "hdn_diversity")
    for domain in ("source", "adapted")
    for model in ("", "/tiny-32", "/tiny48")
}


def test_evaluate_keys_and_plain_finite_floats(pair_metrics):
    assert set(pair_metrics) == EXPECTED_KEYS
    for key, value in pair_metrics.items():
        assert type(value) is float, key
        assert math.isfinite(value), key


def test_evaluate_self_has_no_change(self_metrics, generators):
    assert self_metrics["clip_score/gain"] == pytest.approx(0.0, abs=1e-7)
    assert self_metrics["lpips/source_vs_adapted"] == 0.0
    assert self_metrics["hdn_quality/adapted"] == pytest.approx(self_metrics["hdn_quality/source"])
    assert self_metrics["hdn_diversity/adapted"] == pytest.approx(self_metrics["hdn_diversity/source"])

    images = generate(generators[0], SEEDS)
    self_similarity = paired_mean(flat_cosine, images, images)
    assert self_metrics["identity/source_vs_adapted"] == pytest.approx(self_similarity)


def test_evaluate_matches_metric_functions(pair_metrics, generators, guide):
    G_source, G_adapted = generators
    source_images = generate(G_source, SEEDS)
    adapted_images = generate(G_adapted, SEEDS)
    with torch.no_grad():
        source_embeddings = guide.encode_images(source_images)
        adapted_embeddings = guide.encode_images(adapted_images)

    # CLIP score with the template average, weighted 1:2.
    text = embed_text(guide, "anime painting", IMAGENET_TEMPLATES)
    source_per_model, source_mean = clip_text_score(source_embeddings, text, guide.weights)
    adapted_per_model, adapted_mean = clip_text_score(adapted_embeddings, text, guide.weights)
    assert pair_metrics["clip_score/source"] == pytest.approx(source_mean, abs=1e-6)
    assert pair_metrics["clip_score/adapted/tiny48"] == pytest.approx(adapted_per_model[1], abs=1e-6)
    assert pair_metrics["clip_score/gain"] == pytest.approx(adapted_mean - source_mean, abs=1e-6)

    # HyperDomainNet quality with the single template "A {}".
    hdn_text = embed_text(guide, "anime painting", HYPERDOMAINNET_TEMPLATES)
    quality = [hyperdomainnet_quality(e, t) for e, t in zip(adapted_embeddings, hdn_text)]
    assert pair_metrics["hdn_quality/adapted"] == pytest.approx((quality[0] + 2 * quality[1]) / 3, abs=1e-6)
    assert pair_metrics["hdn_diversity/source/tiny-32"] == pytest.approx(
        hyperdomainnet_diversity(source_embeddings[0]), abs=1e-6
    )

    # LPIPS stand-ins on the same images.
    matrix = pairwise_distance_matrix(adapted_images, mean_squared_difference)
    assert pair_metrics["lpips_intra_cluster/adapted"] == pytest.approx(intra_cluster_distance(matrix, 10))
    assert pair_metrics["lpips/source_vs_adapted"] == pytest.approx(
        paired_mean(mean_squared_difference, source_images, adapted_images)
    )
    assert pair_metrics["lpips/source_vs_adapted"] > 0


def test_evaluate_without_optional_functions(generators, guide):
    G_source, G_adapted = generators
    metrics = evaluate_generators(G_source, G_adapted, guide, "sketch", [3, 4], batch_size=2)
    assert not any(key.startswith(("lpips", "identity")) for key in metrics)
    assert "clip_score/gain" in metrics


def test_evaluate_writes_json(pair_metrics, tmp_path):
    path = write_metrics(pair_metrics, tmp_path / "metrics.json")
    assert json.loads(path.read_text()) == pair_metrics


@pytest.mark.parametrize(
    "seeds, lpips, message",
    [
        ([5], False, "at least 2 seeds"),
        ([1, 2, 1], False, r"seeds \[1\] occur more than once"),
        (list(range(10)), True, "at least 11 seeds"),
    ],
)
def test_evaluate_rejects_seeds_before_rendering(guide, seeds, lpips, message):
    # The generators are None, so an error raised after rendering started would be an AttributeError.
    distance = mean_squared_difference if lpips else None
    with pytest.raises(ValueError, match=message):
        evaluate_generators(None, None, guide, "anime", seeds, lpips_distance=distance)
