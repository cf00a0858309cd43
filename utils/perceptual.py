"""LPIPS perceptual distance (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric") on the lpips package, VGG16 variant, with the backbone loaded through utils.weights.

The lpips package (0.1.4) ships its linear-layer weights inside the package, but builds its VGG16 trunk
from torchvision, which would download the ImageNet weights at construction time. Here the trunk is built
random (pnet_rand=True) and then filled from the registry file "vgg16", so nothing downloads behind the
registry's back, and offline mode (SG2_OFFLINE=1) applies.
"""

import pickle
import warnings
from pathlib import Path
from typing import Optional, Union

import lpips
import torch
import torch.nn.functional as F

from .weights import WeightsError, fetch

LPIPS_NET = "vgg"  # the official stylegan2-ada-pytorch projector measures LPIPS with a VGG16
LPIPS_VERSION = "0.1"
PROJECTOR_RESOLUTION = 256  # the official projector area-downsamples larger images to 256x256 for VGG16

# Prefix of the classifier weights in torchvision's vgg16 state_dict. LPIPS uses only the convolutional
# `features`, so these keys are skipped.
_CLASSIFIER_PREFIX = "classifier."


def packaged_linear_weights_path() -> Path:
    """Return the path of the linear-layer weights that the lpips package ships for the VGG variant."""
    return Path(lpips.__file__).resolve().parent / "weights" / f"v{LPIPS_VERSION}" / f"{LPIPS_NET}.pth"


def load_lpips(
    device: Union[str, torch.device] = "cpu",
    offline: Optional[bool] = None,
    pretrained: bool = True,
    cache_dir: Union[str, Path, None] = None,
) -> lpips.LPIPS:
    """Build LPIPS-VGG16, frozen and in eval mode, with the ImageNet backbone from the registry.

    device: where the network lives.
    offline: passed to utils.weights.fetch. None reads $SG2_OFFLINE.
    pretrained: False leaves the backbone random (seed 0) and downloads nothing, as random_lpips does.
    cache_dir: folder of the weights cache, None for utils.weights.weights_dir().

    The linear layers always come from the file inside the lpips package. Raises WeightsError when the
    backbone file is missing offline, cannot be downloaded, or does not contain torchvision's vgg16 keys.
    """
    # Fetch before building, so a missing file fails before the slow construction.
    path = fetch("vgg16", cache_dir=cache_dir, offline=offline) if pretrained else None
    model = _build_lpips(seed=0)
    if path is not None:
        load_vgg16_backbone(model, path)
    return model.to(device)


def random_lpips(seed: int = 0, device: Union[str, torch.device] = "cpu") -> lpips.LPIPS:
    """Build LPIPS-VGG16 with a random backbone (no download), for tests and the smoke profile.

    The same seed gives the same network, and the global torch RNG is left as it was. The linear layers
    are the packaged ones, which are non-negative, so the distance stays >= 0 and is 0 for equal images.
    """
    return _build_lpips(seed).to(device)


def _build_lpips(seed: int) -> lpips.LPIPS:
    """Build LPIPS-VGG16 with a random backbone drawn from `seed` and the packaged linear layers."""
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        # lpips 0.1.4 calls torchvision's vgg16(pretrained=False), which warns that the argument is
        # deprecated (torchvision >= 0.13). The warning is about lpips's call, not ours.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.")
        # pretrained=False skips lpips's own torch.load of the linear weights, which does not pass
        # weights_only, so they are loaded below with weights_only=True instead.
        model = lpips.LPIPS(
            net=LPIPS_NET, version=LPIPS_VERSION, pretrained=False, pnet_rand=True, verbose=False
        )

    linear_weights = _load_state_dict(packaged_linear_weights_path())
    targets = {name: tensor for name, tensor in model.state_dict().items() if name.startswith("lin")}
    # state_dict() lists each linear layer twice, as linK.* and as lins.K.*, and both names share one tensor.
    targets = {name: tensor for name, tensor in targets.items() if not name.startswith("lins.")}
    _copy_exact(targets, linear_weights, packaged_linear_weights_path())
    return model.eval().requires_grad_(False)


def load_vgg16_backbone(model: lpips.LPIPS, path: Union[str, Path]) -> None:
    """Copy torchvision vgg16 weights (a state_dict file) into the VGG16 slices of an LPIPS model.

    torchvision names the convolutions features.N.weight and features.N.bias, and lpips keeps the same
    layer index N inside its five slices, as net.sliceK.N.weight. The classifier.* entries are skipped.
    Every other key must match in name and shape, or WeightsError lists the differences.
    """
    path = Path(path)
    state = _load_state_dict(path)
    features = {name: tensor for name, tensor in state.items() if not name.startswith(_CLASSIFIER_PREFIX)}

    # Map each backbone tensor of the LPIPS model to its torchvision name:
    # net.sliceK.N.weight -> features.N.weight.
    targets = {}
    for name, tensor in model.net.state_dict().items():
        _slice, index, kind = name.split(".")
        targets[f"features.{index}.{kind}"] = tensor
    _copy_exact(targets, features, path)


def _load_state_dict(path: Path) -> dict:
    """Load a file of named tensors with weights_only=True, so the file cannot run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as error:
        raise WeightsError(f"cannot read {path} as a PyTorch state_dict: {error}") from None
    except pickle.UnpicklingError as error:
        # weights_only=True raises this for pickles of classes other than tensors and containers.
        raise WeightsError(
            f"{path} is not a plain state_dict of tensors ({type(error).__name__}: {error}). "
            f"Expected a file that torch.save(model.state_dict(), path) writes"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise WeightsError(f"{path} contains a {type(state).__name__}, expected a state_dict of named tensors")
    return state


def _copy_exact(targets: dict, tensors: dict, path: Path) -> None:
    """Copy tensors[name] into targets[name] for every name, after checking names and shapes match exactly."""
    missing = sorted(set(targets) - set(tensors))
    unexpected = sorted(set(tensors) - set(targets))
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not match the expected keys: missing {_preview(missing)}, "
            f"unexpected {_preview(unexpected)}. Expected the file torchvision or lpips publishes"
        )

    wrong_shapes = [
        f"{name} {list(tensors[name].shape)} (expected {list(target.shape)})"
        for name, target in targets.items()
        if tensors[name].shape != target.shape
    ]
    if wrong_shapes:
        raise WeightsError(f"{path} has tensors of the wrong shape: {_preview(wrong_shapes)}")

    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(tensors[name])


def _preview(names: list, limit: int = 6) -> str:
    """Return up to `limit` names joined by commas, with a count of the rest."""
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def lpips_distance(
    lpips_model: lpips.LPIPS,
    img_a: torch.Tensor,
    img_b: torch.Tensor,
    resize_to: Optional[int] = PROJECTOR_RESOLUTION,
) -> torch.Tensor:
    """Compute the LPIPS distance [N] between generator images [N, C, H, W] in [-1, 1].

    Images larger than `resize_to` are area-downsampled to at most resize_to x resize_to first, as the
    official projector does. None keeps the input size. One-channel images are repeated to RGB.
    Gradients flow to both inputs.
    """
    for name, img in (("img_a", img_a), ("img_b", img_b)):
        if not isinstance(img, torch.Tensor) or img.ndim != 4 or img.shape[1] not in (1, 3):
            shape = list(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"{name} must be images [N, C, H, W] with C = 1 or 3, got {shape}")
    if img_a.shape != img_b.shape:
        raise ValueError(f"img_a {list(img_a.shape)} and img_b {list(img_b.shape)} must have the same shape")

    count, channels, height, width = img_a.shape
    img_a = img_a.to(torch.float32)
    img_b = img_b.to(torch.float32)
    if resize_to is not None and (height > resize_to or width > resize_to):
        size = (min(height, resize_to), min(width, resize_to))
        img_a = F.interpolate(img_a, size=size, mode="area")
        img_b = F.interpolate(img_b, size=size, mode="area")
    if channels == 1:
        img_a = img_a.expand(-1, 3, -1, -1)
        img_b = img_b.expand(-1, 3, -1, -1)

    return lpips_model(img_a, img_b).reshape(count)  # [N, 1, 1, 1] -> [N]
