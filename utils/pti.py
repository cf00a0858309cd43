"""Pivotal tuning (PTI) of a generator around a projected code, and transplanting a domain change onto it.

Pivotal Tuning Inversion (Roich et al. 2021, "Pivotal Tuning for Latent-based Editing of Real Images")
fine-tunes the synthesis network so that the projected code (the pivot) reproduces the target exactly.
transplant_domain then adds the weight change of a domain-adapted generator (G_domain - G_source) to the
tuned generator, which renders the tuned identity in the domain's style:

    projection = project(G_source, photo, lpips_model, mode="w")
    tuned = pivotal_tuning(G_source, projection.ws, photo, lpips_model)
    G_person_domain = transplant_domain(G_source, G_domain, tuned.G)
    image = G_person_domain.synthesis(projection.ws, noise_mode="const")
"""

import copy
import dataclasses
from typing import List, Union

import torch
from PIL import Image
from tqdm import tqdm

from .perceptual import load_lpips, lpips_distance
from .projector import prepare_target

# Defaults of configs/hyperparameters.py in danielroich/PTI (commit f1331c4).
PTI_STEPS = 350  # max_pti_steps
PTI_LEARNING_RATE = 3e-4  # pti_learning_rate, Adam with default betas
PTI_LPIPS_THRESHOLD = 0.06  # LPIPS_value_threshold: tuning stops once LPIPS is at or below it
PTI_L2_WEIGHT = 1.0  # pt_l2_lambda
PTI_LPIPS_WEIGHT = 1.0  # pt_lpips_lambda


@dataclasses.dataclass
class TuningResult:
    """Output of pivotal_tuning()."""

    G: torch.nn.Module  # the tuned copy of the generator, in eval mode with requires_grad False
    history: List[dict]  # one dict per step: step, mse, lpips, loss (measured before that step's update)
    steps: int  # optimizer steps taken
    stopped_early: bool  # True when LPIPS reached the threshold before num_steps updates
    lpips: float  # LPIPS between G.synthesis(pivot) and the target after tuning
    mse: float  # mean squared error of the same pair, in [-1, 1] pixel units


def pivotal_tuning(
    G,
    pivot_ws: torch.Tensor,
    target: Union[torch.Tensor, Image.Image],
    lpips_model=None,
    *,
    num_steps: int = PTI_STEPS,
    learning_rate: float = PTI_LEARNING_RATE,
    lpips_threshold: float = PTI_LPIPS_THRESHOLD,
    l2_weight: float = PTI_L2_WEIGHT,
    lpips_weight: float = PTI_LPIPS_WEIGHT,
    progress: bool = True,
) -> TuningResult:
    """Fine-tune a copy of G's synthesis network so that synthesis(pivot_ws) reproduces `target`.

    G: the source stylegan2.Generator. It is deep-copied and stays unchanged. The mapping network is
        frozen, and the tuned copy keeps G's own noise buffers (noise mode "const"), because the noise
        maps a projection optimises fit only the pivot and are not part of the generator.
    pivot_ws: [1, num_ws, w_dim], usually ProjectionResult.ws.
    target: a tensor [1, C, R, R] in [-1, 1] or a PIL image (see utils.projector.prepare_target).
    lpips_model: from utils.perceptual, on G's device. None calls load_lpips.
    num_steps, learning_rate, lpips_threshold, l2_weight, lpips_weight: the loss is
        l2_weight * MSE + lpips_weight * LPIPS, minimised by Adam for at most num_steps updates, stopping
        as soon as LPIPS <= lpips_threshold. PTI's code measures that with AlexNet LPIPS at full
        resolution, and here it is the given model at 256 px at most, as in the projector.
    progress: show a tqdm bar with the losses.
    """
    device = next(G.parameters()).device
    if not isinstance(pivot_ws, torch.Tensor) or list(pivot_ws.shape) != [1, G.num_ws, G.w_dim]:
        shape = list(pivot_ws.shape) if isinstance(pivot_ws, torch.Tensor) else type(pivot_ws).__name__
        raise ValueError(f"pivot_ws must have shape [1, {G.num_ws}, {G.w_dim}], got {shape}")
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be an integer >= 0, got {num_steps!r}")
    pivot_ws = pivot_ws.detach().to(device, torch.float32)
    target = prepare_target(target, G.img_resolution, G.img_channels).to(device)
    if lpips_model is None:
        lpips_model = load_lpips(device=device)

    tuned = copy.deepcopy(G).eval().requires_grad_(False)
    tuned.synthesis.requires_grad_(True)
    optimizer = torch.optim.Adam(tuned.synthesis.parameters(), lr=learning_rate)

    history = []
    stopped_early = False
    steps = 0
    bar = tqdm(range(num_steps), desc="pivotal tuning", disable=not progress, leave=False)
    for step in bar:
        # PTI renders in float32 even where G would use float16 blocks (force_fp32=True in its coach).
        synth = tuned.synthesis(pivot_ws, noise_mode="const", force_fp32=True)
        mse = (synth - target).square().mean()
        lpips_value = lpips_distance(lpips_model, synth, target).sum()
        loss = l2_weight * mse + lpips_weight * lpips_value
        history.append(dict(step=step, mse=mse.item(), lpips=lpips_value.item(), loss=loss.item()))
        bar.set_postfix_str(f"mse {history[-1]['mse']:.4f} lpips {history[-1]['lpips']:.4f}", refresh=False)

        # As in PTI, the check comes before the update, so a generator already good enough is not changed.
        if lpips_value.item() <= lpips_threshold:
            stopped_early = True
            break

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1

    tuned.requires_grad_(False)
    with torch.no_grad():
        synth = tuned.synthesis(pivot_ws, noise_mode="const", force_fp32=True)
        final_lpips = lpips_distance(lpips_model, synth, target).item()
        final_mse = (synth - target).square().mean().item()
    return TuningResult(
        G=tuned, history=history, steps=steps, stopped_early=stopped_early, lpips=final_lpips, mse=final_mse
    )


def transplant_domain(G_source, G_domain, G_tuned):
    """Return a new generator with every parameter G_tuned + (G_domain - G_source).

    G_domain is G_source adapted to a domain (for example by CLIP guidance), and G_tuned is G_source
    after pivotal tuning, so the result carries both changes. Buffers (noise_const, w_avg,
    resample_filter) come from G_tuned. The three generators must share the configuration and the
    state_dict names, shapes and dtypes, or ValueError names the difference. The result lives on
    G_tuned's device, in eval mode with requires_grad False. None of the inputs is changed.
    """
    _check_compatible(G_source, G_tuned, "G_source", "G_tuned")
    _check_compatible(G_domain, G_tuned, "G_domain", "G_tuned")

    result = copy.deepcopy(G_tuned).eval().requires_grad_(False)
    source_parameters = dict(G_source.named_parameters())
    domain_parameters = dict(G_domain.named_parameters())
    with torch.no_grad():
        for name, parameter in result.named_parameters():
            delta = domain_parameters[name].to(parameter.device) - source_parameters[name].to(parameter.device)
            parameter.copy_(parameter + delta)
    return result


def _check_compatible(G, reference, name: str, reference_name: str) -> None:
    """Raise ValueError unless G and reference have the same configuration and state_dict layout."""
    config = getattr(G, "init_kwargs", None)
    reference_config = getattr(reference, "init_kwargs", None)
    if config != reference_config:
        raise ValueError(
            f"{name} and {reference_name} have different configurations: {config} vs {reference_config}. "
            f"All three generators must come from the same source generator"
        )

    state = G.state_dict()
    reference_state = reference.state_dict()
    missing = sorted(set(reference_state) - set(state))
    unexpected = sorted(set(state) - set(reference_state))
    if missing or unexpected:
        raise ValueError(
            f"{name} and {reference_name} have different state_dict keys: "
            f"{name} lacks {missing[:5]}, and has extra {unexpected[:5]}"
        )
    for key, tensor in state.items():
        other = reference_state[key]
        if tensor.shape != other.shape or tensor.dtype != other.dtype:
            raise ValueError(
                f"{key} is {list(tensor.shape)} {tensor.dtype} in {name} "
                f"but {list(other.shape)} {other.dtype} in {reference_name}"
            )
    if {key for key, _ in G.named_parameters()} != {key for key, _ in reference.named_parameters()}:
        raise ValueError(f"{name} and {reference_name} register different tensors as parameters")
