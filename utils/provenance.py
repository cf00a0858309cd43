"""Provenance of results: weight hashes and the code version, recorded with every run."""

import hashlib
import subprocess
from pathlib import Path

import torch

from .profiles import REPO_ROOT

_CHUNK = 1 << 20


def state_dict_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of a module's state_dict, in order.

    Unlike a file hash it does not depend on how the weights were stored (an NVlabs pickle embeds memory
    addresses, so the same weights give different files).
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{list(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def code_version(root: Path = REPO_ROOT) -> str:
    """Return the git commit of the code, with "+dirty" when files differ from it; "unknown" outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if status.strip() else "")
