"""Pretrained weights: one name-to-URL registry, a local cache and a resumable, verified download.

    python -m utils.weights                      # list the registry and what is in the cache
    python -m utils.weights ffhq [--dir DIR]     # download into the cache (resumes a .part file)

The cache folder is $SG2_WEIGHTS_DIR, else models/ at the repository root. With SG2_OFFLINE=1 nothing
is downloaded and a missing file raises WeightsError that names the URL and the path to place it at.
"""

import argparse
import dataclasses
import hashlib
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Optional, Union

import requests
import urllib3
from tqdm import tqdm

logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "SG2_WEIGHTS_DIR"
OFFLINE_ENV = "SG2_OFFLINE"
_TRUE_VALUES = {"1", "true", "yes"}
_FALSE_VALUES = {"", "0", "false", "no"}

CHUNK_SIZE = 1 << 20  # bytes read from the response and written per step
RETRY_BACKOFF_S = 1.0  # wait before retry k is k * RETRY_BACKOFF_S seconds
PART_SUFFIX = ".part"


class WeightsError(Exception):
    """A weights file is unknown, missing, corrupt, or could not be downloaded."""


@dataclasses.dataclass(frozen=True)
class WeightFile:
    """One downloadable weights file."""

    name: str  # registry key, e.g. "ffhq"
    url: str  # where fetch() downloads it from
    filename: str  # file name inside the cache folder
    sha256: Optional[str] = None  # lowercase hex digest, None when unknown (not verified)
    size: Optional[int] = None  # bytes, None when unknown (not verified)
    description: str = ""  # one line: what the file is, its origin and license


REGISTRY = {
    entry.name: entry
    for entry in [
        # NOTE: size and sha256 of ffhq.pkl are unknown because this machine cannot reach the CDN, so the
        # download is not verified. Fill both in from a download (fetch() logs the sha256 it computed).
        WeightFile(
            name="ffhq",
            url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/ffhq.pkl",
            filename="ffhq.pkl",
            description="StyleGAN2-ADA FFHQ 1024x1024 generator pickle from NVlabs/stylegan2-ada-pytorch "
            "(NVIDIA Source Code License-NC)",
        ),
        # NOTE: size and sha256 of both CLIP files are unknown because this machine cannot reach the Hugging
        # Face hub, so these downloads are not verified either.
        # The URLs are the hub repositories that open_clip 3.3.0 names for the "openai" tag.
        WeightFile(
            name="clip-vit-b32",
            url="https://huggingface.co/timm/vit_base_patch32_clip_224.openai/resolve/main/open_clip_model.safetensors",
            filename="clip-vit-b32.safetensors",
            description="OpenAI CLIP ViT-B/32 in open_clip's safetensors layout, from timm's hub mirror "
            "(MIT license of openai/CLIP)",
        ),
        WeightFile(
            name="clip-vit-b16",
            url="https://huggingface.co/timm/vit_base_patch16_clip_224.openai/resolve/main/open_clip_model.safetensors",
            filename="clip-vit-b16.safetensors",
            description="OpenAI CLIP ViT-B/16 in open_clip's safetensors layout, from timm's hub mirror "
            "(MIT license of openai/CLIP)",
        ),
        # NOTE: torchvision's file name carries only the first 8 hex digits of the sha256 (397923af), so the
        # full sha256 and the exact size are unknown here and the download is not verified.
        WeightFile(
            name="vgg16",
            url="https://download.pytorch.org/models/vgg16-397923af.pth",
            filename="vgg16-397923af.pth",
            description="ImageNet VGG16 state_dict of torchvision (VGG16_Weights.IMAGENET1K_V1), the LPIPS "
            "backbone of utils.perceptual (BSD-3-Clause per timm's vgg16.tv_in1k model card)",
        ),
    ]
}


class _TransientError(Exception):
    """A download attempt failed in a way that a retry may fix (dropped connection, timeout, 5xx)."""


class _RestartFromZero(Exception):
    """The .part file did not match the server's file and was deleted, so the download starts over at once."""


def weights_dir() -> Path:
    """Return the cache folder: $SG2_WEIGHTS_DIR if set, else models/ next to utils/."""
    configured = os.environ.get(WEIGHTS_DIR_ENV)
    if not configured:
        return Path(__file__).resolve().parent.parent / "models"
    folder = Path(configured).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise WeightsError(f"{WEIGHTS_DIR_ENV}={configured!r} is a file, not a folder; point it at a folder")
    return folder


def _resolve_entry(name_or_entry: Union[str, WeightFile]) -> WeightFile:
    if isinstance(name_or_entry, WeightFile):
        return name_or_entry
    if not isinstance(name_or_entry, str):
        raise WeightsError(f"expected a registry name or a WeightFile, got {type(name_or_entry).__name__}")
    if name_or_entry not in REGISTRY:
        valid = ", ".join(sorted(REGISTRY))
        raise WeightsError(f"unknown weights name {name_or_entry!r}. Valid names: {valid}")
    return REGISTRY[name_or_entry]


def _offline_from_env() -> bool:
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if value in _TRUE_VALUES:
        return True
    if value in _FALSE_VALUES:
        return False
    raise WeightsError(
        f"invalid {OFFLINE_ENV}={value!r}. "
        f"Set it to 1, true or yes for offline mode, or to 0, false or no (or unset it) to allow downloads"
    )


def fetch(
    name_or_entry: Union[str, WeightFile],
    cache_dir: Union[str, Path, None] = None,
    offline: Optional[bool] = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Download a weights file into the cache folder unless it is present, and return its local path.

    name_or_entry: a REGISTRY name or a WeightFile.
    cache_dir: folder for the file, or None for weights_dir().
    offline: True raises instead of downloading; None reads $SG2_OFFLINE (1, true or yes means offline).
    progress: show a tqdm bar while downloading.
    retries: extra attempts after a dropped connection, timeout or 5xx response. Each resumes the .part file.
    timeout: seconds to wait for the connection and for each read from the server.

    A present file is returned without network access after a size check (when the size is known).
    The download goes to <filename>.part, is checked against the known size and sha256, and is then
    renamed to <filename>, so the final name never contains a partial file. Raises WeightsError on any failure.
    """
    entry = _resolve_entry(name_or_entry)
    if not isinstance(retries, int) or retries < 0:
        raise WeightsError(f"retries must be an integer >= 0, got {retries!r}")
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise WeightsError(f"timeout must be a positive number of seconds, got {timeout!r}")
    folder = Path(cache_dir).expanduser().resolve() if cache_dir is not None else weights_dir()
    path = folder / entry.filename
    if offline is None:
        offline = _offline_from_env()

    # A present file needs no network, but a wrong size means a corrupt or different file.
    if path.exists():
        _check_present_size(entry, path)
        return path

    if offline:
        raise WeightsError(
            f"weights file {entry.filename!r} ({entry.name}) is missing and offline mode is on. "
            f"Download it from {entry.url} and place it at {path}, "
            f"or set {WEIGHTS_DIR_ENV} to the folder that contains it"
        )

    # NOTE: two processes fetching the same file at once append to the same .part file. The size and
    # sha256 checks catch the mixed result only for entries where they are known.
    part = folder / (entry.filename + PART_SUFFIX)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        digest = _download_with_retries(entry, part, progress, retries, timeout)
        _verify(entry, part, digest)
        _commit(part, path)
    except requests.RequestException as error:
        raise WeightsError(f"download of {entry.url} failed: {_describe(error)}") from None
    except OSError as error:
        # Caught after requests' errors, which subclass OSError, so this is a local file error.
        raise WeightsError(
            f"cannot write {part} or {path}: {error}. "
            f"Free disk space, or set {WEIGHTS_DIR_ENV} to a writable folder"
        ) from None
    return path


def _check_present_size(entry: WeightFile, path: Path) -> None:
    if entry.size is None:
        return
    actual = path.stat().st_size
    if actual != entry.size:
        raise WeightsError(
            f"{path} has {actual} bytes, expected {entry.size}. "
            f"Delete the file so that the next run downloads it again from {entry.url}"
        )


def _download_with_retries(
    entry: WeightFile, part: Path, progress: bool, retries: int, timeout: float
) -> str:
    """Download entry.url into `part`, resuming after transient failures, and return the sha256 hex digest."""
    attempt = 0
    while True:
        try:
            return _download_once(entry, part, progress, timeout)
        except _RestartFromZero as error:
            # Not counted as a retry: the part is gone, so the next request has no Range and cannot restart.
            logger.warning("%s", error)
            continue
        except _TransientError as error:
            reason = error

        attempt += 1
        received = _part_size(part)
        if attempt > retries:
            _raise_gave_up(entry, part, received, attempt, reason)
        logger.warning(
            "download of %s failed at %d bytes (%s), retry %d of %d",
            entry.url, received, reason, attempt, retries,
        )
        time.sleep(attempt * RETRY_BACKOFF_S)


def _raise_gave_up(entry: WeightFile, part: Path, received: int, attempts: int, reason: Exception) -> None:
    message = f"download of {entry.url} failed after {attempts} attempts: {reason}. "
    if received == 0:
        raise WeightsError(message + "Check the network connection and the URL, then run again")
    raise WeightsError(
        message + f"The {received} bytes received are kept in {part}, and running again resumes from there"
    )


def _part_size(part: Path) -> int:
    return part.stat().st_size if part.exists() else 0


def _download_once(entry: WeightFile, part: Path, progress: bool, timeout: float) -> str:
    """Request the rest of the file, append it to `part` and return the sha256 of the whole part."""
    offset = _part_size(part)
    # identity encoding keeps byte offsets and Content-Length in terms of the file itself.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"

    try:
        response = requests.get(entry.url, headers=headers, stream=True, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as error:
        raise _TransientError(_describe(error)) from None
    except requests.RequestException as error:
        raise WeightsError(f"cannot request {entry.url}: {_describe(error)}. Check the URL") from None

    with response:
        if response.status_code == 416 and offset:
            # The offset is at or past the end, so the part is complete or is a different file.
            return _handle_range_not_satisfiable(entry, part, response)
        if response.status_code >= 500:
            raise _TransientError(f"HTTP {response.status_code} from {entry.url}")
        if response.status_code not in (200, 206):
            raise WeightsError(
                f"HTTP {response.status_code} {response.reason} for {entry.url}. "
                f"Check that the URL of {entry.name!r} is still valid"
            )

        # Weights files are binary; an HTML body is an error or login page served with status 200.
        if response.headers.get("Content-Type", "").split(";")[0].strip().lower() == "text/html":
            raise WeightsError(
                f"{entry.url} returned an HTML page instead of the file (a login, error or moved page). "
                f"Check the URL, or download the file in a browser and place it at {part.parent / entry.filename}"
            )
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise WeightsError(
                f"{entry.url} sent Content-Encoding {encoding!r} although identity was requested. "
                f"Download the file by hand and place it at {part.parent / entry.filename}"
            )
        if response.status_code == 206:
            _check_content_range(entry, part, response, offset)
        elif offset:
            logger.info("%s ignored the Range request, so the download restarts from byte 0", entry.url)
            offset = 0
        return _write_body(entry, part, response, offset, progress)


def _handle_range_not_satisfiable(entry: WeightFile, part: Path, response) -> str:
    """Return the sha256 of a part the server reports as complete, or delete a part of the wrong length."""
    total = _content_range_total(response.headers.get("Content-Range", ""))
    offset = _part_size(part)
    if total is not None and total != offset:
        part.unlink()
        raise _RestartFromZero(
            f"{part} had {offset} bytes but {entry.url} has {total}, so the download starts over"
        )

    # Without a total in Content-Range, _verify is the only check, and only for a known size or sha256.
    return _sha256_of(part).hexdigest()


def _content_range_total(header: str) -> Optional[int]:
    match = re.fullmatch(r"bytes (?:\*|\d+-\d+)/(\d+)", header.strip())
    return int(match.group(1)) if match else None


def _check_content_range(entry: WeightFile, part: Path, response, offset: int) -> None:
    """Raise if a 206 response does not start at `offset`, because appending it would corrupt the part."""
    header = response.headers.get("Content-Range", "")
    match = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", header.strip())
    if match is not None and int(match.group(1)) == offset:
        return

    message = f"{entry.url} returned Content-Range {header!r} for a request of bytes {offset}-"
    if offset == 0:
        raise WeightsError(
            f"{message}. The server does not follow HTTP range semantics, so download the file by hand"
        )
    part.unlink()
    raise _RestartFromZero(f"{message}, so the part was deleted and the download starts over")


def _write_body(entry: WeightFile, part: Path, response, offset: int, progress: bool) -> str:
    """Append the response body to `part` (truncated to `offset` first) and return the sha256 of the part."""
    if not hasattr(response.raw, "read1"):
        raise WeightsError(
            f"urllib3 {urllib3.__version__} has no HTTPResponse.read1, which the resumable download needs. "
            f"Upgrade it with: pip install -U urllib3"
        )

    # The digest covers the bytes already in the part, then each chunk as it is written.
    digest = _sha256_of(part, limit=offset)
    length = response.headers.get("Content-Length")
    expected = int(length) if length is not None and length.isdigit() else None
    total = offset + expected if expected is not None else entry.size

    bar = tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
        desc=entry.filename, disable=not progress,
    )
    # Append mode after truncating to `offset` drops any bytes past it (all of them after a 200 restart).
    with bar, open(part, "ab") as file:
        file.truncate(offset)
        received = _copy_body(response, file, digest, bar)

    if expected is not None and received != expected:
        raise _TransientError(f"connection closed after {received} of {expected} bytes")
    return digest.hexdigest()


def _copy_body(response, file, digest, bar) -> int:
    """Write the response body to `file`, update `digest` and `bar`, and return the number of bytes written."""
    received = 0
    try:
        # read1 returns what one socket read delivers, so every byte received is written before a
        # dropped connection or a timeout raises. requests' iter_content fills whole chunks instead and
        # loses the partly filled one (seen with requests 2.34 and urllib3 2.8).
        while True:
            chunk = response.raw.read1(CHUNK_SIZE, decode_content=False)
            if not chunk:
                return received
            file.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    except urllib3.exceptions.HTTPError as error:
        # A connection closed before Content-Length raises ProtocolError, a stalled one ReadTimeoutError.
        raise _TransientError(_describe(error)) from None


def _sha256_of(path: Path, limit: Optional[int] = None):
    """Return a hashlib sha256 object over the first `limit` bytes of `path` (all of it when None)."""
    digest = hashlib.sha256()
    if not path.exists():
        return digest
    remaining = path.stat().st_size if limit is None else limit
    with open(path, "rb") as file:
        while remaining > 0:
            block = file.read(min(CHUNK_SIZE, remaining))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
    return digest


def _verify(entry: WeightFile, part: Path, digest: str) -> None:
    """Delete `part` and raise when its size or sha256 differs from the registry."""
    actual_size = part.stat().st_size
    if entry.size is not None and actual_size != entry.size:
        part.unlink()
        raise WeightsError(
            f"downloaded {entry.filename} from {entry.url} has {actual_size} bytes, expected {entry.size}. "
            f"The download was deleted. Run again, and if this repeats the registry entry is out of date"
        )
    if entry.sha256 is not None and digest != entry.sha256.lower():
        part.unlink()
        raise WeightsError(
            f"sha256 mismatch for {entry.filename} from {entry.url}: expected {entry.sha256}, got {digest}. "
            f"The download was deleted. Run again, and if this repeats the registry entry is out of date"
        )
    if entry.sha256 is None:
        logger.info(
            "%s: %d bytes, sha256 %s (not in the registry, so not verified)",
            entry.filename, actual_size, digest,
        )


def _commit(part: Path, path: Path) -> None:
    """Move the verified part to its final name in one step, so a reader never sees a partial file."""
    with open(part, "rb") as file:
        os.fsync(file.fileno())
    os.replace(part, path)


def _describe(error: Exception) -> str:
    """Return the first line of a requests or urllib3 error, prefixed with its type name."""
    return f"{type(error).__name__}: {error}".splitlines()[0]


def _status(entry: WeightFile, folder: Path) -> str:
    """Describe what the cache folder holds for `entry`: present, partial (bytes so far) or missing."""
    if (folder / entry.filename).exists():
        return "present"
    part = folder / (entry.filename + PART_SUFFIX)
    if part.exists():
        return f"partial ({part.stat().st_size} bytes)"
    return "missing"


def print_registry(folder: Path, out=None) -> None:
    """Print one line per registry entry to `out` (default stdout): name, filename, cache status and URL."""
    out = sys.stdout if out is None else out
    print(f"weights folder: {folder}", file=out)
    for entry in REGISTRY.values():
        print(f"{entry.name:<12} {entry.filename:<24} {_status(entry, folder):<24} {entry.url}", file=out)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils.weights",
        description="List the pretrained weights registry, or download the named files into the cache.",
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME",
        help=f"registry names to download ({', '.join(sorted(REGISTRY))}). Without names, list the registry",
    )
    parser.add_argument(
        "--dir", type=Path, default=None,
        help=f"cache folder (default: ${WEIGHTS_DIR_ENV}, else models/ at the repository root)",
    )
    parser.add_argument(
        "--offline", action="store_true",
        help=f"never download, and fail if a file is missing (the same as {OFFLINE_ENV}=1)",
    )
    return parser


def main(argv=None) -> int:
    """Run the command line and return the exit status: 0 on success, 1 when a file could not be fetched."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = args.dir.expanduser().resolve() if args.dir is not None else weights_dir()

    if not args.names:
        print_registry(folder)
        return 0

    offline = True if args.offline else None
    try:
        # Check every name before the first download, so a typo fails at once.
        entries = [_resolve_entry(name) for name in args.names]
        for entry in entries:
            print(fetch(entry, cache_dir=folder, offline=offline))
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
