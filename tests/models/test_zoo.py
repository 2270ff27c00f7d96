"""The built-in zoo: tokenizers built offline, deterministic builds, export, and images worth attributing."""

import hashlib
import json

import numpy as np
import pytest
import torch

from resynth_index.models import zoo
from resynth_index.errors import ConfigError

NAMES = ["tiny-pixart", "tiny-sd", "tiny-sd-wide", "tiny-sdxl"]


def _weights_digest(pipe) -> str:
    digest = hashlib.sha256()
    for comp_name, component in sorted(pipe.components.items()):
        if isinstance(component, torch.nn.Module):
            for key, tensor in sorted(component.state_dict().items()):
                digest.update(f"{comp_name}.{key}".encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_zoo_names_and_defaults():
    assert zoo.zoo_names() == NAMES
    families = set()
    for name in NAMES:
        d = zoo.zoo_defaults(name)
        assert (d["height"], d["width"]) == (64, 64)
        assert d["steps"] > 0 and d["guidance"] > 1.0
        assert d["zoo_version"] == zoo.ZOO_VERSION
        assert zoo.zoo_defaults("zoo:" + name) == d
        families.add(d["family"])
    assert families == {"stable-diffusion-1.x", "stable-diffusion-xl", "pixart-alpha"}


def test_unknown_zoo_name_lists_the_zoo():
    with pytest.raises(ConfigError) as info:
        zoo.build_zoo_pipeline("tiny-dalle")
    assert "tiny-dalle" in str(info.value)
    for name in NAMES:
        assert name in str(info.value)
    with pytest.raises(ConfigError):
        zoo.zoo_defaults("nope")


def test_pipeline_classes_are_the_real_architectures():
    from diffusers import PixArtAlphaPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    sd, wide = zoo.build_zoo_pipeline("tiny-sd"), zoo.build_zoo_pipeline("zoo:tiny-sd-wide")
    assert type(sd) is StableDiffusionPipeline and type(wide) is StableDiffusionPipeline
    assert tuple(sd.unet.config.block_out_channels) == (32, 64)
    assert tuple(wide.unet.config.block_out_channels) == (64, 128)
    assert isinstance(sd.text_encoder, CLIPTextModel)
    xl = zoo.build_zoo_pipeline("tiny-sdxl")
    assert type(xl) is StableDiffusionXLPipeline
    assert isinstance(xl.text_encoder, CLIPTextModel) and isinstance(xl.text_encoder_2, CLIPTextModelWithProjection)
    assert xl.unet.config.addition_embed_type == "text_time"
    px = zoo.build_zoo_pipeline("tiny-pixart")
    assert type(px) is PixArtAlphaPipeline and isinstance(px.text_encoder, T5EncoderModel)
    for pipe in (sd, wide, xl, px):
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in component.parameters())


def test_build_returns_independent_copies():
    a = zoo.build_zoo_pipeline("tiny-sd")
    b = zoo.build_zoo_pipeline("tiny-sd")
    before = _weights_digest(b)
    assert _weights_digest(a) == before
    with torch.no_grad():
        a.unet.conv_in.weight.add_(1.0)
    assert _weights_digest(b) == before
    assert _weights_digest(zoo.build_zoo_pipeline("tiny-sd")) == before


def test_build_is_deterministic_and_leaves_the_global_rng_alone():
    """The cache keys zoo generators by ZOO_VERSION, so a build must give the same weights every time."""
    cached = {n: _weights_digest(zoo.build_zoo_pipeline(n)) for n in NAMES}
    assert len(set(cached.values())) == len(NAMES)
    torch.manual_seed(12345)
    expected_next = torch.rand(3)
    torch.manual_seed(12345)
    for name in ("tiny-sd", "tiny-pixart"):
        assert _weights_digest(zoo.build_zoo_pipeline(name, cached=False)) == cached[name]
    assert torch.equal(torch.rand(3), expected_next)


def test_clip_tokenizer_matches_real_clip_ids():
    tok = zoo.clip_tokenizer()
    assert tok.model_max_length == 77
    # Real CLIP ids (openai/clip-vit-large-patch14): <|startoftext|> a photo of a cat <|endoftext|>
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = tok("a Photo", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77 and padded[:3] == [49406, 320, 1125]


def test_t5_tokenizer_round_trips_offline(tmp_path):
    from transformers import AutoTokenizer

    tok = zoo.t5_tokenizer()
    ids = tok("a red car on a mountain road").input_ids
    assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
    assert tok("a blue car").input_ids != tok("a red car").input_ids
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert back("a red car on a mountain road").input_ids == ids
    assert back.pad_token_id == tok.pad_token_id


def test_export_writes_a_standard_safetensors_directory(tmp_path):
    from diffusers import DiffusionPipeline

    out = zoo.export_zoo("tiny-sd", tmp_path / "tiny-sd")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert list((out / "unet").glob("*.safetensors")) and not list(out.rglob("*.bin"))
    assert json.loads((out / "rindex_zoo.json").read_text())["steps"] == zoo.zoo_defaults("tiny-sd")["steps"]
    loaded = DiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert _weights_digest(loaded) == _weights_digest(zoo.build_zoo_pipeline("tiny-sd"))
    with pytest.raises(ConfigError, match="not empty"):
        zoo.export_zoo("tiny-sd", out)


@pytest.fixture(scope="module")
def zoo_images():
    """Two prompts x two seeds from each zoo generator, called straight through diffusers."""
    images = {}
    for name in NAMES:
        pipe = zoo.build_zoo_pipeline(name)
        d = zoo.zoo_defaults(name)
        extra = {"use_resolution_binning": False, "clean_caption": False} if "pixart" in name else {}
        out = pipe(
            ["a photo of a cat", "a photo of a cat", "a red car on a mountain road"],
            generator=[torch.Generator("cpu").manual_seed(s) for s in (0, 1, 0)],
            num_inference_steps=d["steps"],
            guidance_scale=d["guidance"],
            height=64,
            width=64,
            output_type="np",
            **extra,
        ).images
        images[name] = np.asarray(out) * 255.0
    return images


@pytest.mark.parametrize("name", NAMES)
def test_images_have_contrast_and_depend_on_prompt_and_seed(zoo_images, name):
    cat0, cat1, car0 = zoo_images[name]
    assert cat0.shape == (64, 64, 3)
    assert cat0.std() > 10 and car0.std() > 10
    assert np.abs(cat0 - cat1).mean() > 10  # another seed: another image
    assert np.abs(cat0 - car0).mean() > 3  # another prompt, same seed: clearly another image


def test_generators_have_distinct_styles(zoo_images):
    """Per-generator colour statistics differ clearly, for the same prompts and seeds."""
    stats = {
        n: np.concatenate([imgs.mean(axis=(0, 1, 2)), imgs.std(axis=(1, 2)).mean(axis=0)])
        for n, imgs in zoo_images.items()
    }
    for i, a in enumerate(NAMES):
        for b in NAMES[i + 1 :]:
            assert np.abs(stats[a] - stats[b]).max() > 15, (a, b, stats[a], stats[b])
            assert np.abs(zoo_images[a] - zoo_images[b]).mean() > 20
