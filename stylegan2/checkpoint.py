"""Load and save generator checkpoints: official NVlabs `.pkl` files and this project's `.pt` files.

Nothing is executed from a checkpoint. Official pickles go through the allow-list unpickler of
safe_pickle.py; `.pt` files through `torch.load(weights_only=True)`. The file's content, not its extension,
decides how it is read, and every failure is a CheckpointError that names the file and the next step.
"""

import io
import json
import logging
import pickle
import pickletools
import zipfile
from pathlib import Path

import torch

from .build import build_generator, infer_init_kwargs
from .errors import CheckpointError
from .fileio import atomic_path
from .generator import Generator
from .safe_pickle import (
    PersistentRecord,
    TFNetworkStub,
    iter_records,
    plain,
    record_state_dict,
    rejection_detail,
    restricted_load,
)

log = logging.getLogger(__name__)

# Tag and version stored in this project's generator files.
FORMAT_NAME = "stylegan2-generator"
FORMAT_VERSION = 1

# First bytes of the legacy (pre-zip) torch.save stream: pickle protocol 2, then its magic number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def sniff_format(path) -> str:
    """Classify a file by its first bytes: "zip" (torch.save), "legacy-torch", "pickle", "empty", "html" or
    "unknown". Raises CheckpointError if the path is missing or not a file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    with open(path, "rb") as file:
        head = file.read(64)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return "legacy-torch"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html", b"<?xml")):
        return "html"
    return "unknown"


def load_generator(path, device="cpu") -> Generator:
    """Load a generator from an official NVlabs `.pkl` or one of this project's `.pt` files.

    Returns the generator in eval mode with requires_grad off, on `device`. Its `metadata` attribute
    contains the metadata stored with a `.pt` file (empty for other files). Raises CheckpointError for any file
    that is missing, truncated, of another format, unsafe, or whose configuration does not fit its weights.
    """
    device = resolve_device(device)
    kind = sniff_format(path)
    if kind == "pickle":
        G = load_official_pickle(path)
    elif kind in ("zip", "legacy-torch"):
        G = load_project_checkpoint(path)
    else:
        raise CheckpointError(_unreadable_message(path, kind))
    return G.to(device)


def load_official_pickle(path) -> Generator:
    """Load G_ema from an official stylegan2-ada-pytorch network pickle, on the CPU, without running code."""
    path = Path(path)
    kind = sniff_format(path)
    if kind in ("zip", "legacy-torch"):
        raise CheckpointError(
            f"{path} is a PyTorch checkpoint (torch.save), not an NVlabs network pickle; "
            f"load it with stylegan2.load_generator({str(path)!r})"
        )
    if kind != "pickle":
        raise CheckpointError(_unreadable_message(path, kind))

    with open(path, "rb") as file:
        try:
            data = restricted_load(file)
        except CheckpointError as error:
            raise CheckpointError(f"{path}: {error}") from None
        except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, MemoryError) as error:
            raise CheckpointError(
                f"{path} is truncated or corrupt ({type(error).__name__}: {error}); download it again"
            ) from None

    record = _generator_record(data, path)
    state_dict = record_state_dict(record)
    if "_init_kwargs" in record.state:
        init_kwargs = _recorded_init_kwargs(record, path)
    else:
        init_kwargs = infer_init_kwargs(state_dict, source=str(path))
    G = build_generator(init_kwargs, state_dict, source=str(path))
    G.metadata = {}
    return G


def _generator_record(data, path) -> PersistentRecord:
    """Pick the generator used for sampling (G_ema) out of an unpickled network pickle."""
    if isinstance(data, tuple) and data and all(isinstance(item, TFNetworkStub) for item in data):
        raise CheckpointError(
            f"{path} is a TensorFlow-era NVlabs pickle (stylegan2 or stylegan2-ada for TensorFlow). Convert it "
            f"once with legacy.py of NVlabs/stylegan2-ada-pytorch (python legacy.py --source={path.name} "
            f"--dest=converted.pkl) and load the converted .pkl"
        )
    if isinstance(data, PersistentRecord):
        record = data
    elif isinstance(data, dict) and isinstance(data.get("G_ema"), PersistentRecord):
        record = data["G_ema"]
    elif isinstance(data, dict):
        keys = sorted(str(key) for key in data)[:8]
        raise CheckpointError(f"{path} is a pickle but not a StyleGAN2 network pickle: no G_ema among its keys {keys}")
    else:
        raise CheckpointError(f"{path} is a pickle of a {type(data).__name__}, not a StyleGAN2 network pickle")

    if record.class_name != "Generator":
        raise CheckpointError(f"{path}: G_ema is a {record.class_name!r}, expected a 'Generator'")
    return record


def _recorded_init_kwargs(record, path) -> dict:
    """The generator's constructor arguments, from its _init_kwargs and the attributes of its layers."""
    kwargs = plain(record.state.get("_init_kwargs") or {})
    args = plain(record.state.get("_init_args") or ())
    if len(args) > 5:
        raise CheckpointError(f"{path}: G_ema was built with {len(args)} positional arguments, expected at most 5")
    kwargs.update(zip(("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"), args))
    kwargs["synthesis_kwargs"] = dict(kwargs.get("synthesis_kwargs") or {})

    # The layers' own attributes record what was really built; legacy.py --force-fp16, for one, rebuilds
    # networks with other fp16 and clamp settings than the kwargs recorded at first.
    fp16_blocks = 0
    for name, child in iter_records(record):
        if child.class_name == "SynthesisBlock" and child.state.get("use_fp16"):
            fp16_blocks += 1
        if child.class_name == "SynthesisLayer" and "conv_clamp" in child.state:
            kwargs["synthesis_kwargs"]["conv_clamp"] = plain(child.state["conv_clamp"])
    synthesis = kwargs["synthesis_kwargs"]
    if fp16_blocks != _expected_fp16_blocks(kwargs):
        log.info("%s: using num_fp16_res=%d from the blocks' use_fp16 flags", path, fp16_blocks)
        synthesis["num_fp16_res"] = fp16_blocks
    return kwargs


def _expected_fp16_blocks(kwargs) -> int:
    resolution = int(kwargs.get("img_resolution") or 4)
    num_fp16_res = int(kwargs["synthesis_kwargs"].get("num_fp16_res", 0))
    log2 = max(resolution.bit_length() - 1, 2)
    first = max(2 ** (log2 + 1 - num_fp16_res), 8)
    return sum(1 for k in range(2, log2 + 1) if 2**k >= first)


def load_project_checkpoint(path) -> Generator:
    """Load a generator from a `.pt` file of this project (or a bare state_dict with the official names)."""
    path = Path(path)
    kind = sniff_format(path)
    if kind == "pickle":
        raise CheckpointError(
            f"{path} is a plain pickle (an NVlabs network .pkl?), not a torch.save checkpoint; "
            f"load it with stylegan2.load_generator({str(path)!r})"
        )
    if kind not in ("zip", "legacy-torch"):
        raise CheckpointError(_unreadable_message(path, kind))

    data = _torch_load(path)
    if isinstance(data, dict) and data.get("format") == FORMAT_NAME:
        return _generator_from_project_file(data, path)
    if isinstance(data, dict) and "g_ema" in data:
        raise CheckpointError(_ROSINALITY_MESSAGE.format(path=path))
    if isinstance(data, dict) and "synthesis.b4.const" in data:
        G = build_generator(infer_init_kwargs(data, source=str(path)), data, source=str(path))
        G.metadata = {}
        return G
    keys = sorted(str(key) for key in data)[:8] if isinstance(data, dict) else type(data).__name__
    raise CheckpointError(
        f"{path} is a PyTorch checkpoint but contains no StyleGAN2 generator this project can read (found {keys})"
    )


_ROSINALITY_MESSAGE = (
    "{path} is a rosinality/stylegan2-pytorch checkpoint (it has a 'g_ema' entry with that project's layer "
    "names). This loader reads official NVlabs .pkl files and this project's .pt files; use the official "
    "ffhq.pkl instead (python -m utils.weights ffhq downloads it)"
)


def _torch_load(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = _zip_pickle_globals(path)
        if "argparse.Namespace" in found and "g_ema" in found:
            raise CheckpointError(_ROSINALITY_MESSAGE.format(path=path)) from None
        raise CheckpointError(
            f"rejected {path}: it needs Python objects beyond tensors and plain containers "
            f"({rejection_detail(error)}). Nothing from the file was run"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(error).__name__}: {str(error).split('. ')[0]}); "
            f"write or download it again"
        ) from None


def _zip_pickle_globals(path) -> set:
    """Names of the globals and strings in a torch zip file's pickle, read without unpickling it."""
    found = set()
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(item for item in archive.namelist() if item.endswith("data.pkl"))
            data = archive.read(name)
        strings = []
        for opcode, argument, _ in pickletools.genops(io.BytesIO(data)):
            if isinstance(argument, str):
                strings.append(argument)
                found.add(argument)
            if opcode.name == "GLOBAL":
                found.add(argument.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.add(f"{strings[-2]}.{strings[-1]}")
    except (zipfile.BadZipFile, StopIteration, ValueError, OSError):
        pass
    return found


def _generator_from_project_file(data, path) -> Generator:
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has {FORMAT_NAME} format version {version!r}; this code reads version {FORMAT_VERSION}. "
            f"Update the code (git pull) or re-export the generator"
        )
    state_dict = data.get("state_dict")
    init_kwargs = data.get("init_kwargs")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path} has no state_dict entry; the file is damaged, write it again")
    if not isinstance(init_kwargs, dict):
        init_kwargs = infer_init_kwargs(state_dict, source=str(path))
    G = build_generator(init_kwargs, state_dict, source=str(path))
    G.metadata = dict(data.get("metadata") or {})
    return G


def save_generator(G: Generator, path, metadata: dict = None) -> Path:
    """Write G's configuration, weights and `metadata` (JSON-serialisable) to `path`, atomically."""
    path = Path(path)
    metadata = dict(metadata or {})
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as error:
        raise ValueError(f"metadata must be JSON-serialisable (str, numbers, lists, dicts): {error}") from None

    state_dict = {name: tensor.detach().to("cpu").clone() for name, tensor in G.state_dict().items()}
    payload = dict(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        init_kwargs=G.init_kwargs,
        state_dict=state_dict,
        metadata=metadata,
    )
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)
    return path


def resolve_device(device) -> torch.device:
    """Turn "cpu", "cuda", "cuda:1", "mps" or a torch.device into a usable torch.device, or raise."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"invalid device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was requested but CUDA is not available here; use device='cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was requested but MPS is not available here; use device='cpu'")
    return device


def _unreadable_message(path, kind) -> str:
    if kind == "empty":
        return f"{path} is empty (0 bytes); an interrupted download or write leaves such a file. Fetch it again"
    if kind == "html":
        return (
            f"{path} is an HTML page, not a checkpoint: the download returned an error or login page. "
            f"Delete it and download the file again"
        )
    return (
        f"{path} is not a checkpoint this project can read: expected an NVlabs network pickle (.pkl) or a "
        f"torch.save file (.pt)"
    )
