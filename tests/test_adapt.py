"""The domain-adaptation trainer and its command line, on tiny generators and tiny CLIP models."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import utils.losses
from stylegan2 import Generator, load_generator
from utils import adapt
from utils.clip_model import ClipGuide, tiny_clip
from utils.directions import embed_text, text_direction
from utils.train_config import AdaptConfig, load_config
from utils.trainer import CHECKPOINT_NAME, LOG_NAME, Trainer, TrainingError
from tests.tiny import TINY_GENERATOR

REPO = Path(__file__).resolve().parent.parent


def _source():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        G = Generator(**TINY_GENERATOR)
        with torch.no_grad():
            for parameter in G.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))  # biases and noise strengths start at 0
    return G.eval().requires_grad_(False)


def _guide():
    return ClipGuide([tiny_clip(seed=3)], weights=[1.0])


def _config(**changes):
    settings = dict(
        domain="anime",
        target_text="anime painting",
        layers=["b8", "b16"],
        iterations=6,
        batch=2,
        lr=0.01,
        clip_models=["tiny"],
        clip_model_weights=[1.0],
        sample_every=3,
        checkpoint_every=2,
        sample_seeds=[0, 1],
        metric_seeds=[5, 6],
        profile="smoke",
    )
    settings.update(changes)
    return AdaptConfig(**settings).validate()


def _trainer(out_dir, **changes):
    guide = _guide()
    config = _config(**changes)
    direction = text_direction(guide, config.source_text, config.target_text)
    target = embed_text(guide, config.target_text)
    return Trainer(_source(), guide, direction, target, config, out_dir)


def _trainable(trainer):
    return {name: p.detach().clone() for name, p in trainer.G_train.named_parameters()}


def test_step_changes_only_enabled_layers(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.setup()
    before = _trainable(trainer)
    source_before = {name: p.clone() for name, p in trainer.G_source.named_parameters()}
    trainer.train_step()

    changed = {name for name, p in trainer.G_train.named_parameters() if not torch.equal(p, before[name])}
    assert changed == set(trainer.enabled)
    assert not [name for name in changed if "torgb" in name or name.startswith("mapping")]
    assert all(torch.equal(p, source_before[name]) for name, p in trainer.G_source.named_parameters())


def test_resume_equals_uninterrupted(tmp_path):
    straight = _trainer(tmp_path / "straight")
    straight.setup()
    straight.train()

    interrupted = _trainer(tmp_path / "resumed", iterations=4)  # checkpoint_every=2: the last one is at step 4
    interrupted.setup()
    interrupted.train()
    resumed = _trainer(tmp_path / "resumed")  # a new process would build everything afresh, as here
    resumed.setup(resume=True)
    assert resumed.step == 4
    resumed.train()

    expected = _trainable(straight)
    for name, tensor in _trainable(resumed).items():
        assert torch.equal(tensor, expected[name]), name
    straight_log = (tmp_path / "straight" / LOG_NAME).read_text().splitlines()
    resumed_log = (tmp_path / "resumed" / LOG_NAME).read_text().splitlines()
    assert [json.loads(line)["loss"] for line in resumed_log] == [json.loads(line)["loss"] for line in straight_log]


def test_resume_drops_log_past_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, iterations=3, checkpoint_every=2)
    trainer.setup()
    trainer.train()  # checkpoints at steps 2 and 3
    with open(tmp_path / LOG_NAME, "a") as file:
        file.write(json.dumps({"step": 4, "loss": 0.5}) + "\n")  # a step logged after the last checkpoint
    resumed = _trainer(tmp_path)
    resumed.setup(resume=True)
    assert [record["step"] for record in resumed.history] == [1, 2, 3]


def test_resume_with_other_settings_rejected(tmp_path):
    trainer = _trainer(tmp_path, iterations=2)
    trainer.setup()
    trainer.train()
    changed = _trainer(tmp_path, lr=0.5)
    with pytest.raises(TrainingError, match=r"other settings \(lr: 0.01 -> 0.5\)"):
        changed.setup(resume=True)


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, iterations=6, checkpoint_every=2)
    trainer.setup()
    calls = {"count": 0}
    real_loss = utils.losses.directional_loss

    def loss_turning_nan(*args, **kwargs):
        calls["count"] += 1
        value = real_loss(*args, **kwargs)
        return value * float("nan") if calls["count"] >= 3 else value

    monkeypatch.setattr(utils.losses, "directional_loss", loss_turning_nan)
    with pytest.raises(TrainingError, match=r"loss is not finite at step 3 .*checkpoint\.pt \(step 2\), is kept"):
        trainer.train()

    checkpoint = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert checkpoint["step"] == 2
    assert all(torch.isfinite(tensor).all() for tensor in checkpoint["trainable"].values())
    assert not (tmp_path / "anime.pt").exists()


def test_nan_gradient_stops(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.setup()
    parameter = dict(trainer.G_train.named_parameters())[trainer.enabled[0]]
    parameter.register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(TrainingError, match=rf"gradient of {trainer.enabled[0]} is not finite at step 1"):
        trainer.train_step()


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from stylegan2.fileio import atomic_path
    path = Path(sys.argv[1])
    step = 0
    while True:
        step += 1
        with atomic_path(path) as temporary:
            torch.save({"step": step, "payload": torch.full([4_000_000], float(step))}, temporary)
        print(step, flush=True)
    """
)


def test_killed_write_keeps_previous_checkpoint(tmp_path):
    # A real process writes 16 MB checkpoints in a loop and is killed with SIGKILL in the middle of one.
    path = tmp_path / CHECKPOINT_NAME
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        for _ in range(3):
            assert process.stdout.readline().strip()  # wait until a few complete checkpoints exist
        time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["step"] >= 3
    assert torch.equal(checkpoint["payload"], torch.full([4_000_000], float(checkpoint["step"])))


def test_adaptive_selection_used(tmp_path):
    trainer = _trainer(tmp_path, adaptive_k=2, layers=[])
    trainer.setup()
    assert 1 <= len(trainer.layers) <= 4
    assert all(name.endswith(("conv0", "conv1")) for name in trainer.layers)
    assert len(trainer.adaptive_change) == trainer.G_train.num_ws


def test_clip_scores_finite(tmp_path):
    trainer = _trainer(tmp_path, iterations=2)
    trainer.setup()
    trainer.train()
    scores = trainer.clip_scores()
    assert set(scores) == {"source", "adapted", "gain"}
    assert all(math.isfinite(value) for value in scores.values())
    assert scores["gain"] == pytest.approx(scores["adapted"] - scores["source"])


def test_cli_end_to_end_smoke(tmp_path):
    out = tmp_path / "anime"
    assert adapt.main(["--profile", "smoke", "--domain", "anime", "--out", str(out), "--iterations", "4"]) == 0

    G = load_generator(out / "anime.pt")
    assert G.metadata["target_text"] == "anime painting"
    assert G.metadata["steps"] == 4
    assert G.metadata["layers"] == ["b16", "b32"]
    assert len(G.metadata["source_weights_sha256"]) == 64
    records = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2, 3, 4]
    assert all(math.isfinite(record["loss"]) for record in records)
    assert (out / "loss.png").stat().st_size > 0
    assert (out / "samples" / "step_00003.png").exists()
    run = json.loads((out / "anime_run.json").read_text())
    assert math.isfinite(run["clip_score"]["gain"])
    assert run["config"]["iterations"] == 4


def test_cli_fresh_run_needs_overwrite(tmp_path, capsys):
    arguments = ["--profile", "smoke", "--out", str(tmp_path), "--iterations", "2"]
    assert adapt.main(arguments) == 0
    assert adapt.main(arguments) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert adapt.main(arguments + ["--overwrite"]) == 0


def test_cli_resume_continues(tmp_path):
    out = tmp_path / "sketch"
    arguments = ["--profile", "smoke", "--domain", "sketch", "--out", str(out), "--checkpoint-every", "2"]
    adapt.main(arguments + ["--iterations", "2"])
    adapt.main(arguments + ["--iterations", "4", "--resume"])
    records = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--target-text", "   "], "the prompt is empty"),
        (["--target-text", "word " * 80], "tokens"),
        (["--layers", "b64,b9999"], r"unknown layer names \['b9999'\]"),
        (["--domain", "oil"], "unknown domain 'oil'"),
        (["--batch", "0"], "batch must be a positive integer, got 0"),
        (["--target-images", ","], "names no file"),
        (["--target-images", "/"], "is a folder"),
    ],
)
def test_cli_bad_input_messages(arguments, message, tmp_path, capsys):
    try:
        status = adapt.main(["--profile", "smoke", "--out", str(tmp_path), "--iterations", "1"] + arguments)
    except SystemExit as exit:  # argparse errors exit with status 2
        status = exit.code
    error = capsys.readouterr().err
    assert status in (1, 2)
    assert re.search(message, error), error
    assert not (tmp_path / "anime.pt").exists()


def test_config_overrides_file(tmp_path):
    config = load_config("watercolor", "smoke", {"iterations": 9, "layers": None})
    assert config.target_text == "watercolor painting"
    assert config.iterations == 9
    assert config.layers == ["b16", "b32"]  # None keeps the file's value


def test_config_unknown_key(tmp_path):
    path = tmp_path / "domains.json"
    path.write_text(json.dumps({"defaults": {"learning_rate": 0.1}, "domains": {"anime": {}}}))
    with pytest.raises(ValueError, match=r"unknown configuration keys \['learning_rate'\]"):
        load_config("anime", "smoke", path=path)


def test_mapping_control_trains_mapping(tmp_path):
    trainer = _trainer(tmp_path, layers=["mapping"])
    trainer.setup()
    before = _trainable(trainer)
    trainer.train_step()
    changed = {name for name, p in trainer.G_train.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(name.startswith("mapping.") for name in changed)
    assert torch.equal(trainer.G_train.mapping.w_avg, trainer.G_source.mapping.w_avg)


def test_fresh_run_over_earlier_rejected(tmp_path):
    first = _trainer(tmp_path, iterations=2)
    first.setup()
    first.train()
    with pytest.raises(TrainingError, match="contains an earlier run .*--resume.*--overwrite"):
        _trainer(tmp_path, iterations=2).setup()
    assert (tmp_path / CHECKPOINT_NAME).exists()


def test_overwrite_clears_earlier_outputs(tmp_path):
    first = _trainer(tmp_path, iterations=3, sample_every=1)
    first.setup()
    first.train()
    again = _trainer(tmp_path, iterations=3, sample_every=1)
    again.setup(overwrite=True)
    assert not (tmp_path / CHECKPOINT_NAME).exists()
    assert not (tmp_path / LOG_NAME).exists()
    assert list((tmp_path / "samples").glob("*.png")) == []


def test_unknown_layer_writes_nothing(tmp_path):
    trainer = _trainer(tmp_path / "run", layers=["b8", "b999"])
    with pytest.raises(ValueError, match="unknown layer names"):
        trainer.setup()
    assert not (tmp_path / "run").exists()


def test_resume_past_iterations_rejected(tmp_path):
    trainer = _trainer(tmp_path, iterations=4)
    trainer.setup()
    trainer.train()
    with pytest.raises(TrainingError, match="at step 4, past iterations=2"):
        _trainer(tmp_path, iterations=2).setup(resume=True)


def test_resume_drops_partial_log_line(tmp_path):
    trainer = _trainer(tmp_path, iterations=2)
    trainer.setup()
    trainer.train()
    with open(tmp_path / LOG_NAME, "a") as file:
        file.write('{"step": 3, "loss": 0.')  # a write cut short by a kill
    resumed = _trainer(tmp_path, iterations=4)
    resumed.setup(resume=True)
    assert [record["step"] for record in resumed.history] == [1, 2]


def test_interrupt_names_last_checkpoint(tmp_path, monkeypatch, caplog):
    trainer = _trainer(tmp_path, iterations=6, checkpoint_every=2)
    trainer.setup()
    calls = {"count": 0}
    real_step = trainer.train_step

    def step_then_interrupt():
        calls["count"] += 1
        if calls["count"] == 4:
            raise KeyboardInterrupt
        return real_step()

    monkeypatch.setattr(trainer, "train_step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert "interrupted at step 3" in caplog.text
    assert "(step 2), is kept; continue from it with --resume" in caplog.text


def test_adaptive_k_too_large(tmp_path):
    trainer = _trainer(tmp_path, adaptive_k=50, layers=[])
    with pytest.raises(ValueError, match=r"adaptive_k=50 exceeds the 7 ws entries"):
        trainer.setup()


@pytest.mark.parametrize("changes,message", [({"lr": float("inf")}, "lr must be a positive finite"),
                                             ({"betas": 5}, "betas must be two numbers")])
def test_config_rejects_bad_numbers(changes, message):
    with pytest.raises(ValueError, match=message):
        _config(**changes)
