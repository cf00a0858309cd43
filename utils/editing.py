"""Real-photo editing: align, invert with W+ and pivotal tuning, render through each adapted generator.

A photo's face is aligned as FFHQ is, projected into W+ with the distribution regulariser (so the code
stays where the adapted generators behave), and the source generator is fine-tuned around that pivot
(PTI). Each domain's weight change (adapted minus source) is then added to the tuned generator, which
renders the person in that domain. The noise maps the projector optimises are not carried over.
"""

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from .align import AlignmentError, MultipleFacesWarning, align_face
from .identity import identity_similarity
from .images import from_pil, image_grid, save_image, to_pil
from .perceptual import lpips_distance
from .projector import project
from .pti import pivotal_tuning, transplant_domain
from .sampling import generate

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def list_photos(folder) -> list:
    """Image files in `folder`, sorted by name; raises FileNotFoundError naming the folder if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"photo folder not found: {folder}")
    photos = sorted(path for path in folder.iterdir() if path.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise FileNotFoundError(f"no photos ({', '.join(PHOTO_SUFFIXES)}) in {folder}; put portrait photos there")
    return photos


def blend_generators(G_source, G_domain, alpha: float):
    """Return a generator whose parameters are source + alpha * (domain - source), buffers from the source.

    alpha 0 is the source, 1 the domain; values between interpolate the style.
    """
    G = copy.deepcopy(G_source)
    domain = dict(G_domain.named_parameters())
    with torch.no_grad():
        for name, parameter in G.named_parameters():
            parameter.add_(alpha * (domain[name] - parameter))
    return G.eval().requires_grad_(False)


@torch.no_grad()
def interpolation_strip(G_source, G_domain, seeds, alphas=(0.0, 0.25, 0.5, 0.75, 1.0), truncation_psi=0.7):
    """Render a grid with one row per seed and one column per alpha of blend_generators."""
    columns = [generate(blend_generators(G_source, G_domain, alpha), seeds, truncation_psi) for alpha in alphas]
    images = torch.stack(columns, dim=1).flatten(0, 1)  # [seeds * alphas, C, H, W], row-major
    return image_grid(images, columns=len(alphas))


@dataclass
class PhotoEdit:
    """One photo through the pipeline: the images of each stage and their metrics."""

    name: str
    original: Image.Image
    aligned: Image.Image
    reconstruction: torch.Tensor  # [1, C, R, R] from the tuned generator at the pivot
    stylised: dict = field(default_factory=dict)  # domain -> [1, C, R, R]
    metrics: dict = field(default_factory=dict)


def edit_photo(
    path,
    G_source,
    domain_generators: dict,  # domain -> adapted generator (same architecture as G_source)
    lpips_model,
    projection_steps: int = 1000,
    pti_steps: int = 350,
    seed: int = 0,
    face_index: int = None,
    progress: bool = True,
) -> PhotoEdit:
    """Align, invert (W+ projection, then PTI) and stylise one photo; measure reconstruction and identity."""
    resolution = G_source.img_resolution
    device = next(G_source.parameters()).device
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MultipleFacesWarning)
        aligned = align_face(path, output_size=resolution, transform_size=4 * resolution, face_index=face_index)
    for warning in caught:
        print(f"{Path(path).name}: {warning.message}")

    target = from_pil(aligned, channels=G_source.img_channels).to(device)  # [1, C, R, R]
    projection = project(G_source, target, lpips_model, mode="w+", num_steps=projection_steps, seed=seed,
                         progress=progress)
    tuning = pivotal_tuning(G_source, projection.ws, target, lpips_model, num_steps=pti_steps, progress=progress)

    with torch.no_grad():
        pivot_only = G_source.synthesis(projection.ws, noise_mode="const")
        reconstruction = tuning.G.synthesis(projection.ws, noise_mode="const")
        stylised = {
            domain: transplant_domain(G_source, G_domain, tuning.G).synthesis(projection.ws, noise_mode="const")
            for domain, G_domain in domain_generators.items()
        }

    edit = PhotoEdit(
        name=Path(path).stem,
        original=Image.open(path).convert("RGB"),
        aligned=aligned,
        reconstruction=reconstruction.cpu(),
        stylised={domain: image.cpu() for domain, image in stylised.items()},
    )
    edit.metrics = _photo_metrics(target, pivot_only, reconstruction, stylised, aligned, lpips_model, tuning)
    return edit


def _photo_metrics(target, pivot_only, reconstruction, stylised, aligned, lpips_model, tuning) -> dict:
    """Reconstruction LPIPS and MSE (W+ alone and after PTI) and identity of each output to the photo."""
    with torch.no_grad():
        metrics = {
            "projection/lpips": float(lpips_distance(lpips_model, pivot_only, target)[0]),
            "projection/mse": float((pivot_only - target).square().mean()),
            "reconstruction/lpips": float(lpips_distance(lpips_model, reconstruction, target)[0]),
            "reconstruction/mse": float((reconstruction - target).square().mean()),
            "pti/steps": tuning.steps,
        }
    metrics["identity/reconstruction"] = identity_similarity(to_pil(reconstruction.cpu())[0], aligned)
    for domain, image in stylised.items():
        metrics[f"identity/{domain}"] = identity_similarity(to_pil(image.cpu())[0], aligned)
    return metrics


def edit_photos(photos, G_source, domain_generators, lpips_model, out_dir, face_indices=None, **options) -> tuple:
    """Run edit_photo on each photo and save its row as <out_dir>/<name>.png; returns (metrics, failures).

    A photo that cannot be aligned (no face, unreadable) is skipped with a message, so one bad file does
    not stop the rest. metrics: {name: metrics dict}; failures: {name: error message}.
    options: passed to edit_photo (projection_steps, pti_steps, seed, progress).
    """
    face_indices = dict(face_indices or {})
    metrics, failures = {}, {}
    for photo in photos:
        photo = Path(photo)
        try:
            edit = edit_photo(photo, G_source, domain_generators, lpips_model,
                              face_index=face_indices.get(photo.stem), **options)
        except AlignmentError as error:
            print(f"skipped {photo.name}: {error}")
            failures[photo.stem] = str(error)
            continue
        path = save_image(photo_row(edit), Path(out_dir) / f"{edit.name}.png")
        print("saved", path)
        metrics[edit.name] = edit.metrics
    return metrics, failures


def photo_row(edit: PhotoEdit) -> Image.Image:
    """original | aligned | reconstruction | one column per domain, labelled, at the generator's resolution."""
    size = edit.aligned.width
    original = _fit(edit.original, size)
    tiles = [("original", original), ("aligned", edit.aligned), ("reconstruction", to_pil(edit.reconstruction)[0])]
    tiles += [(domain, to_pil(image)[0]) for domain, image in edit.stylised.items()]

    strip = 14 + size // 64
    row = Image.new("RGB", (size * len(tiles), size + strip), "white")
    draw = ImageDraw.Draw(row)
    for i, (label, tile) in enumerate(tiles):
        row.paste(tile.convert("RGB"), (i * size, strip))
        draw.text((i * size + 4, 2), label, fill="black")
    return row


def _fit(image: Image.Image, size: int) -> Image.Image:
    """Letterbox `image` into a white size x size square."""
    scaled = image.copy()
    scaled.thumbnail((size, size), Image.LANCZOS)
    square = Image.new("RGB", (size, size), "white")
    square.paste(scaled, ((size - scaled.width) // 2, (size - scaled.height) // 2))
    return square
