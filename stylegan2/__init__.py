"""A pure-PyTorch StyleGAN2 generator that loads the official stylegan2-ada-pytorch network pickles safely.

Public API:
    Generator            the generator; same constructor and state_dict names as the official G_ema.
    load_generator       load an official .pkl or one of this project's .pt files, without running code.
    save_generator       write this project's .pt format (weights, configuration and metadata).
    CheckpointError      raised for every unreadable, foreign or mismatching checkpoint.
    layer_groups         named parameter groups (mapping, bR, bR.conv0, bR.torgb, ...) for freezing.
"""

from .build import infer_init_kwargs
from .checkpoint import load_generator, load_official_pickle, load_project_checkpoint, save_generator, sniff_format
from .errors import CheckpointError
from .generator import Generator
from .groups import LayerGroup, group_table, layer_groups, layer_ws_indices
from .mapping import FullyConnectedLayer, MappingNetwork
from .synthesis import SynthesisBlock, SynthesisLayer, SynthesisNetwork, ToRGBLayer

__all__ = [
    "Generator",
    "load_generator",
    "save_generator",
    "load_official_pickle",
    "load_project_checkpoint",
    "sniff_format",
    "infer_init_kwargs",
    "CheckpointError",
    "LayerGroup",
    "layer_groups",
    "layer_ws_indices",
    "group_table",
    "MappingNetwork",
    "SynthesisNetwork",
    "SynthesisBlock",
    "SynthesisLayer",
    "ToRGBLayer",
    "FullyConnectedLayer",
]
