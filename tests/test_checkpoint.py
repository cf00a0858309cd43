"""Checkpoint loading: official pickles without running code, this project's .pt files, and every bad file."""

import argparse
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import stylegan2.checkpoint
from stylegan2 import CheckpointError, Generator, load_generator, save_generator
from stylegan2.checkpoint import load_official_pickle, load_project_checkpoint
from tests.official_pickles import write_network_pickle, write_tf_pickle

DATA = Path(__file__).parent / "data"


def _reference_generator(config="tiny32"):
    index = json.loads((DATA / config / "index.json").read_text())
    G = Generator(**index["G_ema_init_kwargs"]).eval()
    weights = np.load(DATA / config / "G_ema_tensors.npz")
    G.load_state_dict({name: torch.from_numpy(weights[name]) for name in weights.files})
    return G


def _reference_image(config, G):
    z = torch.from_numpy(np.load(DATA / config / "seed0_z.npy"))
    expected = torch.from_numpy(np.load(DATA / config / "seed0_psi1_img.npy"))
    return (G(z, None) - expected).abs().max().item()


class _RunsCommand:
    """Pickles as a call of os.system, like a malicious checkpoint would."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _CallsExec:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


@pytest.mark.parametrize("config", ["tiny32", "tiny64_clamp"])
def test_official_pickle_reproduces_reference(config, tmp_path):
    path = write_network_pickle(tmp_path / "network.pkl", _reference_generator(config))
    G = load_generator(path)
    assert _reference_image(config, G) <= 1e-4
    assert G.init_kwargs["synthesis_kwargs"]["conv_clamp"] == (0.5 if config == "tiny64_clamp" else 256)
    assert not G.training
    assert not any(p.requires_grad for p in G.parameters())


def test_official_pickle_imports_no_official_modules(tmp_path):
    path = write_network_pickle(tmp_path / "network.pkl", _reference_generator())
    load_generator(path)
    imported = [name for name in sys.modules if name.split(".")[0] in ("torch_utils", "dnnlib", "training")]
    assert imported == []


def test_protocol3_pickle_loads(tmp_path):
    path = write_network_pickle(tmp_path / "network.pkl", _reference_generator(), protocol=3)
    assert _reference_image("tiny32", load_generator(path)) <= 1e-4


def test_embedded_source_is_never_executed(tmp_path):
    marker = tmp_path / "marker"
    source = f"open({str(marker)!r}, 'w').write('executed')\n"
    path = write_network_pickle(tmp_path / "network.pkl", _reference_generator(), module_src=source)
    G = load_generator(path)
    assert not marker.exists()
    assert _reference_image("tiny32", G) <= 1e-4


def test_os_system_pickle_rejected(tmp_path):
    marker = tmp_path / "marker"
    evil = _RunsCommand(f"touch {marker}")
    path = write_network_pickle(tmp_path / "network.pkl", _reference_generator(), extra={"hook": evil})
    with pytest.raises(CheckpointError, match=r"global '(posix|os|nt)\.system'"):
        load_generator(path)
    assert not marker.exists()


def test_exec_pickle_rejected(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "network.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _CallsExec(f"open({str(marker)!r}, 'w')")}))
    with pytest.raises(CheckpointError, match=r"global 'builtins\.exec'"):
        load_generator(path)
    assert not marker.exists()


def test_malicious_storage_blob_rejected(tmp_path):
    marker = tmp_path / "marker"
    blob = pickle.dumps(_RunsCommand(f"touch {marker}"), protocol=2)

    class _EvilStorage:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (blob,)

    path = tmp_path / "network.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _EvilStorage()}, protocol=4))
    with pytest.raises(CheckpointError, match=r"rejected a tensor storage: .*GLOBAL (posix|os|nt)\.system"):
        load_generator(path)
    assert not marker.exists()


def test_tensorflow_pickle_named(tmp_path):
    path = write_tf_pickle(tmp_path / "stylegan2-ffhq-config-f.pkl")
    with pytest.raises(CheckpointError, match="TensorFlow-era") as error:
        load_generator(path)
    assert "legacy.py" in str(error.value)


def _rosinality_state():
    return {"style.1.weight": torch.zeros(4, 4), "input.input": torch.zeros(1, 4, 4, 4), "conv1.conv.weight": torch.zeros(1)}


def test_rosinality_checkpoint_named(tmp_path):
    path = tmp_path / "550000.pt"
    torch.save({"g_ema": _rosinality_state(), "latent_avg": torch.zeros(4)}, path)
    with pytest.raises(CheckpointError, match="rosinality"):
        load_generator(path)


def test_rosinality_training_checkpoint_named(tmp_path):
    # Training checkpoints of that project also pickle argparse.Namespace, which weights_only rejects.
    path = tmp_path / "550000.pt"
    torch.save({"g_ema": _rosinality_state(), "args": argparse.Namespace(size=256)}, path)
    with pytest.raises(CheckpointError, match="rosinality"):
        load_generator(path)


def test_pt_file_given_to_pickle_loader(tmp_path):
    path = save_generator(_reference_generator(), tmp_path / "generator.pkl")
    with pytest.raises(CheckpointError, match="PyTorch checkpoint .* not an NVlabs network pickle"):
        load_official_pickle(path)
    assert _reference_image("tiny32", load_generator(path)) <= 1e-4  # by content, the extension aside


def test_pickle_given_to_pt_loader(tmp_path):
    path = write_network_pickle(tmp_path / "network.pt", _reference_generator())
    with pytest.raises(CheckpointError, match="plain pickle .* not a torch.save checkpoint"):
        load_project_checkpoint(path)
    assert _reference_image("tiny32", load_generator(path)) <= 1e-4


@pytest.mark.parametrize("kind", ["pkl", "pt"])
def test_truncated_file_reported(kind, tmp_path):
    source = tmp_path / f"full.{kind}"
    if kind == "pkl":
        write_network_pickle(source, _reference_generator())
    else:
        save_generator(_reference_generator(), source)
    data = source.read_bytes()
    path = tmp_path / f"cut.{kind}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_generator(path)


def test_empty_file_reported(tmp_path):
    path = tmp_path / "ffhq.pkl"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_generator(path)


def test_html_page_reported(tmp_path):
    path = tmp_path / "ffhq.pkl"
    path.write_text("<!DOCTYPE html><html><body>Access denied</body></html>")
    with pytest.raises(CheckpointError, match="HTML page"):
        load_generator(path)


def test_unknown_bytes_reported(tmp_path):
    path = tmp_path / "photo.pkl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(CheckpointError, match="not a checkpoint this project can read"):
        load_generator(path)


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nowhere" / "ffhq.pkl"
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nowhere"):
        load_generator(path)


def test_directory_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="not a file"):
        load_generator(tmp_path)


def test_pickle_without_generator(tmp_path):
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="no G_ema among its keys"):
        load_generator(path)


def test_config_mismatch_lists_differences(tmp_path):
    G = _reference_generator()
    wrong = dict(G.init_kwargs, img_resolution=64)
    path = write_network_pickle(tmp_path / "network.pkl", G, init_kwargs=wrong)
    with pytest.raises(CheckpointError, match="does not match the weights") as error:
        load_generator(path)
    message = str(error.value)
    assert "missing from the file" in message
    assert "'img_resolution': 32" in message  # the configuration the tensors do fit


def test_unknown_kwargs_rejected(tmp_path):
    G = _reference_generator()
    stylegan3_like = dict(G.init_kwargs, synthesis_kwargs=dict(channel_base=2048, magnitude_ema_beta=0.999))
    path = write_network_pickle(tmp_path / "network.pkl", G, init_kwargs=stylegan3_like)
    with pytest.raises(CheckpointError, match=r"unknown synthesis_kwargs \['magnitude_ema_beta'\]"):
        load_generator(path)


def test_block_flags_override_recorded_fp16(tmp_path):
    G = _reference_generator()
    recorded = dict(G.init_kwargs, synthesis_kwargs=dict(G.init_kwargs["synthesis_kwargs"], num_fp16_res=0))
    path = write_network_pickle(tmp_path / "network.pkl", G, init_kwargs=recorded)
    loaded = load_generator(path)
    assert [block.use_fp16 for block in loaded.synthesis.blocks()] == [False, True, True, True]


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    G = _reference_generator("tiny64_clamp")
    path = save_generator(G, tmp_path / "generator.pt", metadata={"prompt": "anime painting", "steps": 300})
    loaded = load_generator(path)
    assert loaded.metadata == {"prompt": "anime painting", "steps": 300}
    assert loaded.init_kwargs == G.init_kwargs
    expected = G.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert _reference_image("tiny64_clamp", loaded) <= 1e-4


def test_bare_state_dict_config_inferred(tmp_path):
    G = _reference_generator("tiny64_clamp")
    path = tmp_path / "state_dict.pt"
    torch.save(G.state_dict(), path)
    loaded = load_generator(path)
    inferred = loaded.init_kwargs
    assert inferred["img_resolution"] == 64
    assert inferred["z_dim"] == 128
    assert inferred["mapping_kwargs"]["num_layers"] == 4
    assert inferred["synthesis_kwargs"]["channel_base"] == 4096
    assert inferred["synthesis_kwargs"]["channel_max"] == 128
    # conv_clamp cannot be read from tensors; with None the clamp-heavy reference differs, but the weights load.
    assert inferred["synthesis_kwargs"]["conv_clamp"] is None


def test_bare_state_dict_reproduces_unclamped(tmp_path):
    G = _reference_generator("tiny32")  # its clamp of 256 is never reached, so the output matches
    path = tmp_path / "state_dict.pt"
    torch.save(G.state_dict(), path)
    assert _reference_image("tiny32", load_generator(path)) <= 1e-4


def test_newer_format_version_reported(tmp_path):
    path = save_generator(_reference_generator(), tmp_path / "generator.pt")
    data = torch.load(path, weights_only=True)
    data["format_version"] = 99
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_generator(path)


def test_pt_with_pickled_code_rejected(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "generator.pt"
    torch.save({"format": "stylegan2-generator", "hook": _RunsCommand(f"touch {marker}")}, path)
    with pytest.raises(CheckpointError, match="rejected"):
        load_generator(path)
    assert not marker.exists()


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    path = save_generator(_reference_generator(), tmp_path / "generator.pt")
    before = path.read_bytes()

    def fail_midway(payload, file):
        Path(file).write_bytes(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(stylegan2.checkpoint.torch, "save", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        save_generator(_reference_generator("tiny64_clamp"), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generator.pt"]


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_generator(_reference_generator(), tmp_path / "g.pt", metadata={"when": object()})


def test_unavailable_device_reported(tmp_path):
    path = save_generator(_reference_generator(), tmp_path / "generator.pt")
    with pytest.raises(ValueError, match="invalid device 'gpu0'"):
        load_generator(path, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_generator(path, device="cuda")
