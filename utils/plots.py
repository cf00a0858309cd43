"""Figures written by training and the notebooks (matplotlib, no display needed)."""

import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # render to files; the notebooks display the saved images
import matplotlib.pyplot as plt  # noqa: E402 - must follow the backend choice

from stylegan2.fileio import atomic_write_bytes  # noqa: E402


def save_figure(figure, path) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def plot_losses(log_path, out_path) -> Path:
    """Plot every loss column of a training .jsonl log against the step."""
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    names = [key for key in records[0] if key not in ("step", "seconds")] if records else []
    figure, axis = plt.subplots(figsize=(6, 3.5))
    steps = [record["step"] for record in records]
    for name in names:
        axis.plot(steps, [record.get(name) for record in records], label=name)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.grid(alpha=0.3)
    if names:
        axis.legend()
    return save_figure(figure, out_path)
