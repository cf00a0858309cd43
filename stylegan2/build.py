"""Build a Generator from a configuration and a state_dict, or infer the configuration from tensor shapes."""

import inspect
import logging
import re

import torch

from .errors import CheckpointError
from .generator import Generator
from .mapping import MappingNetwork
from .ops import setup_filter
from .synthesis import SynthesisBlock, SynthesisLayer, SynthesisNetwork

log = logging.getLogger(__name__)

GENERATOR_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")

# Keyword arguments each sub-network accepts; the official ones that do not change the computation on this
# implementation (fp16_channels_last only sets a memory layout) are accepted too.
_MAPPING_KEYS = set(inspect.signature(MappingNetwork).parameters) - {"z_dim", "c_dim", "w_dim", "num_ws"}
_SYNTHESIS_KEYS = (
    (set(inspect.signature(SynthesisNetwork).parameters) | set(inspect.signature(SynthesisBlock).parameters)
     | set(inspect.signature(SynthesisLayer).parameters))
    - {"w_dim", "img_resolution", "img_channels", "block_kwargs", "layer_kwargs", "in_channels", "out_channels",
       "resolution", "is_last", "use_fp16", "up", "channels_last"}
)

_BLOCK_KEY = re.compile(r"^synthesis\.b(\d+)\.")
_MAPPING_FC_KEY = re.compile(r"^mapping\.fc(\d+)\.weight$")


def check_init_kwargs(init_kwargs: dict, source: str) -> dict:
    """Return a copy of the generator's constructor arguments, or raise naming any this code cannot build."""
    kwargs = dict(init_kwargs)
    kwargs.pop("class_name", None)  # present in training configs, not an argument
    missing = [name for name in GENERATOR_ARGS[:5] if name not in kwargs]
    unknown = sorted(set(kwargs) - set(GENERATOR_ARGS))
    mapping_unknown = sorted(set(kwargs.get("mapping_kwargs", {})) - _MAPPING_KEYS)
    synthesis_unknown = sorted(set(kwargs.get("synthesis_kwargs", {})) - _SYNTHESIS_KEYS)
    problems = []
    if missing:
        problems.append(f"missing generator arguments {missing}")
    if unknown:
        problems.append(f"unknown generator arguments {unknown}")
    if mapping_unknown:
        problems.append(f"unknown mapping_kwargs {mapping_unknown}")
    if synthesis_unknown:
        problems.append(f"unknown synthesis_kwargs {synthesis_unknown}")
    if problems:
        raise CheckpointError(
            f"{source}: the recorded generator configuration cannot be built by this implementation "
            f"({'; '.join(problems)}). It supports the StyleGAN2 generator of stylegan2-ada-pytorch; "
            f"StyleGAN3 and other forks are not supported"
        )
    kwargs["mapping_kwargs"] = dict(kwargs.get("mapping_kwargs", {}))
    kwargs["synthesis_kwargs"] = dict(kwargs.get("synthesis_kwargs", {}))
    return kwargs


def build_generator(init_kwargs: dict, state_dict: dict, source: str) -> Generator:
    """Build a Generator from its constructor arguments and load `state_dict` strictly, on the CPU.

    Raises CheckpointError when the configuration cannot be built or its tensors differ from the file's;
    the message then lists the differences and the configuration the file's tensors imply.
    """
    kwargs = check_init_kwargs(init_kwargs, source)

    # Build on the meta device so no time goes into random initial weights, then adopt the file's tensors.
    try:
        with torch.device("meta"):
            G = Generator(**kwargs)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: cannot build the recorded generator configuration: {error}") from None

    expected = G.state_dict()
    problems = _state_dict_differences(expected, state_dict)
    if problems:
        raise CheckpointError(
            f"{source}: the configuration does not match the weights: {'; '.join(problems[:4])}"
            + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
            + f". The tensors fit this configuration: {_describe_inferred(state_dict)}"
        )

    tensors = {name: tensor.detach().to(torch.float32) for name, tensor in state_dict.items()}
    G.load_state_dict(tensors, strict=True, assign=True)
    _check_resample_filters(G, source)
    return G.eval().requires_grad_(False)


def _state_dict_differences(expected: dict, found: dict) -> list:
    problems = []
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    if missing:
        problems.append(f"{len(missing)} tensors missing from the file (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors in the file (first: {unexpected[0]})")
    for name, tensor in expected.items():
        if name in found and isinstance(found[name], torch.Tensor) and found[name].shape != tensor.shape:
            problems.append(f"{name} is {list(found[name].shape)} in the file, expected {list(tensor.shape)}")
    for name, tensor in found.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            problems.append(f"{name} is not a floating-point tensor")
    return problems


def _check_resample_filters(G, source):
    for name, buffer in G.named_buffers():
        if name.endswith("resample_filter") and buffer.shape == (4, 4):
            if not torch.allclose(buffer, setup_filter((1, 3, 3, 1)), atol=1e-6):
                raise CheckpointError(f"{source}: {name} is not the [1, 3, 3, 1] filter this implementation uses")


def _describe_inferred(state_dict):
    try:
        return str(infer_init_kwargs(state_dict, source="the file", warn=False))
    except CheckpointError as error:
        return f"none could be inferred ({error})"


def infer_init_kwargs(state_dict: dict, source: str, warn: bool = True) -> dict:
    """Infer the Generator's constructor arguments from the names and shapes of official state_dict tensors.

    The tensors fix the sizes, layer counts and architecture. Two settings leave no trace in them:
    conv_clamp and num_fp16_res. They are set to None and 0, the values of the original StyleGAN2 config F,
    and a warning says so.
    """
    if any(name.startswith(("synthesis.input.", "synthesis.L0_")) for name in state_dict):
        raise CheckpointError(f"{source} contains a StyleGAN3 generator, which this implementation does not support")
    resolutions = sorted({int(m.group(1)) for name in state_dict if (m := _BLOCK_KEY.match(name))})
    fc_layers = sorted(int(m.group(1)) for name in state_dict if (m := _MAPPING_FC_KEY.match(name)))
    if not resolutions or "synthesis.b4.const" not in state_dict or not fc_layers:
        raise CheckpointError(
            f"{source} does not hold StyleGAN2 generator tensors with the official names "
            f"(synthesis.b4.const, mapping.fc0.weight, ...)"
        )

    mapping_kwargs, z_dim, c_dim, w_dim = _infer_mapping(state_dict, fc_layers)
    synthesis_kwargs, img_resolution, img_channels = _infer_synthesis(state_dict, resolutions, source)
    if warn:
        log.warning(
            "%s records no configuration; inferred it from tensor shapes, assuming conv_clamp=None and "
            "num_fp16_res=0 (the original StyleGAN2 settings), which the tensors cannot show",
            source,
        )
    return dict(
        z_dim=z_dim,
        c_dim=c_dim,
        w_dim=w_dim,
        img_resolution=img_resolution,
        img_channels=img_channels,
        mapping_kwargs=mapping_kwargs,
        synthesis_kwargs=synthesis_kwargs,
    )


def _infer_mapping(state_dict, fc_layers):
    num_layers = len(fc_layers)
    fc0 = state_dict["mapping.fc0.weight"]
    w_dim = int(state_dict[f"mapping.fc{num_layers - 1}.weight"].shape[0])
    c_dim = embed_features = 0
    if "mapping.embed.weight" in state_dict:
        embed_features, c_dim = (int(size) for size in state_dict["mapping.embed.weight"].shape)
    kwargs = dict(num_layers=num_layers)
    if c_dim:
        kwargs["embed_features"] = embed_features
    if num_layers > 1:
        kwargs["layer_features"] = int(fc0.shape[0])
    if "mapping.w_avg" not in state_dict:
        kwargs["w_avg_beta"] = None
    return kwargs, int(fc0.shape[1]) - embed_features, c_dim, w_dim


def _infer_synthesis(state_dict, resolutions, source):
    channels = {res: int(state_dict[f"synthesis.b{res}.conv1.weight"].shape[0]) for res in resolutions}
    img_resolution = resolutions[-1]
    img_channels = int(state_dict[f"synthesis.b{img_resolution}.torgb.weight"].shape[0])

    # Channels follow min(channel_base // R, channel_max); recover both from the per-block counts.
    channel_max = max(channels.values())
    uncapped = [res for res in resolutions if channels[res] < channel_max]
    channel_base = channels[uncapped[0]] * uncapped[0] if uncapped else channel_max * img_resolution
    if any(min(channel_base // res, channel_max) != channels[res] for res in resolutions):
        raise CheckpointError(f"{source}: the block channel counts {channels} do not follow min(base // R, max)")

    if any(f"synthesis.b{res}.skip.weight" in state_dict for res in resolutions):
        raise CheckpointError(f"{source} contains a 'resnet' synthesis network; only 'skip' and 'orig' are supported")
    with_torgb = [res for res in resolutions if f"synthesis.b{res}.torgb.weight" in state_dict]
    kwargs = dict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=0, conv_clamp=None)
    if with_torgb == [img_resolution]:
        kwargs["architecture"] = "orig"
    if "synthesis.b4.conv1.noise_strength" not in state_dict:
        kwargs["use_noise"] = False
    return kwargs, img_resolution, img_channels
