"""Frozen CLIP models on open_clip, and a guide that embeds generator images and prompts with them.

CLIP is the image-text model of Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision". StyleGAN-NADA (Gal et al. 2021) guides the generator with OpenAI's ViT-B/32 and
ViT-B/16 at weights 1:1, which `load_guide()` builds by default. `tiny_clip()` builds a small random model
of the same class for tests and the smoke profile, so nothing here needs the network unless real weights
are missing from the cache.

Weights are read from safetensors files, whose loader never executes code (no pickle).
"""

import contextlib
import dataclasses
import functools
import logging
import math
from pathlib import Path
from typing import Optional, Sequence, Union

import open_clip
import safetensors.torch
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP, get_model_preprocess_cfg, set_model_preprocess_cfg
from safetensors import SafetensorError

from .weights import WeightFile, WeightsError, fetch

logger = logging.getLogger(__name__)

# The StyleGAN-NADA README (Gal et al. 2021) trains with both OpenAI ViT models, losses summed at 1:1.
NADA_MODELS = {"ViT-B/32": 1.0, "ViT-B/16": 1.0}

# open_clip's byte-pair vocabulary size, which the OpenAI text encoders share.
CLIP_VOCAB_SIZE = 49408
CLIP_CONTEXT_LENGTH = 77  # tokens per prompt, including the start and end tokens
MAX_LISTED_KEYS = 10  # key names shown per category in a state-dict mismatch error


@dataclasses.dataclass(frozen=True)
class ClipArchitecture:
    """One CLIP architecture, the weights file that fits it, and the names it is known by."""

    name: str  # canonical name, e.g. "ViT-B/32"
    weights: Union[str, WeightFile, None]  # REGISTRY name or entry of its safetensors file, or None
    embed_dim: int  # size of the joint image-text embedding
    vision_cfg: dict  # keyword arguments of open_clip.CLIPVisionCfg
    text_cfg: dict  # keyword arguments of open_clip.CLIPTextCfg
    quick_gelu: bool = True  # OpenAI trained with x * sigmoid(1.702 x) in place of GELU
    aliases: tuple = ()  # other accepted spellings, matched case-insensitively


# Copied from open_clip's model_configs/ViT-B-32.json and ViT-B-16.json (open_clip_torch 3.3.0); a test
# checks that they still agree. Both use 224 px inputs and a 512-wide text transformer of 12 layers.
ARCHITECTURES = {
    arch.name: arch
    for arch in [
        ClipArchitecture(
            name="ViT-B/32",
            weights="clip-vit-b32",
            embed_dim=512,
            vision_cfg=dict(image_size=224, layers=12, width=768, patch_size=32),
            text_cfg=dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12),
            aliases=("ViT-B-32", "clip-vit-b32"),
        ),
        ClipArchitecture(
            name="ViT-B/16",
            weights="clip-vit-b16",
            embed_dim=512,
            vision_cfg=dict(image_size=224, layers=12, width=768, patch_size=16),
            text_cfg=dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12),
            aliases=("ViT-B-16", "clip-vit-b16"),
        ),
    ]
}


def resolve_architecture(name: Union[str, ClipArchitecture]) -> ClipArchitecture:
    """Look up an architecture by its name or an alias ("ViT-B/32", "ViT-B-32" and "clip-vit-b32" agree)."""
    if isinstance(name, ClipArchitecture):
        return name
    if not isinstance(name, str):
        raise TypeError(f"expected a CLIP model name or a ClipArchitecture, got {type(name).__name__}")

    requested = name.strip().lower()
    for arch in ARCHITECTURES.values():
        if requested in {spelling.lower() for spelling in (arch.name, *arch.aliases)}:
            return arch

    valid = ", ".join(spelling for arch in ARCHITECTURES.values() for spelling in (arch.name, *arch.aliases))
    raise ValueError(f"unknown CLIP model {name!r}. Valid names: {valid}")


# ---------------------------------------------------------------------------------------------------------
# Building and loading models.


def _freeze(model: CLIP) -> CLIP:
    model.eval()
    model.requires_grad_(False)
    return model


def _set_openai_preprocess_cfg(model: CLIP) -> None:
    """Record the input size and OpenAI's normalisation statistics, as open_clip.create_model does."""
    cfg = dict(
        size=model.visual.image_size,
        mode="RGB",
        mean=OPENAI_DATASET_MEAN,  # per-channel statistics of CLIP's training images, [0, 1] scale
        std=OPENAI_DATASET_STD,
        interpolation="bicubic",
        resize_mode="shortest",
        fill_color=0,
    )
    set_model_preprocess_cfg(model, cfg)


def build_clip(arch: ClipArchitecture, seed: int = 0) -> CLIP:
    """Build a randomly initialised CLIP of `arch` on the CPU, without touching the global RNG."""
    # fork_rng restores the global CPU generator afterwards, so loading CLIP never shifts the seeds of the
    # generator samples drawn later.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(
            embed_dim=arch.embed_dim,
            vision_cfg=dict(arch.vision_cfg),
            text_cfg=dict(arch.text_cfg),
            quick_gelu=arch.quick_gelu,
        )
    _set_openai_preprocess_cfg(model)
    return _freeze(model)


def tiny_clip(
    seed: int = 0,
    image_size: int = 32,  # vision input, pixels per side
    embed_dim: int = 32,  # joint embedding size
    width: int = 32,  # transformer width of both towers
    layers: int = 2,  # transformer layers of both towers
    heads: int = 2,  # attention heads of both towers
    patch_size: int = 8,  # pixels per side of one vision token
    device: Union[str, torch.device] = "cpu",
) -> CLIP:
    """Build a small random open_clip CLIP for tests and the smoke profile. Equal seeds give equal weights.

    It uses the real tokenizer (vocabulary 49408, context 77 tokens) and OpenAI's normalisation, so
    tokenization and preprocessing work as for the real models. Its embeddings carry no meaning.
    """
    if width % heads:
        raise ValueError(f"width must be a multiple of heads, got width={width} and heads={heads}")
    arch = ClipArchitecture(
        name="tiny",
        weights=None,
        embed_dim=embed_dim,
        vision_cfg=dict(
            image_size=image_size, layers=layers, width=width, head_width=width // heads,
            patch_size=patch_size,
        ),
        text_cfg=dict(
            context_length=CLIP_CONTEXT_LENGTH, vocab_size=CLIP_VOCAB_SIZE, width=width, heads=heads,
            layers=layers,
        ),
    )
    return build_clip(arch, seed=seed).to(device)


def load_clip(
    name: Union[str, ClipArchitecture],
    device: Union[str, torch.device] = "cpu",
    weights_path: Union[str, Path, None] = None,
    offline: Optional[bool] = None,
    half: bool = False,
    cache_dir: Union[str, Path, None] = None,
) -> CLIP:
    """Load a frozen pretrained CLIP model in eval mode.

    name: "ViT-B/32" or "ViT-B/16" (or an alias, see resolve_architecture), or a ClipArchitecture.
    weights_path: a safetensors file; None fetches the architecture's registry entry into the cache.
    offline, cache_dir: passed to utils.weights.fetch (offline None reads $SG2_OFFLINE).
    half: cast the weights to float16, on CUDA only; on other devices the model stays float32.

    Raises WeightsError when the file is missing offline, unreadable, or does not match the architecture.
    """
    arch = resolve_architecture(name)
    device = torch.device(device)

    # Find the file first, so a missing file fails before the model is built.
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"CLIP weights file {path} not found. Pass an existing safetensors file")
    elif arch.weights is None:
        raise ValueError(f"CLIP architecture {arch.name!r} has no registry entry; pass weights_path")
    else:
        path = fetch(arch.weights, cache_dir=cache_dir, offline=offline)

    state_dict = _read_safetensors(path, arch)
    model = build_clip(arch)
    _match_logit_scale_shape(model, state_dict)
    _check_state_dict(model, state_dict, path, arch)
    # The file may store float16 tensors; load_state_dict copies them into the float32 parameters.
    model.load_state_dict(state_dict, strict=True)
    model = model.to(device)

    if half and device.type == "cuda":
        model = model.half()
    elif half:
        logger.info("half=True ignored for %s on %s: CLIP runs in float32 off CUDA", arch.name, device)
    return model


def _read_safetensors(path: Path, arch: ClipArchitecture) -> dict:
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except SafetensorError as error:
        raise WeightsError(
            f"{path} is not a readable safetensors file ({error}). Delete it and download the "
            f"{arch.name} weights again (python -m utils.weights {_weights_name(arch)})"
        ) from None


def _match_logit_scale_shape(model: CLIP, state_dict: dict) -> None:
    """Reshape a one-element logit_scale to the model's shape, the one transform the loader applies.

    open_clip models keep it as a scalar, or as [1] with nonscalar_logit_scale=True, and open_clip's own
    load_checkpoint reshapes it in the same way.
    """
    stored = state_dict.get("logit_scale")
    if stored is not None and stored.numel() == 1 and stored.shape != model.logit_scale.shape:
        state_dict["logit_scale"] = stored.reshape(model.logit_scale.shape)


def _weights_name(arch: ClipArchitecture) -> str:
    return arch.weights.name if isinstance(arch.weights, WeightFile) else arch.weights


def _check_state_dict(model: CLIP, state_dict: dict, path: Path, arch: ClipArchitecture) -> None:
    """Raise WeightsError listing every missing key, unexpected key and shape mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: file {list(state_dict[key].shape)}, model {list(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if state_dict[key].shape != expected[key].shape
    ]
    if not (missing or unexpected or mismatched):
        return

    categories = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": mismatched}
    problems = [f"{len(items)} {label}: {_list_some(items)}" for label, items in categories.items() if items]
    raise WeightsError(
        f"{path} does not match the open_clip {arch.name} architecture: " + "; ".join(problems) + ". "
        f"Use open_clip's safetensors file of OpenAI's {arch.name} weights "
        f"({_weights_name(arch)} in the weights registry)"
    )


def _list_some(items: list) -> str:
    listed = ", ".join(items[:MAX_LISTED_KEYS])
    hidden = len(items) - MAX_LISTED_KEYS
    return listed + (f" and {hidden} more" if hidden > 0 else "")


# ---------------------------------------------------------------------------------------------------------
# Tokens.


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> open_clip.SimpleTokenizer:
    """Return open_clip's CLIP tokenizer, whose BPE vocabulary ships inside the package (works offline)."""
    return open_clip.SimpleTokenizer()


def count_tokens(text: str) -> int:
    """Count the tokens CLIP's text encoder receives for `text`, including the start and end tokens."""
    return len(get_tokenizer().encode(text)) + 2


def tokenize(texts: Sequence[str], context_length: int = CLIP_CONTEXT_LENGTH) -> torch.Tensor:
    """Tokenize texts into a LongTensor [T, context_length], raising ValueError for a text that does not fit.

    open_clip's tokenizer cuts long texts silently, so this one counts first and never truncates.
    """
    tokenizer = get_tokenizer()
    tokens = torch.zeros(len(texts), context_length, dtype=torch.long)  # 0 is the padding token
    for row, text in enumerate(texts):
        ids = [tokenizer.sot_token_id, *tokenizer.encode(text), tokenizer.eot_token_id]
        if len(ids) > context_length:
            raise ValueError(
                f"text {text!r} is {len(ids)} tokens long including the start and end tokens, but CLIP's "
                f"context is {context_length} tokens. "
                f"Shorten it by at least {len(ids) - context_length} tokens"
            )
        tokens[row, : len(ids)] = torch.tensor(ids)
    return tokens


# ---------------------------------------------------------------------------------------------------------
# Image preprocessing.


def preprocess_images(img: torch.Tensor, model: CLIP) -> torch.Tensor:
    """Turn generator images [N, C, H, W] in [-1, 1] into the normalised [N, 3, S, S] input of `model`.

    Every step is differentiable and runs on the image's device. The steps map to [0, 1], repeat a gray
    channel three times, and resize with antialiased bicubic filtering to the model's input size. Then they
    normalise with the mean and std in the model's preprocess config. Values outside [-1, 1] are not
    clamped, so their gradients stay nonzero.
    """
    if not isinstance(img, torch.Tensor) or img.ndim != 4 or img.shape[1] not in (1, 3):
        shape = list(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(f"expected generator images [N, C, H, W] with C = 1 or 3, got {shape}")
    if img.shape[2] != img.shape[3]:
        raise ValueError(
            f"CLIP guidance expects square images, got {img.shape[2]}x{img.shape[3]} (H x W). "
            f"Crop the images to a square first"
        )
    size, mean, std = _preprocess_settings(model)

    x = (img.float() + 1) / 2  # [N, C, H, W] in [0, 1]
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)

    if tuple(x.shape[2:]) != size:
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)

    mean = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std  # [N, 3, S, S]


def _preprocess_settings(model: CLIP):
    """Return the input size (H, W) and the per-channel mean and std from the model's preprocess config."""
    cfg = get_model_preprocess_cfg(model)
    if "mean" not in cfg or "std" not in cfg or "size" not in cfg:
        raise ValueError(
            f"the CLIP model has no mean, std or size in its preprocess config (found {sorted(cfg)}). "
            f"Build it with load_clip, tiny_clip or open_clip.create_model, which set them"
        )
    size = cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    return size, tuple(cfg["mean"]), tuple(cfg["std"])


# ---------------------------------------------------------------------------------------------------------
# The guide.


class ClipGuide:
    """One or several frozen CLIP models with a loss weight each; embeds images and texts with all of them.

    Every method returns one result per model, in the order of `models`. Combine per-model losses with
    utils.losses.sum_over_models(loss, guide.weights, ...).
    """

    def __init__(
        self,
        models: Sequence[CLIP],  # open_clip CLIP models, all on one device
        weights: Optional[Sequence[float]] = None,  # loss weight per model; None gives 1 each
        names: Optional[Sequence[str]] = None,  # labels for logs; None gives "clip0", "clip1", ...
        # True runs the models under float16 autocast on CUDA (ignored on other devices). With False, a
        # caller's own torch.autocast context still applies, as in an AMP training step.
        autocast: bool = False,
    ):
        self.models = list(models)
        if not self.models:
            raise ValueError("ClipGuide needs at least one CLIP model")
        self.weights = [1.0] * len(self.models) if weights is None else [float(w) for w in weights]
        self.names = [f"clip{i}" for i in range(len(self.models))] if names is None else list(names)
        self.autocast = autocast
        self._check_arguments()

        # The guide only reads CLIP, so gradients reach the images but never the CLIP weights.
        for model in self.models:
            _freeze(model)

    def _check_arguments(self):
        count = len(self.models)
        if len(self.weights) != count or len(self.names) != count:
            raise ValueError(
                f"got {count} models, {len(self.weights)} weights and {len(self.names)} names. "
                f"Pass one weight and one name per model"
            )
        if any(not math.isfinite(w) or w < 0 for w in self.weights) or not any(self.weights):
            raise ValueError(f"weights must be finite and >= 0 with at least one > 0, got {self.weights}")
        devices = {_model_device(model) for model in self.models}
        if len(devices) != 1:
            raise ValueError(f"all CLIP models must be on one device, got {sorted(map(str, devices))}")

    @property
    def device(self) -> torch.device:
        """The device of the models; inputs must be on it."""
        return _model_device(self.models[0])

    @property
    def context_lengths(self) -> list:
        """Tokens per prompt for each model, including the start and end tokens."""
        return [model.context_length for model in self.models]

    def encode_images(self, img: torch.Tensor) -> list:
        """Embed generator images [N, C, H, W] in [-1, 1] into one L2-normalised [N, D] tensor per model.

        Gradients flow back to `img`. The result is float32 even when the model runs in float16.
        """
        if isinstance(img, torch.Tensor) and img.device != self.device:
            raise ValueError(
                f"images are on {img.device} but the CLIP models are on {self.device}. Move the images there"
            )

        embeddings = []
        for model in self.models:
            pixels = preprocess_images(img, model)  # [N, 3, S, S]
            # A half=True model has float16 parameters, and conv1 needs its input in the same dtype.
            pixels = pixels.to(_model_dtype(model))
            with self._autocast():
                features = model.encode_image(pixels)  # [N, D]
            embeddings.append(F.normalize(features.float(), dim=-1))
        return embeddings

    def encode_texts(self, texts: Sequence[str]) -> list:
        """Embed texts into one L2-normalised [T, D] tensor per model.

        Raises ValueError for a text longer than a model's context, instead of truncating it.
        """
        if isinstance(texts, str):
            raise TypeError("encode_texts expects a list of strings; wrap a single prompt in a list")

        embeddings = []
        for model in self.models:
            tokens = tokenize(texts, model.context_length).to(self.device)  # [T, context_length]
            with self._autocast():
                features = model.encode_text(tokens)  # [T, D]
            embeddings.append(F.normalize(features.float(), dim=-1))
        return embeddings

    def _autocast(self):
        # NOTE: the CUDA float16 path (autocast and half=True weights) has not been run in this repository's
        # tests, which run on the CPU only.
        if self.autocast and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()


def _model_device(model: CLIP) -> torch.device:
    return next(model.parameters()).device


def _model_dtype(model: CLIP) -> torch.dtype:
    return model.visual.conv1.weight.dtype


def load_guide(
    models: Optional[dict] = None,
    device: Union[str, torch.device] = "cpu",
    offline: Optional[bool] = None,
    half: bool = False,
    cache_dir: Union[str, Path, None] = None,
) -> ClipGuide:
    """Load pretrained CLIP models into a ClipGuide.

    models: CLIP model names mapped to loss weights; None means NADA_MODELS (ViT-B/32 and ViT-B/16 at 1:1).
    device, offline, half, cache_dir: passed to load_clip for each model.
    """
    models = dict(NADA_MODELS if models is None else models)
    archs = [resolve_architecture(name) for name in models]  # check every name before the first load
    loaded = [
        load_clip(arch, device=device, offline=offline, half=half, cache_dir=cache_dir) for arch in archs
    ]
    return ClipGuide(loaded, weights=list(models.values()), names=[arch.name for arch in archs])
