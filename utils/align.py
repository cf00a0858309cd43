"""Align faces in photos the way the FFHQ dataset was aligned, so the FFHQ generator can invert them.

Faces are found with dlib's HOG frontal face detector and located with dlib's 68-point shape predictor
(iBUG 300-W landmark order), whose weights come from the face_recognition_models package. The crop follows
the recipe the FFHQ dataset was built with: `recreate_aligned_images` in download_ffhq.py of
NVlabs/ffhq-dataset (Karras, Laine and Aila 2019, "A Style-Based Generator Architecture for Generative
Adversarial Networks"). Every constant in `ffhq_quad` and `warp_to_square` is taken from that recipe.

Command line: `python -m utils.align photo.jpg --out aligned/ --size 1024`.
"""

import argparse
import dataclasses
import errno
import functools
import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import scipy.ndimage
from PIL import Image, ImageOps, UnidentifiedImageError

from .images import convert_mode, save_image

MODELS_PACKAGE = "face_recognition_models"

# Photos whose long side exceeds this many pixels are downscaled before detection, because dlib's HOG
# detector takes time in proportion to the pixel count: about 1 s for a 2048 px square upsampled once
# (dlib 20.0 on a 2-core x86 virtual machine). Faces at least about 28 px wide in the downscaled copy are found.
MAX_DETECTION_SIZE = 2048

# Landmark indices in the iBUG 300-W 68-point scheme that dlib's shape predictor outputs.
LEFT_EYE = slice(36, 42)  # the eye on the left of the image
RIGHT_EYE = slice(42, 48)
MOUTH_LEFT = 48
MOUTH_RIGHT = 54


class AlignmentError(Exception):
    """A photo cannot be aligned: the file is missing or unreadable, no face is found or face_index is invalid."""


class FaceFileNotFoundError(AlignmentError, FileNotFoundError):
    """The image file to align does not exist; catchable as AlignmentError and as FileNotFoundError."""

    def __init__(self, path):
        self.message = f"image file not found: {path}; check the path and the working directory"
        super().__init__(self.message)
        self.errno = errno.ENOENT
        self.filename = str(path)

    def __str__(self):
        return self.message  # OSError would format it as "[Errno 2] None: 'path'" once errno is set


class MultipleFacesWarning(UserWarning):
    """A photo contains several faces and the largest one was aligned."""


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: == on the landmarks array is ambiguous
class Face:
    """A detected face, in pixel coordinates of the full-resolution, upright RGB image."""

    box: tuple  # (left, top, right, bottom) of the detector's box; right and bottom are exclusive
    landmarks: np.ndarray  # [68, 2] (x, y) points in iBUG 300-W order; integer values are pixel centres
    score: float  # the detector's SVM margin: above 0 is a detection, higher is more confident

    @property
    def area(self) -> int:
        left, top, right, bottom = self.box
        return (right - left) * (bottom - top)


def model_path(filename: str) -> Path:
    """Return the path of a dlib model file shipped by the face_recognition_models package.

    The package is located without importing it, because its __init__ imports pkg_resources, which
    setuptools no longer ships.
    """
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the dlib model files come from the {MODELS_PACKAGE} package, which is not installed; "
            f"install it with: pip install {MODELS_PACKAGE}==0.3.0"
        )
    path = Path(spec.submodule_search_locations[0]) / "models" / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall the package with: pip install --force-reinstall {MODELS_PACKAGE}"
        )
    return path


@functools.lru_cache(maxsize=None)
def load_dlib():
    """Import dlib, or raise ImportError saying which package provides it."""
    try:
        import dlib
    except ImportError as error:
        raise ImportError(
            "face alignment needs dlib; install the prebuilt wheel with: pip install dlib-bin "
            "(the dlib package on PyPI compiles from source and needs CMake and a C++ compiler)"
        ) from error
    return dlib


@functools.lru_cache(maxsize=None)
def _face_detector():
    return load_dlib().get_frontal_face_detector()


@functools.lru_cache(maxsize=None)
def _shape_predictor():
    return load_dlib().shape_predictor(str(model_path("shape_predictor_68_face_landmarks.dat")))


def load_image(image) -> tuple:
    """Open a path, PIL image or uint8 array as an upright RGB PIL image.

    Returns (image, label), where label names the input in messages: the path, or "the given image".
    EXIF orientation is applied, and any mode Pillow reads (RGBA, LA, P, CMYK, 16-bit, grayscale) is
    converted to RGB, with transparent pixels composited onto white.
    """
    if isinstance(image, (str, Path)):
        return _open_file(Path(image)), str(image)
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a path, a PIL image or a uint8 array, got {type(image).__name__}")
    return convert_mode(ImageOps.exif_transpose(image), "RGB"), "the given image"


def _open_file(path: Path) -> Image.Image:
    if not path.exists():
        raise FaceFileNotFoundError(path)
    if path.is_dir():
        raise AlignmentError(f"{path} is a folder; pass an image file")

    try:
        with Image.open(path) as opened:
            opened.load()
            upright = ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        # Pillow raises UnidentifiedImageError for unknown formats, OSError or SyntaxError for truncated or
        # corrupt data, and DecompressionBombError above Image.MAX_IMAGE_PIXELS.
        raise AlignmentError(
            f"cannot read {path} as an image ({type(error).__name__}: {error}); "
            "pass a JPEG, PNG, WebP, TIFF or another format Pillow opens"
        ) from error
    return convert_mode(upright, "RGB")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(
            f"expected a uint8 array [H, W], [H, W, 3] or [H, W, 4], got {array.dtype} {list(array.shape)}"
        )
    return Image.fromarray(np.ascontiguousarray(array))


def detect_faces(image, upsample: int = 1, max_detection_size: int = MAX_DETECTION_SIZE) -> list:
    """Detect faces and their 68 landmarks; returns a list of Face, largest box first.

    image: a path, PIL image or uint8 array (see load_image).
    upsample: how many times dlib doubles the image before detecting. With 1 the detector finds faces
        whose box is about 28 px wide and larger, with 0 about 55 to 60 px (measured with dlib 20.0 on
        the astronaut and Grace Hopper photos in pictures/photos, scaled down in 4 px steps).
    max_detection_size: detect on a copy downscaled to this many pixels on the long side; the boxes
        and landmarks are scaled back to the full image.
    """
    rgb, _ = load_image(image)
    return _detect(rgb, upsample, max_detection_size)


def _detect(rgb: Image.Image, upsample: int, max_detection_size: int) -> list:
    if upsample < 0 or max_detection_size < 1:
        raise ValueError(f"need upsample >= 0 and max_detection_size >= 1, got {upsample} and {max_detection_size}")
    scale = min(1.0, max_detection_size / max(rgb.size))
    small = rgb
    if scale < 1.0:
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        small = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)

    # Per-axis factors from the rounded size; the +0.5 / -0.5 maps between pixel-centre coordinates.
    factor = np.array([rgb.width / small.width, rgb.height / small.height])
    faces = []
    for box, landmarks, score in _detect_landmarks(np.asarray(small), upsample):
        landmarks = (landmarks + 0.5) * factor - 0.5
        left, top = np.floor(np.array(box[:2]) * factor).astype(int)
        right, bottom = np.ceil(np.array(box[2:]) * factor).astype(int)
        faces.append(Face((int(left), int(top), int(right), int(bottom)), landmarks, score))

    faces.sort(key=lambda face: (-face.area, -face.score))
    return faces


def _detect_landmarks(array: np.ndarray, upsample: int) -> list:
    """Run dlib's detector and shape predictor on an RGB uint8 array: [(box, landmarks [68, 2], score)]."""
    rectangles, scores, _ = _face_detector().run(array, upsample, 0.0)
    predictor = _shape_predictor()
    found = []
    for rectangle, score in zip(rectangles, scores):
        shape = predictor(array, rectangle)
        landmarks = np.array([[point.x, point.y] for point in shape.parts()], dtype=np.float64)
        box = (rectangle.left(), rectangle.top(), rectangle.right() + 1, rectangle.bottom() + 1)
        found.append((box, landmarks, float(score)))
    return found


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """Return the FFHQ crop quadrilateral [4, 2] for 68 landmarks [68, 2], in the same pixel coordinates.

    Corners in order: top-left, bottom-left, bottom-right, top-right of the aligned output. The square is
    oriented along the eye line and the eye-to-mouth line, and its half side is the larger of
    2.0 x eye distance and 1.8 x eye-to-mouth distance (constants of the FFHQ recipe).
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks of shape [68, 2], got {list(landmarks.shape)}")

    eye_left = landmarks[LEFT_EYE].mean(axis=0)
    eye_right = landmarks[RIGHT_EYE].mean(axis=0)
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (landmarks[MOUTH_LEFT] + landmarks[MOUTH_RIGHT]) / 2
    eye_to_mouth = mouth_avg - eye_avg

    # x: the output's horizontal axis, the eye line blended with the eye-to-mouth line turned by 90 degrees.
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]  # x turned by 90 degrees, pointing down the face
    centre = eye_avg + eye_to_mouth * 0.1
    return np.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y])


def warp_to_square(image: Image.Image, quad: np.ndarray, output_size: int = 1024,
                   transform_size: int = 4096, enable_padding: bool = True) -> Image.Image:
    """Cut the quadrilateral `quad` out of an RGB image and return it as an output_size square, as FFHQ did.

    The quad is sampled bilinearly at transform_size and downscaled with Lanczos, so each output pixel
    averages several samples. With enable_padding, parts of the quad outside the photo get a reflection of
    the photo that fades into a blur and the median colour. Without it they stay black.
    """
    _check_sizes(output_size, transform_size)
    quad = np.array(quad, dtype=np.float64)
    qsize = np.hypot(*(quad[3] - quad[0]))  # side of the square in source pixels

    image, quad, qsize = _shrink(image, quad, qsize, output_size)
    border = max(int(np.rint(qsize * 0.1)), 3)
    image, quad = _crop(image, quad, border)
    if enable_padding:
        image, quad = _pad(image, quad, qsize, border)

    # PIL's QUAD transform reads continuous coordinates, where pixel i spans [i, i + 1]; hence the +0.5.
    corners = tuple((quad + 0.5).flatten())
    size = (transform_size, transform_size)
    image = image.transform(size, Image.Transform.QUAD, corners, Image.Resampling.BILINEAR)
    if output_size < transform_size:
        image = image.resize((output_size, output_size), Image.Resampling.LANCZOS)
    return image


# Largest transform_size accepted: the FFHQ recipe uses 4096, and the padded crop is resampled at this side
# in RGB, so 8192 already needs several GB of memory.
MAX_TRANSFORM_SIZE = 8192


def _check_sizes(output_size, transform_size):
    if transform_size > MAX_TRANSFORM_SIZE:
        raise ValueError(
            f"transform_size={transform_size} is above {MAX_TRANSFORM_SIZE}; the FFHQ recipe uses 4096, and "
            f"larger values need many GB of memory without improving an output of {output_size} px"
        )
    if not 0 < output_size <= transform_size:
        raise ValueError(
            f"need 0 < output_size <= transform_size, got output_size={output_size}, "
            f"transform_size={transform_size}; the quad is sampled at transform_size, then downscaled"
        )


def _shrink(image, quad, qsize, output_size):
    # Downscale by an integer factor when the quad spans more than twice the output size.
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink <= 1:
        return image, quad, qsize
    size = (int(np.rint(image.width / shrink)), int(np.rint(image.height / shrink)))
    return image.resize(size, Image.Resampling.LANCZOS), quad / shrink, qsize / shrink


def _bounds(quad):
    return (int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
            int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max())))


def _crop(image, quad, border):
    # Keep the quad's bounding box plus a border, so the blur in _pad blends real pixels near the edge.
    left, top, right, bottom = _bounds(quad)
    crop = (max(left - border, 0), max(top - border, 0),
            min(right + border, image.width), min(bottom + border, image.height))
    if crop[2] - crop[0] < image.width or crop[3] - crop[1] < image.height:
        image = image.crop(crop)
        quad = quad - crop[:2]
    return image, quad


def _pad(image, quad, qsize, border):
    left, top, right, bottom = _bounds(quad)
    # Pixels by which the quad plus border sticks out of the photo on each side.
    pad = (max(border - left, 0), max(border - top, 0),
           max(right - image.width + border, 0), max(bottom - image.height + border, 0))
    if max(pad) <= border - 4:
        return image, quad  # the quad lies inside the photo with a margin: nothing to fill

    # Pad every side by at least 0.3 x the quad size, reflecting the photo.
    pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
    pixels = np.pad(np.float32(image), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")

    # mask: 0 inside the photo, rising to 1 at the outer edge of the padding.
    height, width, _ = pixels.shape
    y, x, _ = np.ogrid[:height, :width, :1]
    mask = np.maximum(
        1.0 - np.minimum(np.float32(x) / max(pad[0], 1), np.float32(width - 1 - x) / max(pad[2], 1)),
        1.0 - np.minimum(np.float32(y) / max(pad[1], 1), np.float32(height - 1 - y) / max(pad[3], 1)),
    )

    # Blend towards a blurred copy (fully blurred from a third of the way out), then towards the median
    # colour, so the reflected copy does not read as a second face.
    blur = qsize * 0.02
    blurred = scipy.ndimage.gaussian_filter(pixels, [blur, blur, 0])
    pixels += (blurred - pixels) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    pixels += (np.median(pixels, axis=(0, 1)) - pixels) * np.clip(mask, 0.0, 1.0)
    image = Image.fromarray(np.uint8(np.clip(np.rint(pixels), 0, 255)), "RGB")
    return image, quad + pad[:2]


def align_face(image, output_size: int = 1024, transform_size: int = 4096, enable_padding: bool = True,
               face_index: int = None, upsample: int = 1,
               max_detection_size: int = MAX_DETECTION_SIZE) -> Image.Image:
    """Detect a face in a photo and return it FFHQ-aligned as an RGB PIL image of output_size pixels.

    image: a path, PIL image or uint8 array (see load_image).
    output_size: side of the returned square in pixels (the FFHQ generator uses 1024).
    transform_size: side at which the crop is sampled before the downscale to output_size (FFHQ: 4096).
    enable_padding: fill parts of the crop outside the photo with a blurred reflection (see warp_to_square).
    face_index: which face to align, in the order of detect_faces (0 = largest box). None aligns the
        largest and warns with MultipleFacesWarning when there are several.
    upsample, max_detection_size: passed to detect_faces.

    Raises AlignmentError when the file is missing (FaceFileNotFoundError) or unreadable, when no face is
    found, or when face_index is out of range.
    """
    _check_sizes(output_size, transform_size)  # before the slow detection
    rgb, label = load_image(image)
    faces = _detect(rgb, upsample, max_detection_size)
    face = choose_face(faces, face_index, label)
    return warp_to_square(rgb, ffhq_quad(face.landmarks), output_size, transform_size, enable_padding)


def choose_face(faces: list, face_index: int, label: str) -> Face:
    """Return faces[face_index]; with face_index None, the first (largest) face, warning if there are several."""
    if not faces:
        raise AlignmentError(
            f"no face found in {label}; use a photo with a frontal, well-lit face at least about 30 px wide"
        )
    if face_index is None:
        if len(faces) > 1:
            warnings.warn(
                f"found {len(faces)} faces in {label}, aligning face 0, the largest: "
                f"{describe_faces(faces)}; pass face_index to align another",
                MultipleFacesWarning,
                stacklevel=3,
            )
        return faces[0]
    if not 0 <= face_index < len(faces):
        raise AlignmentError(
            f"face_index {face_index} is out of range: {label} has {len(faces)} face(s), "
            f"so valid indices are 0 to {len(faces) - 1}: {describe_faces(faces)}"
        )
    return faces[face_index]


def describe_faces(faces: list) -> str:
    """Return one line listing each face as `index: box (left, top, right, bottom), area A px`."""
    return "; ".join(f"{i}: box {face.box}, area {face.area} px" for i, face in enumerate(faces))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils.align",
        description="Detect the face in each photo and save it FFHQ-aligned as DIR/<name>.png.",
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="photo files Pillow can open")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="folder for the aligned PNG files, created if missing")
    parser.add_argument("--size", type=int, default=1024,
                        help="side of the aligned image in pixels (default: 1024)")
    parser.add_argument("--transform-size", type=int, default=4096,
                        help="side in pixels at which the crop is sampled before downscaling (default: 4096)")
    parser.add_argument("--face-index", type=int, default=None,
                        help="which face to align, 0 = largest box "
                             "(default: the largest, with a warning if there are several)")
    parser.add_argument("--no-padding", action="store_true",
                        help="leave parts of the crop outside the photo black instead of filling them")
    return parser


def main(argv=None) -> int:
    """Run the command line; returns 0 when every input was aligned, 1 when any failed."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.size <= args.transform_size:
        parser.error(f"--size must be between 1 and --transform-size ({args.transform_size}), got {args.size}")
    if args.transform_size > MAX_TRANSFORM_SIZE:
        parser.error(f"--transform-size must be at most {MAX_TRANSFORM_SIZE} (FFHQ uses 4096), got {args.transform_size}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; give a folder (it is created if missing)")
    outputs = [args.out / f"{path.stem}.png" for path in args.inputs]
    duplicates = sorted({str(path) for path in outputs if outputs.count(path) > 1})
    if duplicates:
        parser.error(f"several inputs would be written to the same file: {', '.join(duplicates)}; "
                     "rename them or align them into separate folders")

    failed = 0
    for source, target in zip(args.inputs, outputs):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", MultipleFacesWarning)
                aligned = align_face(source, args.size, args.transform_size, not args.no_padding, args.face_index)
        except AlignmentError as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
            continue
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        try:
            save_image(aligned, target)
        except OSError as error:
            print(f"error: cannot write {target}: {error.strerror or error}", file=sys.stderr)
            return 1
        print(f"{source} -> {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
