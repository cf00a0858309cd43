"""Both notebooks run top to bottom in the smoke profile and write their figures to output_dir."""

import json
import math
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


def _finite_numbers(value, path="json"):
    """Yield (path, value) for every number in a JSON document that is not finite."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _finite_numbers(item, f"{path}[{key!r}]")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _finite_numbers(item, f"{path}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        yield path, value


def test_research_smoke_writes_everything(tmp_path):
    output_dir = _execute("research", tmp_path)

    expected = ["layers.csv", "layers.json", "style_mixing_coarse.png", "style_mixing_middle.png",
                "style_mixing_fine.png", "study.csv", "study.json", "study.png", "study_conclusion.json",
                "research_run.json"]
    for domain in ("anime", "sketch", "watercolor"):
        expected += [f"models/{domain}.pt", f"metrics/{domain}.json", f"training/{domain}/loss.png",
                     f"training/{domain}/train_log.jsonl"]
    missing = [name for name in expected if not (output_dir / name).is_file()]
    assert missing == []

    study = json.loads((output_dir / "study.json").read_text())
    assert len(study) == 3 * 7  # 3 domains x (mapping, b4 ... b64, torgb) at 64 px
    for name in ["study.json", "study_conclusion.json", "research_run.json", "metrics/anime.json"]:
        assert list(_finite_numbers(json.loads((output_dir / name).read_text()))) == [], name
    metrics = json.loads((output_dir / "metrics" / "anime.json").read_text())
    assert {"clip_score/gain", "lpips_intra_cluster/adapted", "identity/source_vs_adapted"} <= set(metrics)
    assert "verdict" in json.loads((output_dir / "study_conclusion.json").read_text())


def test_inference_smoke_edits_photos(tmp_path):
    output_dir = _execute("inference", tmp_path)

    expected = ["samples_by_domain.png", "photos/astronaut.png", "photos/grace_hopper.png", "photo_metrics.json",
                "inference_run.json"]
    expected += [f"interpolation_{domain}.png" for domain in ("anime", "sketch", "watercolor")]
    missing = [name for name in expected if not (output_dir / name).is_file()]
    assert missing == []

    metrics = json.loads((output_dir / "photo_metrics.json").read_text())
    assert sorted(metrics) == ["astronaut", "grace_hopper"]
    assert list(_finite_numbers(metrics)) == []
    assert {"reconstruction/lpips", "reconstruction/mse", "identity/reconstruction", "identity/watercolor"} <= set(
        metrics["astronaut"]
    )
    row = Image.open(output_dir / "photos" / "astronaut.png")
    assert row.width == 6 * 64  # original, aligned, reconstruction and three domains at 64 px
