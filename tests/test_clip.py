"""CLIP wrapper, guide and directions, on tiny random open_clip models built here (no weights, no network)."""

import open_clip
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from PIL import Image

from utils import weights
from utils.clip_model import (
    ARCHITECTURES,
    ClipArchitecture,
    ClipGuide,
    count_tokens,
    load_clip,
    preprocess_images,
    resolve_architecture,
    tiny_clip,
)
from utils.directions import IMAGENET_TEMPLATES, check_prompt, embed_text, image_direction, text_direction
from utils.losses import directional_loss, sum_over_models
from utils.weights import WeightFile, WeightsError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_KWARGS = dict(image_size=32, embed_dim=32, width=32, layers=2, heads=2, patch_size=8)


@pytest.fixture(scope="module")
def model():
    return tiny_clip(seed=0)


@pytest.fixture(scope="module")
def guide(model):
    # A second model with another input size, so every path handles two sizes.
    second = tiny_clip(seed=1, image_size=48, patch_size=16)
    return ClipGuide([model, second], names=["tiny32", "tiny48"])


def _tiny_architecture(weights_entry=None) -> ClipArchitecture:
    """The architecture tiny_clip() builds with TINY_KWARGS, for the loading tests."""
    return ClipArchitecture(
        name="tiny",
        weights=weights_entry,
        embed_dim=32,
        vision_cfg=dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
    )


def _save_state(model, path):
    safetensors.torch.save_file({key: value.contiguous() for key, value in model.state_dict().items()}, path)
    return path


# ---------------------------------------------------------------------------------------------------------
# tiny_clip


def test_tiny_clip_deterministic():
    before = torch.random.get_rng_state()
    first = tiny_clip(seed=3).state_dict()
    second = tiny_clip(seed=3).state_dict()
    other = tiny_clip(seed=4).state_dict()

    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["visual.conv1.weight"], other["visual.conv1.weight"])


def test_tiny_clip_frozen_eval(model):
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert model.context_length == 77
    assert model.vocab_size == 49408


# ---------------------------------------------------------------------------------------------------------
# Preprocessing


@pytest.mark.parametrize("size", [16, 32, 64, 256])
def test_preprocess_output_size(model, size):
    pixels = preprocess_images(torch.zeros(2, 3, size, size), model)
    assert pixels.shape == (2, 3, 32, 32)


def test_preprocess_normalises_constant_image(model):
    value = 0.2  # in [-1, 1], so 0.6 in [0, 1]
    pixels = preprocess_images(torch.full([1, 3, 64, 64], value), model)
    for channel in range(3):
        expected = (0.6 - OPENAI_MEAN[channel]) / OPENAI_STD[channel]
        torch.testing.assert_close(pixels[0, channel], torch.full([32, 32], expected), atol=1e-5, rtol=0)


def test_preprocess_gray_repeated(model):
    gray = torch.rand(2, 1, 40, 40) * 2 - 1
    rgb = gray.expand(-1, 3, -1, -1)
    torch.testing.assert_close(preprocess_images(gray, model), preprocess_images(rgb, model))


def test_preprocess_rejects_non_square(model):
    with pytest.raises(ValueError, match="square images, got 32x48"):
        preprocess_images(torch.zeros(1, 3, 32, 48), model)


def test_preprocess_rejects_bad_channels(model):
    with pytest.raises(ValueError, match=r"C = 1 or 3, got \[1, 4, 32, 32\]"):
        preprocess_images(torch.zeros(1, 4, 32, 32), model)


def test_preprocess_needs_config():
    bare = open_clip.model.CLIP(
        embed_dim=8,
        vision_cfg=dict(image_size=16, layers=1, width=16, head_width=8, patch_size=8),
        text_cfg=dict(context_length=77, vocab_size=49408, width=16, heads=2, layers=1),
    )
    with pytest.raises(ValueError, match="no mean, std or size"):
        preprocess_images(torch.zeros(1, 3, 16, 16), bare)


# ---------------------------------------------------------------------------------------------------------
# ClipGuide


def test_encode_images_unit_per_model(guide):
    embeddings = guide.encode_images(torch.rand(3, 3, 64, 64) * 2 - 1)
    assert len(embeddings) == 2
    for emb in embeddings:
        assert emb.shape == (3, 32)
        assert emb.dtype == torch.float32
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_encode_images_gray_equals_rgb(guide):
    gray = torch.rand(2, 1, 64, 64) * 2 - 1
    for gray_emb, rgb_emb in zip(guide.encode_images(gray), guide.encode_images(gray.repeat(1, 3, 1, 1))):
        torch.testing.assert_close(gray_emb, rgb_emb)


def test_gradient_reaches_image_not_clip(guide):
    img = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    source = [emb.detach() for emb in guide.encode_images(torch.zeros(2, 3, 64, 64))]
    directions = [F.normalize(torch.ones(32), dim=0)] * 2

    loss = sum_over_models(directional_loss, guide.weights, guide.encode_images(img), source, directions)
    loss.backward()

    assert img.grad is not None
    assert torch.isfinite(img.grad).all()
    assert img.grad.abs().sum() > 0
    for clip in guide.models:
        for name, param in clip.named_parameters():
            assert not param.requires_grad, name
            assert param.grad is None, name


def test_guide_weights_honoured(model):
    second = tiny_clip(seed=1, image_size=48, patch_size=16)
    weighted = ClipGuide([model, second], weights=[1.0, 0.0])
    alone = ClipGuide([model])
    adapted_img = torch.rand(2, 3, 64, 64) * 2 - 1
    source_img = torch.rand(2, 3, 64, 64) * 2 - 1
    directions = [F.normalize(torch.ones(32), dim=0)] * 2

    args = (weighted.encode_images(adapted_img), weighted.encode_images(source_img), directions)
    combined = sum_over_models(directional_loss, weighted.weights, *args)
    adapted_alone = alone.encode_images(adapted_img)[0]
    source_alone = alone.encode_images(source_img)[0]
    first_only = directional_loss(adapted_alone, source_alone, directions[0])

    assert combined.item() == pytest.approx(first_only.item(), abs=1e-6)
    assert sum_over_models(directional_loss, [0.0, 1.0], *args).item() != pytest.approx(first_only.item())


def test_guide_argument_errors(model):
    with pytest.raises(ValueError, match="at least one CLIP model"):
        ClipGuide([])
    with pytest.raises(ValueError, match="1 models, 2 weights"):
        ClipGuide([model], weights=[1, 1])
    with pytest.raises(ValueError, match="at least one > 0"):
        ClipGuide([model], weights=[0])


def test_encode_texts_unit(guide):
    embeddings = guide.encode_texts(["a photo of a face.", "an anime painting."])
    for emb in embeddings:
        assert emb.shape == (2, 32)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))


def test_encode_texts_no_truncation(guide):
    with pytest.raises(ValueError, match="is 82 tokens long .* context is 77 tokens"):
        guide.encode_texts(["word " * 80])
    with pytest.raises(TypeError, match="list of strings"):
        guide.encode_texts("a photo")


def test_count_tokens_matches_open_clip():
    text = "A photo of a cat."
    tokens = open_clip.tokenize([text])[0]  # padded with 0 after the end token
    assert count_tokens(text) == int((tokens != 0).sum()) == 8


# ---------------------------------------------------------------------------------------------------------
# Text directions


def test_embed_text_averages_templates(guide, model):
    templates = ["a photo of a {}.", "a sketch of a {}.", "art of the {}."]
    result = embed_text(guide, "pencil sketch", templates)[0]

    # By hand with open_clip's own tokenizer: normalise each template's embedding, average, normalise.
    with torch.no_grad():
        tokens = open_clip.tokenize([t.format("pencil sketch") for t in templates])
        per_template = F.normalize(model.encode_text(tokens), dim=-1)
    expected = F.normalize(per_template.mean(dim=0), dim=-1)

    assert result.shape == (32,)
    torch.testing.assert_close(result, expected)


def test_templates_come_from_clip_paper():
    # open_clip ships the CLIP paper's 80 ImageNet templates as functions of the class name.
    reference = {template("{}") for template in open_clip.OPENAI_IMAGENET_TEMPLATES}
    assert len(IMAGENET_TEMPLATES) >= 12
    assert set(IMAGENET_TEMPLATES) <= reference


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt_rejected(guide, prompt):
    with pytest.raises(ValueError, match="prompt is empty"):
        embed_text(guide, prompt)


def test_long_prompt_rejected_with_count(guide):
    with pytest.raises(ValueError, match=r"is 82 tokens long in the template '\{\}'.* context is 77 tokens"):
        check_prompt(guide, "word " * 80, ["{}"])

    # With templates, the longest filled template is reported.
    longest = max(count_tokens(t.format("word " * 70)) for t in IMAGENET_TEMPLATES)
    with pytest.raises(ValueError, match=f"is {longest} tokens long"):
        embed_text(guide, "word " * 70)


def test_prompt_at_limit_accepted(guide):
    prompt = "word " * 75  # 75 tokens plus start and end: exactly 77
    assert check_prompt(guide, prompt, ["{}"]) == [prompt.strip()]


def test_bad_templates_rejected(guide):
    with pytest.raises(ValueError, match="exactly once"):
        embed_text(guide, "anime", ["a photo"])
    with pytest.raises(ValueError, match="non-empty list"):
        embed_text(guide, "anime", [])


def test_text_direction_unit_difference(guide):
    templates = ["a photo of a {}.", "a drawing of a {}."]
    directions = text_direction(guide, "photo", "anime painting", templates)
    source = embed_text(guide, "photo", templates)
    target = embed_text(guide, "anime painting", templates)

    for direction, s, t in zip(directions, source, target):
        torch.testing.assert_close(direction, F.normalize(t - s, dim=0))
        assert direction.norm().item() == pytest.approx(1.0)


def test_text_direction_same_prompt_rejected(guide):
    with pytest.raises(ValueError, match="same embedding in tiny32"):
        text_direction(guide, "photo", "photo")


# ---------------------------------------------------------------------------------------------------------
# Image directions


def _gradient_image(size):
    ramp = torch.linspace(-1, 1, size)
    across = ramp[None, :].expand(size, size)
    down = ramp[:, None].expand(size, size)
    return torch.stack([across, down, -across])[None]  # [1, 3, size, size]


def test_image_direction_from_tensors(guide):
    target = torch.rand(2, 3, 64, 64) * 2 - 1
    source = torch.rand(3, 3, 32, 32) * 2 - 1
    directions = image_direction(guide, target, source)

    for model_index, direction in enumerate(directions):
        target_mean = F.normalize(guide.encode_images(target)[model_index].mean(dim=0), dim=0)
        source_mean = F.normalize(guide.encode_images(source)[model_index].mean(dim=0), dim=0)
        torch.testing.assert_close(direction, F.normalize(target_mean - source_mean, dim=0))


def test_image_direction_from_files(guide, tmp_path):
    from utils.images import to_pil

    reference = _gradient_image(40)
    path = tmp_path / "reference.png"
    to_pil(reference)[0].save(path)
    source = torch.rand(2, 3, 32, 32) * 2 - 1

    from_file = image_direction(guide, [path], source)
    from_pil_image = image_direction(guide, [Image.open(path)], source)
    from_tensor = image_direction(guide, reference, source)
    for a, b, c in zip(from_file, from_pil_image, from_tensor):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c, atol=2e-2, rtol=0)  # 8-bit rounding of the saved file


def test_image_direction_center_crops_files(guide, tmp_path):
    from utils.images import to_pil

    square = to_pil(_gradient_image(40))[0]
    wide = Image.new("RGB", (60, 40), (255, 0, 0))
    wide.paste(square, (10, 0))  # the center 40x40 of the wide image is `square`
    wide_path, square_path = tmp_path / "wide.png", tmp_path / "square.png"
    wide.save(wide_path)
    square.save(square_path)
    source = torch.rand(2, 3, 32, 32) * 2 - 1

    from_wide = image_direction(guide, [wide_path], source)
    from_square = image_direction(guide, [square_path], source)
    for a, b in zip(from_wide, from_square):
        torch.testing.assert_close(a, b)


def test_image_direction_missing_file(guide, tmp_path):
    missing = tmp_path / "no_such_reference.png"
    with pytest.raises(FileNotFoundError, match="no_such_reference.png"):
        image_direction(guide, [missing], torch.zeros(1, 3, 32, 32))


# ---------------------------------------------------------------------------------------------------------
# Names, registry and loading


def test_names_resolve_to_one_architecture():
    for spelling in ["ViT-B/32", "ViT-B-32", "clip-vit-b32", "vit-b/32"]:
        assert resolve_architecture(spelling) is ARCHITECTURES["ViT-B/32"]
    assert resolve_architecture("clip-vit-b16") is ARCHITECTURES["ViT-B/16"]


def test_unknown_name_lists_valid():
    with pytest.raises(ValueError, match=r"unknown CLIP model 'RN50'. Valid names: ViT-B/32, .*clip-vit-b16"):
        resolve_architecture("RN50")


@pytest.mark.parametrize("name, open_clip_name, registry_name", [
    ("ViT-B/32", "ViT-B-32", "clip-vit-b32"),
    ("ViT-B/16", "ViT-B-16", "clip-vit-b16"),
])
def test_architecture_matches_open_clip(name, open_clip_name, registry_name):
    arch = ARCHITECTURES[name]
    config = open_clip.get_model_config(open_clip_name)
    assert arch.embed_dim == config["embed_dim"]
    assert arch.vision_cfg == config["vision_cfg"]
    assert arch.text_cfg == config["text_cfg"]

    # OpenAI's weights need QuickGELU, and open_clip names the hub repository the registry URL points at.
    pretrained = open_clip.get_pretrained_cfg(open_clip_name, "openai")
    assert arch.quick_gelu == pretrained["quick_gelu"] is True
    entry = weights.REGISTRY[registry_name]
    assert arch.weights == registry_name
    hub_url = f"https://huggingface.co/{pretrained['hf_hub']}resolve/main/open_clip_model.safetensors"
    assert entry.url == hub_url
    assert entry.filename == f"{registry_name}.safetensors"


@pytest.mark.parametrize("name, parameters", [("ViT-B/32", 151_277_313), ("ViT-B/16", 149_620_737)])
def test_real_architecture_size(name, parameters):
    arch = ARCHITECTURES[name]
    # The meta device records shapes only: no memory and no initialisation time.
    with torch.device("meta"):
        model = open_clip.model.CLIP(arch.embed_dim, arch.vision_cfg, arch.text_cfg, quick_gelu=True)
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_load_clip_round_trip(tmp_path):
    source = tiny_clip(seed=5, **TINY_KWARGS)
    path = _save_state(source, tmp_path / "tiny.safetensors")
    before = torch.random.get_rng_state()

    loaded = load_clip(_tiny_architecture(), weights_path=path, half=True)

    assert torch.equal(torch.random.get_rng_state(), before)
    expected = source.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    assert all(p.dtype == torch.float32 for p in loaded.parameters())  # half=True is ignored on the CPU
    assert tuple(loaded.visual.preprocess_cfg["mean"]) == OPENAI_MEAN


def test_load_clip_through_cache(tmp_path):
    entry = WeightFile(name="tiny", url="http://127.0.0.1:9/tiny.safetensors", filename="tiny.safetensors")
    _save_state(tiny_clip(seed=6, **TINY_KWARGS), tmp_path / entry.filename)
    loaded = load_clip(_tiny_architecture(entry), offline=True, cache_dir=tmp_path)
    assert torch.equal(loaded.visual.conv1.weight, tiny_clip(seed=6, **TINY_KWARGS).visual.conv1.weight)


def test_load_clip_offline_missing(tmp_path):
    expected = "'clip-vit-b32.safetensors' .* missing and offline mode is on"
    with pytest.raises(WeightsError, match=expected) as info:
        load_clip("ViT-B/32", offline=True, cache_dir=tmp_path)
    assert str(tmp_path / "clip-vit-b32.safetensors") in str(info.value)
    assert "huggingface.co/timm/vit_base_patch32_clip_224.openai" in str(info.value)


def test_load_clip_wrong_key(tmp_path):
    state = tiny_clip(seed=5, **TINY_KWARGS).state_dict()
    state["visual.conv1.renamed"] = state.pop("visual.conv1.weight")
    path = tmp_path / "renamed.safetensors"
    safetensors.torch.save_file({key: value.contiguous() for key, value in state.items()}, path)

    with pytest.raises(WeightsError) as info:
        load_clip(_tiny_architecture(), weights_path=path)
    message = str(info.value)
    assert "1 missing keys: visual.conv1.weight" in message
    assert "1 unexpected keys: visual.conv1.renamed" in message


def test_load_clip_wrong_shape(tmp_path):
    wider = tiny_clip(seed=5, **dict(TINY_KWARGS, embed_dim=16))
    path = _save_state(wider, tmp_path / "wider.safetensors")
    expected = r"shape mismatches: text_projection: file \[32, 16\], model \[32, 32\]"
    with pytest.raises(WeightsError, match=expected):
        load_clip(_tiny_architecture(), weights_path=path)


def test_load_clip_not_safetensors(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"this is a pickle, not a safetensors file")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_clip(_tiny_architecture(), weights_path=path)


def test_load_clip_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_clip(_tiny_architecture(), weights_path=tmp_path / "absent.safetensors")


def test_image_direction_unreadable_file(guide, tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png is not an image file"):
        image_direction(guide, [path], torch.zeros(1, 3, 32, 32))


def test_load_clip_reshapes_logit_scale(tmp_path):
    state = tiny_clip(seed=5, **TINY_KWARGS).state_dict()
    state["logit_scale"] = state["logit_scale"].reshape(1)  # the [1] layout of some open_clip versions
    path = tmp_path / "vector_scale.safetensors"
    safetensors.torch.save_file({key: value.contiguous() for key, value in state.items()}, path)

    loaded = load_clip(_tiny_architecture(), weights_path=path)
    assert loaded.logit_scale.shape == ()
    assert loaded.logit_scale.item() == state["logit_scale"].item()
