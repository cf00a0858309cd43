"""CLIP-space losses and scores, written as pure functions of embeddings without models.

Embeddings are float tensors [N, D], one row per image, for one CLIP model. The functions normalise their
inputs themselves, so raw or unit embeddings give the same result. For a guide with several models,
compute a loss per model and add them with sum_over_models.
"""

import math
from typing import Callable, Sequence

import torch

# Floor for the norm of the image change in directional_loss. Step 0 of an adaptation has adapted ==
# source, so the change is exactly 0. Below the floor the loss divides by DIRECTIONAL_EPS instead of the
# norm, so at 0 its gradient has norm 1 / (N * DIRECTIONAL_EPS). Adam scales later steps by the running
# gradient size, so with a tiny floor (1e-8) that first gradient dwarfs the next ones and training
# stalls, which tests/test_losses.py shows on a linear toy problem. A change of norm 1e-4 between unit
# embeddings means a cosine of 1 - 5e-9 between them, so the floor alters the loss only for practically
# identical images.
DIRECTIONAL_EPS = 1e-4
NORM_EPS = 1e-8  # norm floor elsewhere, which only keeps a zero vector from dividing by zero


def _unit(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Divide rows by max(norm, eps), with a finite gradient (no NaN) at x = 0."""
    # Clamping the squared norm before the square root keeps sqrt away from 0, where its derivative is
    # infinite.
    norm = x.square().sum(dim=-1, keepdim=True).clamp_min(eps * eps).sqrt()
    return x / norm


def _check_embeddings(name: str, emb: torch.Tensor) -> None:
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] == 0:
        shape = list(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise ValueError(f"{name} must be embeddings [N, D] with N >= 1, got {shape}")


def _check_target(name: str, target: torch.Tensor, emb: torch.Tensor) -> None:
    """Accept a target [D], [1, D] or [N, D] that broadcasts against embeddings [N, D]."""
    count, dim = emb.shape
    valid = target.ndim == 1 and target.shape[0] == dim
    valid = valid or (target.ndim == 2 and target.shape[1] == dim and target.shape[0] in (1, count))
    if not valid:
        raise ValueError(
            f"{name} must have shape [{dim}], [1, {dim}] or [{count}, {dim}] to match the embeddings, "
            f"got {list(target.shape)}"
        )


def directional_loss(
    adapted_emb: torch.Tensor,
    source_emb: torch.Tensor,
    direction: torch.Tensor,
    eps: float = DIRECTIONAL_EPS,
) -> torch.Tensor:
    """Compute the directional CLIP loss of StyleGAN-NADA (Gal et al. 2021): mean of 1 - cos(dE_I, dT).

    adapted_emb, source_emb: [N, D] image embeddings of the adapted and the frozen generator, same latents.
    direction: [D], [1, D] or [N, D], the text or image direction (normalised here).
    eps: norm floor of the image difference dE_I = adapted - source.

    When dE_I has a norm below eps, the cosine is computed as dE_I . dT / eps. At dE_I = 0 (step 0, where
    the adapted generator still equals the source) the loss is exactly 1, and its gradient with respect to
    adapted_emb is the finite -unit(direction) / (N * eps) per row, which pulls the embeddings along the
    direction.
    """
    _check_embeddings("adapted_emb", adapted_emb)
    _check_embeddings("source_emb", source_emb)
    if adapted_emb.shape != source_emb.shape:
        raise ValueError(
            f"adapted_emb and source_emb must have the same shape, got {list(adapted_emb.shape)} "
            f"and {list(source_emb.shape)}"
        )
    _check_target("direction", direction, adapted_emb)

    image_change = _unit(adapted_emb - source_emb, eps)  # [N, D], norm <= 1
    text_change = _unit(direction, NORM_EPS)  # [D] or [1 or N, D]
    cosine = (image_change * text_change).sum(dim=-1)  # [N]
    return (1 - cosine).mean()


def global_loss(adapted_emb: torch.Tensor, target_text_emb: torch.Tensor) -> torch.Tensor:
    """Compute the global CLIP loss: mean of 1 - cos(E_I(adapted image), E_T(target text)).

    adapted_emb: [N, D] image embeddings of the adapted generator.
    target_text_emb: [D], [1, D] or [N, D].
    """
    _check_embeddings("adapted_emb", adapted_emb)
    _check_target("target_text_emb", target_text_emb, adapted_emb)
    return 1 - clip_score(adapted_emb, target_text_emb)


def angle_consistency_loss(source_emb: torch.Tensor, adapted_emb: torch.Tensor) -> torch.Tensor:
    """Compute the in-domain angle consistency loss of HyperDomainNet (Alanov et al. 2022).

    The cosine similarity of every pair of source images should survive the adaptation: returns the
    mean over pairs i != j of (cos(src_i, src_j) - cos(adapted_i, adapted_j))^2. Needs N >= 2.
    """
    _check_embeddings("source_emb", source_emb)
    _check_embeddings("adapted_emb", adapted_emb)
    if source_emb.shape != adapted_emb.shape:
        raise ValueError(
            f"source_emb and adapted_emb must have the same shape, got {list(source_emb.shape)} "
            f"and {list(adapted_emb.shape)}"
        )
    count = source_emb.shape[0]
    if count < 2:
        raise ValueError(
            f"angle_consistency_loss compares pairs of images and needs a batch of >= 2, got {count}"
        )

    source_unit = _unit(source_emb, NORM_EPS)
    adapted_unit = _unit(adapted_emb, NORM_EPS)
    source_cos = source_unit @ source_unit.T  # [N, N]
    adapted_cos = adapted_unit @ adapted_unit.T  # [N, N]

    off_diagonal = ~torch.eye(count, dtype=torch.bool, device=source_emb.device)
    return (source_cos - adapted_cos)[off_diagonal].square().mean()


def clip_score(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Return the mean cosine similarity of images [N, D] to a text [D], [1, D] or [N, D], in [-1, 1].

    This is the raw cosine, without the 2.5 * max(cos, 0) rescaling of CLIPScore (Hessel et al. 2021).
    """
    _check_embeddings("image_emb", image_emb)
    _check_target("text_emb", text_emb, image_emb)
    cosine = (_unit(image_emb, NORM_EPS) * _unit(text_emb, NORM_EPS)).sum(dim=-1)  # [N]
    return cosine.mean()


def sum_over_models(loss_fn: Callable, weights: Sequence[float], *per_model_args, **kwargs) -> torch.Tensor:
    """Return sum_k weights[k] * loss_fn(args[k]...) over the models of a guide.

    Each positional argument is a list with one entry per model, such as ClipGuide.encode_images output;
    keyword arguments go to every call unchanged. Models with weight 0 are skipped, so they cost nothing.
    The weights are not normalised: StyleGAN-NADA adds its two models at weights 1 and 1.

        loss = sum_over_models(directional_loss, guide.weights, adapted, source, directions)
    """
    weights = [float(w) for w in weights]
    for position, values in enumerate(per_model_args):
        if len(values) != len(weights):
            raise ValueError(
                f"argument {position} of sum_over_models has {len(values)} entries but there are "
                f"{len(weights)} weights; pass one entry per model"
            )
    if any(not math.isfinite(w) or w < 0 for w in weights) or not any(weights):
        raise ValueError(f"weights must be finite and >= 0 with at least one > 0, got {weights}")

    total = None
    for index, weight in enumerate(weights):
        if weight == 0:
            continue
        loss = weight * loss_fn(*(values[index] for values in per_model_args), **kwargs)
        total = loss if total is None else total + loss
    return total
