"""Both notebooks run top to bottom in the smoke profile and write their figures to output_dir."""

import json
from pathlib import Path

import papermill
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def _execute(name, tmp_path):
    output_dir = tmp_path / "out"
    papermill.execute_notebook(
        str(REPO / f"{name}.ipynb"),
        str(tmp_path / f"{name}.ipynb"),
        parameters=dict(profile="smoke", output_dir=str(output_dir)),
        cwd=str(REPO),
        kernel_name="python3",
        progress_bar=False,
    )
    return output_dir


@pytest.mark.parametrize("name", ["research", "inference"])
def test_notebook_committed_without_outputs(name):
    cells = json.loads((REPO / f"{name}.ipynb").read_text())["cells"]
    assert [cell.get("outputs") for cell in cells if cell["cell_type"] == "code" and cell.get("outputs")] == []
    tagged = [cell for cell in cells if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1


def test_research_smoke_writes_samples(tmp_path):
    output_dir = _execute("research", tmp_path)
    grid = Image.open(output_dir / "source_samples.png")
    assert grid.size == (4 * 64, 2 * 64)


def test_inference_smoke_writes_samples(tmp_path):
    output_dir = _execute("inference", tmp_path)
    grid = Image.open(output_dir / "inference_samples.png")
    assert grid.size == (4 * 64, 64)
