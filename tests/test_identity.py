"""Identity descriptors from the real dlib face recognition ResNet on pictures/photos."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from utils.align import AlignmentError, MultipleFacesWarning, align_face
from utils.identity import (
    SAME_PERSON_DISTANCE,
    batch_identity_similarity,
    describe_batch,
    describe_face,
    descriptor_distance,
    descriptor_similarity,
    face_descriptor,
    identity_distance,
    identity_similarity,
)
from utils.images import from_pil

PHOTOS = Path(__file__).resolve().parent.parent / "pictures" / "photos"
ASTRONAUT = PHOTOS / "astronaut.jpg"
GRACE_HOPPER = PHOTOS / "grace_hopper.jpg"


@pytest.fixture(scope="module")
def astronaut_aligned():
    return align_face(ASTRONAUT, output_size=256, transform_size=1024, face_index=0)


@pytest.fixture(scope="module")
def plain():
    return Image.new("RGB", (256, 256), (120, 140, 160))


def test_same_person_close(astronaut_aligned):
    # A smaller, blurred copy of her aligned face against the original photo.
    altered = astronaut_aligned.resize((200, 200), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", MultipleFacesWarning)  # describe_face picks the largest silently
        photo = describe_face(ASTRONAUT)
    copy = describe_face(altered)

    assert photo.face_detected
    assert copy.face_detected
    assert descriptor_distance(photo.vector, copy.vector) < SAME_PERSON_DISTANCE
    assert descriptor_similarity(photo.vector, copy.vector) > 0.95


def test_different_people_far():
    distance = identity_distance(ASTRONAUT, GRACE_HOPPER)
    similarity = identity_similarity(ASTRONAUT, GRACE_HOPPER)
    assert distance > SAME_PERSON_DISTANCE  # measured 0.70
    assert similarity < 0.95  # measured 0.88: dlib descriptors of different people still point alike


def test_descriptor_shape():
    vector = face_descriptor(GRACE_HOPPER)
    assert vector.shape == (128,)
    assert vector.dtype == np.float64


def test_fallback_without_face(plain):
    result = describe_face(plain)
    assert not result.face_detected
    assert result.vector.shape == (128,)
    assert np.isfinite(result.vector).all()


def test_fallback_crop_matches_detection(astronaut_aligned):
    detected = describe_face(astronaut_aligned)
    cropped = describe_face(astronaut_aligned, detect=False)
    assert detected.face_detected
    assert not cropped.face_detected
    assert descriptor_distance(detected.vector, cropped.vector) < 0.3  # measured 0.11


def test_no_fallback_raises(plain):
    with pytest.raises(AlignmentError, match="no face found in the given image"):
        describe_face(plain, fallback=False)


def test_fallback_needs_square():
    with pytest.raises(AlignmentError, match="square"):
        describe_face(Image.new("RGB", (300, 200), (120, 140, 160)))


def test_array_input_matches_pil(astronaut_aligned):
    from_array = face_descriptor(np.asarray(astronaut_aligned))
    from_image = face_descriptor(astronaut_aligned)
    np.testing.assert_allclose(from_array, from_image)


def test_batch_shapes(astronaut_aligned, plain):
    img = from_pil([astronaut_aligned, plain])  # [2, 3, 256, 256] in [-1, 1]
    vectors, detected = describe_batch(img)
    similarity = batch_identity_similarity(img, img)

    assert vectors.shape == (2, 128)
    assert detected.tolist() == [True, False]
    assert similarity.shape == (2,)
    np.testing.assert_allclose(similarity, 1.0, atol=1e-6)


def test_batch_sizes_must_match(astronaut_aligned):
    img = from_pil([astronaut_aligned])
    with pytest.raises(ValueError, match="differ in size"):
        batch_identity_similarity(img, torch.cat([img, img]))
