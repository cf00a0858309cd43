"""The layer-importance study: runs, tables and the stated conclusion."""

import json
import math

import pytest
import torch

from utils.clip_model import ClipGuide, tiny_clip
from utils.directions import embed_text, text_direction
from utils.experiment import parse_list, research_settings
from utils.study import conclude, mean_by_group, run_layer_study, study_groups, write_study
from utils.train_config import AdaptConfig
from tests.test_adapt import _source


def _rows(gains, changes):
    return [
        {"domain": domain, "group": group, "clip_score/gain": gain, "lpips/source_vs_adapted": changes[group]}
        for domain in ("anime", "sketch")
        for group, gain in gains.items()
    ]


def test_groups_cover_blocks_and_controls():
    names = [name for name, _ in study_groups(_source())]
    assert names == ["mapping", "b4", "b8", "b16", "b32", "torgb"]


def test_conclusion_supports_middle_blocks():
    gains = {"mapping": 0.01, "b32": 0.05, "b64": 0.10, "b128": 0.08, "torgb": 0.02}
    changes = {"mapping": 0.1, "b32": 0.4, "b64": 0.2, "b128": 0.2, "torgb": 0.1}
    result = conclude(_rows(gains, changes))
    assert result["best_block"] == "b64"
    assert result["verdict"].startswith("supported")
    assert result["scores"]["b64"] == pytest.approx(0.10 / 1.2)


def test_conclusion_penalises_structure_loss():
    # b32 has the larger gain but rewrites the image, so b128 ranks first and the hypothesis holds.
    gains = {"b32": 0.10, "b128": 0.08}
    changes = {"b32": 2.0, "b128": 0.1}
    result = conclude(_rows(gains, changes))
    assert result["ranking"] == ["b128", "b32"]


def test_conclusion_rejects_hypothesis():
    result = conclude(_rows({"b16": 0.2, "b64": 0.01}, {"b16": 0.0, "b64": 0.0}))
    assert result["verdict"] == "not supported: the best block is b16, outside b64, b128, b256"


def test_mean_by_group_skips_nan():
    rows = [{"group": "b8", "x": 1.0}, {"group": "b8", "x": float("nan")}, {"group": "b16", "x": 3.0}]
    assert mean_by_group(rows, "x") == {"b8": 1.0, "b16": 3.0}


def test_study_runs_every_group(tmp_path):
    G = _source()
    guide = ClipGuide([tiny_clip(seed=1)])
    config = AdaptConfig(domain="anime", clip_models=["tiny"], clip_model_weights=[1.0], batch=2, lr=0.01)
    direction = (text_direction(guide, "photo", "anime painting"), embed_text(guide, "anime painting"))
    evaluated = []

    def evaluate(G_source, G_adapted, run_config):
        changed = sum((a - b).abs().sum().item() for a, b in zip(G_adapted.parameters(), G_source.parameters()))
        evaluated.append(run_config.layers)
        return {"clip_score/gain": 0.0, "changed": changed}

    rows = run_layer_study(G, guide, {"anime": config}, lambda domain: direction, evaluate, steps=1,
                           adaptive_repeats=2, adaptive_k=1)
    assert [row["group"] for row in rows] == ["mapping", "b4", "b8", "b16", "b32", "torgb"]
    assert evaluated[1] == ["b4"]
    assert all(row["changed"] > 0 for row in rows)  # each run trained its own group
    assert sum(row["adaptive_pick_rate"] for row in rows) >= 1.0  # k=1: one block per repeat at least
    assert rows[0]["adaptive_pick_rate"] == 0.0  # the mapping control cannot be picked
    assert rows[0]["lr"] == pytest.approx(100 * rows[1]["lr"])  # mapping: lr / lr_multiplier
    assert all(math.isfinite(row["final_loss"]) for row in rows)

    csv_path, json_path = write_study(rows, tmp_path)
    assert json.loads(json_path.read_text())[2]["group"] == "b8"
    assert csv_path.read_text().splitlines()[0].startswith("domain,group,")


def test_research_settings_override():
    assert research_settings("smoke", study_steps=5, eval_seeds=None)["study_steps"] == 5
    assert research_settings("smoke")["eval_seeds"] == 12
    with pytest.raises(ValueError, match=r"unknown settings \['steps'\]"):
        research_settings("full", steps=3)


@pytest.mark.parametrize("value,expected", [
    ('["anime", "sketch"]', ["anime", "sketch"]),
    ("anime, sketch", ["anime", "sketch"]),
    ("anime", ["anime"]),
    (["watercolor"], ["watercolor"]),
])
def test_parse_list_forms(value, expected):
    assert parse_list(value) == expected


def test_parse_list_integers():
    assert parse_list("[1, 2]", int) == [1, 2]
    assert parse_list("3,4", int) == [3, 4]
    with pytest.raises(ValueError, match="expected a list of int values"):
        parse_list("a,b", int)


@pytest.mark.parametrize("name,value", [("eval_seeds", 3), ("study_steps", 0), ("study_seeds", "x")])
def test_research_settings_checked_up_front(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be an integer >= "):
        research_settings("smoke", **{name: value})


def test_settings_accept_numbers_as_text():
    assert research_settings("smoke", study_steps="5")["study_steps"] == 5
