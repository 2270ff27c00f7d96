"""The provenance signals one by one, on real artefacts made here (no generator is run)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from _provenance_artefacts import (
    AI,
    CAPTURE,
    certificate_chain,
    comfy_graph,
    edit_jpeg,
    edit_png,
    encode,
    png_with_text,
    sign,
    watermark,
)
from PIL import Image
from skimage import data as skdata

from resynth_index.config import GeneratorSettings, load_config
from resynth_index.errors import ConfigError
from resynth_index.images.decode import decode_image
from resynth_index.provenance import (
    GeneratorNames,
    container_fingerprint,
    normalize_name,
    weight_hashes,
)
from resynth_index.provenance.claims import (
    generation_parameters,
    read_claims,
    xmp_packet,
)
from resynth_index.provenance.manifest import read_manifest
from resynth_index.provenance.samplers import a1111_name, map_sampler
from resynth_index.provenance.watermark import (
    MESSAGES,
    block_scores,
    cutoff,
    decode_bits,
    detect,
    verdict,
)

PHOTOS = [skdata.astronaut(), skdata.chelsea(), skdata.coffee()]


@pytest.fixture(scope="module")
def chain():
    return certificate_chain()


# ------------------------------------------------------------------------------------------------ watermarks
def test_decoder_is_bit_identical_to_invisible_watermark():
    from imwatermark import WatermarkDecoder

    rng = np.random.default_rng(3)
    images = PHOTOS + [(rng.random((260, 390, 3)) * 255).astype(np.uint8)]
    for rgb in images:
        for message in MESSAGES.values():
            marked = np.asarray(watermark(Image.fromarray(rgb), message))
            for x in (rgb, marked):
                bgr = np.ascontiguousarray(x[:, :, ::-1])
                theirs = np.array(WatermarkDecoder("bits", len(message)).decode(bgr, "dwtDct"), dtype=bool)
                assert np.array_equal(decode_bits(block_scores(np.ascontiguousarray(x)), len(message)), theirs)


def _jpeg(img: Image.Image, quality: int, subsampling: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encode(img, "JPEG", quality=quality, subsampling=subsampling))))


def test_watermark_survives_jpeg_75_without_chroma_subsampling_and_names_its_message():
    img = Image.fromarray(skdata.coffee())
    for name, message in MESSAGES.items():
        marked = watermark(img, message)
        found = detect(_jpeg(marked, 75, 0), min_agreement=0.75, generators_by_message={"sdxl": ("big-xl",)})
        assert found.message == name and found.decisive and found.verdict == "very likely", found
        assert found.generators == (("big-xl",) if name == "sdxl" else ())
        # 4:2:0 chroma subsampling halves the U channel the mark lives in: at quality 75 it is gone (measured
        # in the README), and the detector must say so rather than guess
        assert not detect(_jpeg(marked, 75, 2), min_agreement=0.75).decisive
    clean = detect(skdata.coffee(), min_agreement=0.75)
    assert not clean.decisive and clean.verdict in ("none", "partial")


def test_verdict_cutoffs_follow_stabilitys_table_and_equal_chance_for_other_lengths():
    assert [verdict(48, k) for k in (27, 28, 33, 34, 35, 36)] == [
        "none", "partial", "partial", "likely", "likely", "very likely"]
    tail = lambda n, k: sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n
    # 32 bits: the share rule asks 24, chance asks more (no likelier than 36 of 48 for a random image)
    assert cutoff(32, 36) == 26 and tail(32, 26) <= tail(48, 36) < tail(32, 25)
    assert cutoff(136, 36) == math.ceil(36 * 136 / 48)  # 75% of a long message (cross-talk guard)
    assert detect(np.zeros((255, 256, 3), np.uint8), min_agreement=0.75) is None  # too small to carry one


# ------------------------------------------------------------------------------------------------ C2PA
def test_signed_png_and_jpeg_validate_and_an_edit_after_signing_is_caught(chain, tmp_path):
    signer_chain, key, ca = chain
    anchors = tmp_path / "ca.pem"
    anchors.write_bytes(ca)
    img = Image.fromarray(skdata.coffee()[:96, :128])
    for fmt, mime, edit in (("PNG", "image/png", edit_png),
                            ("JPEG", "image/jpeg", lambda b: edit_jpeg(b, 90))):
        signed = sign(encode(img, fmt, **({"quality": 90} if fmt == "JPEG" else {})), mime, signer_chain, key,
                      agent="tiny-sdxl")
        untrusted = read_manifest(signed, fmt)
        assert (untrusted.state, untrusted.trusted, untrusted.signature_valid, untrusted.hashes_match) == (
            "valid", False, True, True)
        assert untrusted.digital_source_type == "trainedAlgorithmicMedia" and untrusted.says_ai
        assert untrusted.software_agents == ("tiny-sdxl",) and "signingCredential.untrusted" in untrusted.failures
        assert untrusted.claim_generator == "tiny-sdxl-service"
        trusted = read_manifest(signed, fmt, trust_anchors=str(anchors))
        assert (trusted.state, trusted.trusted) == ("trusted", True) and "rindex test signer" in trusted.signer
        edited = edit(signed)
        assert decode_image(edited).image.size == img.size  # still a picture
        broken = read_manifest(edited, fmt, trust_anchors=str(anchors))
        assert broken.state == "invalid" and not broken.hashes_match and "changed after signing" in broken.note
        assert any(f.endswith("dataHash.mismatch") for f in broken.failures)
        truncated = read_manifest(signed[: len(signed) // 2], fmt)  # a damaged store is evidence, not a crash
        assert truncated is None or truncated.state in ("unreadable", "invalid")
    assert read_manifest(encode(img, "PNG"), "PNG") is None
    with pytest.raises(ConfigError, match="c2pa_trust_anchors"):
        read_manifest(signed, "JPEG", trust_anchors=str(tmp_path / "missing.pem"))


# ------------------------------------------------------------------------------------------------ claims
def test_front_end_claims_and_stated_settings():
    a1111 = ("a red fox in snow\nNegative prompt: blurry, dark\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, "
             'CFG scale: 6.5, Seed: 42, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, '
             'Lora hashes: "a: 1, b: 2", Version: v1.10.1')
    claims = read_claims({"parameters": a1111}, None)
    assert [(c.source, c.kind, c.value, c.model_hash) for c in claims] == [
        ("a1111", "model", "v1-5-pruned-emaonly", "6ce0161689")]
    p = generation_parameters({"parameters": a1111})
    assert (p.prompt, p.negative_prompt, p.seed, p.steps, p.guidance, p.width, p.height, p.sampler) == (
        "a red fox in snow", "blurry, dark", 42, 20, 6.5, 512, 768, "DPM++ 2M Karras")
    hires = generation_parameters({"parameters": a1111 + ", Denoising strength: 0.5, Hires upscale: 2"})
    assert "not a plain text-to-image run" in hires.not_replayable
    assert generation_parameters({"parameters": "a fox\nSteps: 10, Sampler: Euler, Seed: 1"}) is None  # no size/cfg

    comfy = comfy_graph("a lighthouse", "SDXL/sd_xl_base_1.0.safetensors", sampler="dpmpp_2m", scheduler="karras")
    assert [(c.source, c.value) for c in read_claims({"prompt": comfy}, None)] == [
        ("comfyui", "SDXL/sd_xl_base_1.0.safetensors")]
    cp = generation_parameters({"prompt": comfy})
    assert (cp.prompt, cp.negative_prompt, cp.seed, cp.sampler, cp.width) == (
        "a lighthouse", "blurry", 7, "dpmpp_2m karras", 64)

    others = read_claims({"invokeai_metadata": json.dumps({"model": {"name": "juggernaut", "hash": "blake3:ab"}}),
                          "Software": "NovelAI", "Source": "Stable Diffusion XL C1E1DE52",
                          "exif:Software": "Adobe Firefly"}, None)
    assert [(c.source, c.kind, c.value) for c in others] == [
        ("invokeai", "model", "juggernaut"), ("novelai", "model", "Stable Diffusion XL C1E1DE52"),
        ("png", "software", "NovelAI"), ("exif", "software", "Adobe Firefly")]

    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description xmp:CreatorTool="Midjourney"'
           f' Iptc4xmpExt:DigitalSourceType="{AI}"/></rdf:RDF></x:xmpmeta>')
    img = Image.new("RGB", (8, 8), (1, 2, 3))
    packet = xmp_packet(encode(img, "JPEG", xmp=xmp.encode()))
    assert [(c.source, c.kind, c.value) for c in read_claims({}, packet)] == [
        ("xmp", "digital_source_type", "trainedAlgorithmicMedia"), ("xmp", "software", "Midjourney")]
    element = f"<x:xmpmeta><Iptc4xmpExt:DigitalSourceType>{CAPTURE}</Iptc4xmpExt:DigitalSourceType></x:xmpmeta>"
    assert read_claims({}, element)[0].value == "digitalCapture"


def test_names_aliases_and_computed_weight_hashes(tmp_path):
    from safetensors.numpy import save_file

    weights = tmp_path / "fine-tune.safetensors"
    save_file({"w": np.arange(600_000, dtype=np.float32)}, str(weights))  # > 1 MiB + 64 KiB: both hash forms
    v2, v1, full = weight_hashes(weights)
    assert full.startswith(v2) and len(v2) == 10 and len(v1) == 8
    import hashlib
    raw = weights.read_bytes()
    assert full == hashlib.sha256(raw).hexdigest() and v1 == hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]

    names = GeneratorNames([
        GeneratorSettings(name="sd15", source="zoo:tiny-sd", aliases=("v1-5-pruned-emaonly", "SD 1.5")),
        GeneratorSettings(name="mine", source="zoo:tiny-sdxl", weights_file=str(weights)),
        GeneratorSettings(name="vendor", weight_hashes=("DEADBEEF00",)),
    ])
    assert normalize_name("models\\SD15/v1-5-pruned-emaonly.safetensors [6ce0161689]") == "v1-5-pruned-emaonly"
    assert names.by_name("v1-5-pruned-emaonly.ckpt") == ("sd15", "alias")
    assert names.by_name("SD15") == ("sd15", "name") and names.by_name("sdxl") is None
    assert names.by_hash(v2) == "mine" and names.by_hash(v1) == "mine" and names.by_hash(full) == "mine"
    assert names.by_hash("deadbeef00") == "vendor" and names.by_hash("0123456789") is None
    claims = read_claims({"parameters": f"x\nSteps: 5, Model hash: {v2}, Model: renamed-on-disk"}, None)
    (matched,) = [names.match(c) for c in claims]
    assert (matched.generator, matched.matched_by) == ("mine", "hash")


def test_sampler_names_map_to_diffusers_schedulers_or_say_why_not():
    assert map_sampler("DPM++ 2M Karras").describe() == (
        "DPMSolverMultistepScheduler(algorithm_type=dpmsolver++, solver_order=2, use_karras_sigmas=True)")
    assert map_sampler("Euler a").class_name == "EulerAncestralDiscreteScheduler"
    assert map_sampler("euler_ancestral karras").overrides == {"use_karras_sigmas": True}
    assert map_sampler("PLMS").overrides == {"skip_prk_steps": True}
    assert "no diffusers equivalent" in map_sampler("DPM adaptive")
    assert "no diffusers equivalent" in map_sampler("dpmpp_2m ddim_uniform")
    assert "not one this engine knows" in map_sampler("Magic 9000")
    from diffusers import DPMSolverMultistepScheduler, PNDMScheduler

    assert a1111_name(PNDMScheduler(skip_prk_steps=True)) == "PLMS"
    assert a1111_name(DPMSolverMultistepScheduler(use_karras_sigmas=True)) == "DPM++ 2M Karras"


def test_container_fingerprint_only_for_files_that_say_something(chain):
    img = Image.new("RGB", (16, 16), (9, 9, 9))
    plain = decode_image(png_with_text(img, parameters="just a prompt\nSteps: 10, Sampler: Euler, Seed: 1"))
    assert container_fingerprint(plain.metadata, plain.data) is None
    claimed = decode_image(png_with_text(img, parameters="p\nSteps: 10, Model: tiny-sd"))
    assert container_fingerprint(claimed.metadata, claimed.data) is not None
    signed = decode_image(sign(encode(img, "PNG"), "image/png", chain[0], chain[1], agent="x"))
    assert container_fingerprint(signed.metadata, signed.data) is not None


def test_provenance_config_keys_default_and_name_bad_values():
    cfg = load_config(None)
    assert cfg.provenance.c2pa and cfg.provenance.watermark and cfg.provenance.replay
    assert cfg.generators[0].aliases == () and cfg.generators[0].watermark == ""
    cfg = load_config({"generators": [{"name": "a", "source": "zoo:tiny-sd", "aliases": [], "watermark": "sdxl"}]})
    assert cfg.generators[0].watermark == "sdxl"
    with pytest.raises(ConfigError, match="provenance.watermark_min_agreement"):
        load_config({"provenance": {"watermark_min_agreement": 0.3}})
    with pytest.raises(ConfigError, match="generators.watermark"):
        load_config({"generators": [{"name": "a", "watermark": "dalle"}]})
    with pytest.raises(ConfigError, match="provenance.replay_max"):
        load_config({"provenance": {"replay_max": 1}})
