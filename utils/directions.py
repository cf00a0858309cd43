"""CLIP-space directions from a source domain to a target domain, given by prompts or by reference images.

StyleGAN-NADA (Gal et al. 2021) moves the generator so that the change of each image's CLIP embedding
points along such a direction (utils.losses.directional_loss). Every function returns one unit vector [D]
per model of the guide, in the guide's order, and computes it without gradients.
"""

from pathlib import Path
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .clip_model import ClipGuide, count_tokens
from .images import from_pil

# A selection of the 80 ImageNet prompt templates of the CLIP paper (Radford et al. 2021), which the
# authors averaged as a prompt ensemble; StyleGAN-NADA averages its prompts over the same list.
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a pixelated photo of the {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a {} in a video game.",
    "a doodle of a {}.",
    "a sketch of a {}.",
    "a cartoon {}.",
    "art of the {}.",
    "a photo of a {}.",
)

# Below this norm, two mean embeddings count as equal and their difference has no direction.
MIN_DIRECTION_NORM = 1e-6


def fill_templates(text: str, templates: Sequence[str] = IMAGENET_TEMPLATES) -> list:
    """Fill each template's "{}" with `text` and return the prompts.

    Raises ValueError for an empty prompt and for a template without exactly one "{}".
    """
    if not isinstance(text, str):
        raise TypeError(f"a prompt must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"the prompt is empty ({text!r}). Describe the domain, for example 'anime painting'")
    if isinstance(templates, str) or not templates:
        raise ValueError(
            f"templates must be a non-empty list of strings with one '{{}}' each, got {templates!r}"
        )

    filled = []
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"template {template!r} must contain '{{}}' exactly once, where the prompt goes")
        filled.append(template.replace("{}", text.strip()))
    return filled


def check_prompt(guide: ClipGuide, text: str, templates: Sequence[str] = IMAGENET_TEMPLATES) -> list:
    """Fill the templates with `text`, check that each result fits every model's context, and return them.

    Raises ValueError for an empty prompt, and for a prompt whose longest filled template has more tokens
    (start and end tokens included) than the smallest context of the guide's models, 77 for OpenAI's CLIP.
    """
    filled = fill_templates(text, templates)
    counts = [count_tokens(prompt) for prompt in filled]
    longest = max(range(len(filled)), key=counts.__getitem__)
    limit = min(guide.context_lengths)
    if counts[longest] > limit:
        raise ValueError(
            f"prompt {text!r} is {counts[longest]} tokens long in the template {templates[longest]!r}, "
            f"including the start and end tokens, but CLIP's context is {limit} tokens. "
            f"Shorten the prompt by at least {counts[longest] - limit} tokens"
        )
    return filled


@torch.no_grad()
def embed_text(guide: ClipGuide, text: str, templates: Sequence[str] = IMAGENET_TEMPLATES) -> list:
    """Embed a prompt as the average over templates, one unit vector [D] per model.

    Each filled template is embedded and L2-normalised, the embeddings are averaged, and the mean is
    normalised again (the prompt ensembling of the CLIP paper).
    """
    filled = check_prompt(guide, text, templates)
    per_template = guide.encode_texts(filled)  # one [T, D] per model, rows of unit length
    return [F.normalize(embeddings.mean(dim=0), dim=-1) for embeddings in per_template]


def text_direction(
    guide: ClipGuide, source_text: str, target_text: str, templates: Sequence[str] = IMAGENET_TEMPLATES
) -> list:
    """Return the unit direction E_T(target) - E_T(source) per model, e.g. "photo" to "anime painting"."""
    source = embed_text(guide, source_text, templates)
    target = embed_text(guide, target_text, templates)
    return [
        _unit_difference(t, s, guide.names[i], f"prompts {source_text!r} and {target_text!r}")
        for i, (t, s) in enumerate(zip(target, source))
    ]


@torch.no_grad()
def embed_images(guide: ClipGuide, images) -> list:
    """Embed images into their mean embedding, one unit vector [D] per model.

    images: a tensor [N, C, H, W] in [-1, 1], or a list of file paths or PIL images (center-cropped to a
    square). The mean is taken over unit embeddings and normalised again, as embed_text does over templates.
    """
    batches = _image_batches(images, guide.device)
    per_batch = [guide.encode_images(batch) for batch in batches]  # per batch: one [n, D] per model
    means = []
    for model_index in range(len(guide.models)):
        embeddings = torch.cat([embedded[model_index] for embedded in per_batch])  # [N, D]
        means.append(F.normalize(embeddings.mean(dim=0), dim=-1))
    return means


@torch.no_grad()
def image_direction(guide: ClipGuide, target_images, source_images) -> list:
    """Return the unit direction from the mean source-image embedding to the mean target-image embedding.

    target_images: reference images of the target domain, as a tensor [N, C, H, W] in [-1, 1] or a list
        of file paths or PIL images (center-cropped to a square, since CLIP guidance needs square inputs).
    source_images: images of the source generator, in the same forms.
    Both means are computed by embed_images.
    """
    target = embed_images(guide, target_images)
    source = embed_images(guide, source_images)
    return [
        _unit_difference(t, s, guide.names[i], "the target and source images")
        for i, (t, s) in enumerate(zip(target, source))
    ]


def _unit_difference(target: torch.Tensor, source: torch.Tensor, model_name: str, inputs: str):
    difference = target - source  # [D]
    norm = difference.norm()
    if norm < MIN_DIRECTION_NORM:
        raise ValueError(
            f"{inputs} have the same embedding in {model_name} (difference norm {norm.item():.2e}), so they "
            f"define no direction. Use a source and a target that differ"
        )
    return difference / norm


def _image_batches(images, device: torch.device) -> list:
    """Return the images as a list of [n, C, H, W] tensors on `device`; files may differ in size."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"expected images [N, C, H, W] with N >= 1, got {list(images.shape)}")
        return [images.to(device)]
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    if not images:
        raise ValueError("got an empty list of images; pass at least one image or file path")
    return [load_square_image(item).to(device) for item in images]


def load_square_image(item: Union[str, Path, Image.Image]) -> torch.Tensor:
    """Read an image file (or take a PIL image) and center-crop it to a square [1, 3, S, S] in [-1, 1]."""
    if isinstance(item, Image.Image):
        return from_pil(_center_square(item))
    if not isinstance(item, (str, Path)):
        raise TypeError(f"expected an image file path or a PIL image, got {type(item).__name__}")

    path = Path(item).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"reference image {path} is a folder; name the image files in it")
    if not path.is_file():
        raise FileNotFoundError(f"reference image {path} not found. Check the path")
    try:
        with Image.open(path) as image:
            image.load()
            return from_pil(_center_square(image))
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image file that Pillow can read") from None


def _center_square(image: Image.Image) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))
