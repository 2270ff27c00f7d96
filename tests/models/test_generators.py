"""Generator loading and sampling, on the built-in zoo (real diffusers pipelines with random weights)."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from resynth_index.errors import ConfigError, ModelNotAvailableError
from resynth_index.config import GeneratorSettings
from resynth_index.models.generators import Generator, generator_namespace, load_generator
from resynth_index.models.zoo import export_zoo, zoo_names

NAMES = zoo_names()
STEPS = 4  # fewer than the zoo defaults, to keep the suite fast; test_zoo samples at the defaults
PROMPTS = ["a photo of a cat", "a red car on a mountain road", "a bowl of fruit", "a photo of a cat"]
SEEDS = [11, 12, 13, 14]


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def generators():
    return {
        name: load_generator(GeneratorSettings(name, "zoo:" + name, steps=STEPS, batch_size=4), device="cpu")
        for name in NAMES
    }


@pytest.fixture(scope="module")
def batched(generators):
    """Four images from each zoo generator, made in one batch of 4."""
    return {name: gen.generate(PROMPTS, SEEDS) for name, gen in generators.items()}


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_four_equals_four_single_calls(generators, batched, name):
    gen = generators[name]
    assert gen.batch_invariant  # the CPU default
    singles = [gen.generate([p], [s])[0] for p, s in zip(PROMPTS, SEEDS)]
    for one, many in zip(singles, batched[name]):
        assert np.array_equal(pixels(one), pixels(many))


@pytest.mark.parametrize("name", NAMES)
def test_images_are_rgb_64_with_contrast_and_depend_on_seed(batched, name):
    images = batched[name]
    assert len(images) == 4
    for image in images:
        assert image.mode == "RGB" and image.size == (64, 64)
        assert pixels(image).std() > 10
    # PROMPTS[0] == PROMPTS[3]: same prompt, another seed -> another image
    assert np.abs(pixels(images[0]) - pixels(images[3])).mean() > 10


@pytest.mark.parametrize("name", NAMES)
def test_same_prompt_and_seed_gives_identical_pixels(generators, batched, name):
    again = generators[name].generate([PROMPTS[1]], [SEEDS[1]])[0]
    assert np.array_equal(pixels(again), pixels(batched[name][1]))
    other_prompt = generators[name].generate([PROMPTS[2]], [SEEDS[1]])[0]
    assert not np.array_equal(pixels(other_prompt), pixels(again))


def test_different_generators_give_different_images(batched):
    for i, a in enumerate(NAMES):
        for b in NAMES[i + 1 :]:
            assert np.abs(pixels(batched[a][0]) - pixels(batched[b][0])).mean() > 20, (a, b)


def test_batch_size_does_not_change_images(generators, batched):
    gen = load_generator(GeneratorSettings("sd3", "zoo:tiny-sd", steps=STEPS, batch_size=3), device="cpu")
    assert gen.namespace() == generators["tiny-sd"].namespace()  # batch size and name are not in it
    for one, other in zip(gen.generate(PROMPTS, SEEDS), batched["tiny-sd"]):
        assert np.array_equal(pixels(one), pixels(other))


@pytest.mark.parametrize("name", NAMES)
def test_exported_directory_loads_back_identically(generators, batched, tmp_path_factory, name):
    directory = export_zoo(name, tmp_path_factory.mktemp("export") / name)
    defaults = load_generator(GeneratorSettings(name, str(directory)), device="cpu")
    zoo_default = load_generator(GeneratorSettings(name, "zoo:" + name), device="cpu")
    # the exported directory carries the zoo entry's sampling defaults
    assert (defaults.steps, defaults.guidance, defaults.height, defaults.width) == (
        zoo_default.steps,
        zoo_default.guidance,
        64,
        64,
    )
    loaded = load_generator(GeneratorSettings(name, str(directory), steps=STEPS), device="cpu")
    assert type(loaded.pipeline) is type(generators[name].pipeline)
    ref = generators[name]
    image = loaded.generate([PROMPTS[2]], [SEEDS[2]])[0]
    assert np.array_equal(pixels(image), pixels(batched[name][2]))
    ns = loaded.namespace()
    assert ns["source"] == str(directory.resolve()) and len(ns["fingerprint"]) == 64
    assert {k: v for k, v in ns.items() if k not in ("source", "revision", "fingerprint")} == {
        k: v for k, v in ref.namespace().items() if k not in ("source", "revision")
    }


def test_local_directory_fingerprint_follows_the_weights(tmp_path):
    a = export_zoo("tiny-sd", tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)

    def fp(directory):
        return load_generator(GeneratorSettings("x", str(directory)), device="cpu").namespace()["fingerprint"]

    assert fp(a) == fp(b)
    weights = next((b / "vae").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert fp(b) != fp(a)


def test_missing_hub_model_offline_raises_model_not_available(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError) as info:
        load_generator(GeneratorSettings("ghost", "nonexistent-org/nonexistent-model"), device="cpu")
    message = str(info.value)
    assert "not found locally and the hub is unreachable" in message
    assert "'ghost'" in message and "nonexistent-org/nonexistent-model" in message
    assert "\n" not in message  # one line, no library stack trace in it


def test_hub_id_found_in_local_hf_cache_loads_offline_with_its_commit(tmp_path):
    """A hub id present in the HF cache loads with local_files_only, and the namespace carries its commit.

    Both images are made in fresh processes with the same thread settings: CPU kernels may round differently
    with another thread count, which an earlier test in the same process can leave changed."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someorg--tiny-sd"
    export_zoo("tiny-sd", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    def generate(source: str) -> dict:
        code = (
            "import json, numpy as np, resynth_index; from resynth_index.config import GeneratorSettings; "
            "from resynth_index.models.generators import load_generator; "
            f"g = load_generator(GeneratorSettings('sd', {source!r}, steps={STEPS}), device='cpu'); "
            "img = g.generate(['a bowl of fruit'], [13])[0]; "
            "print(json.dumps({'ns': g.namespace(), 'px': np.asarray(img).tolist()}))"
        )
        env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    result = generate("someorg/tiny-sd")
    assert result["ns"]["source"] == "someorg/tiny-sd" and result["ns"]["revision"] == commit
    assert result["ns"]["steps"] == STEPS
    reference = generate("zoo:tiny-sd")  # the same prompt, seed and settings from the zoo build
    assert np.array_equal(np.asarray(reference["px"]), np.asarray(result["px"]))


def test_unknown_zoo_name_is_a_clear_error():
    with pytest.raises(ModelNotAvailableError) as info:
        load_generator(GeneratorSettings("x", "zoo:tiny-imagen"), device="cpu")
    assert "tiny-imagen" in str(info.value)
    for name in NAMES:
        assert "zoo:" + name in str(info.value)


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="neither a diffusers directory nor a hub id"):
        load_generator(GeneratorSettings("x", str(tmp_path / "no" / "such" / "model")), device="cpu")
    with pytest.raises(ModelNotAvailableError, match="model_index.json"):
        load_generator(GeneratorSettings("x", str(tmp_path)), device="cpu")


def test_scheduler_override_by_class_name(generators, batched):
    base = generators["tiny-sd"]
    gen = load_generator(
        GeneratorSettings("sd", "zoo:tiny-sd", steps=STEPS, scheduler="DPMSolverMultistepScheduler"), device="cpu"
    )
    assert type(gen.pipeline.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert type(base.pipeline.scheduler).__name__ == "PNDMScheduler"  # the cached zoo build is untouched
    ns, base_ns = gen.namespace(), base.namespace()
    assert ns["scheduler"] == "DPMSolverMultistepScheduler" and ns != base_ns
    image = gen.generate([PROMPTS[0]], [SEEDS[0]])[0]
    assert image.size == (64, 64) and pixels(image).std() > 10
    assert not np.array_equal(pixels(image), pixels(batched["tiny-sd"][0]))
    assert np.array_equal(pixels(image), pixels(gen.generate([PROMPTS[0]], [SEEDS[0]])[0]))


def test_unknown_or_incompatible_scheduler_is_a_config_error():
    with pytest.raises(ConfigError, match="NoSuchScheduler"):
        load_generator(GeneratorSettings("x", "zoo:tiny-sd", scheduler="NoSuchScheduler"), device="cpu")
    with pytest.raises(ConfigError, match="UNet2DConditionModel"):
        load_generator(GeneratorSettings("x", "zoo:tiny-sd", scheduler="UNet2DConditionModel"), device="cpu")
    with pytest.raises(ConfigError, match="not compatible"):
        load_generator(GeneratorSettings("x", "zoo:tiny-sd", scheduler="FlowMatchEulerDiscreteScheduler"), device="cpu")


def test_namespace_is_json_and_tracks_every_sampling_setting(generators):
    base = generators["tiny-sd"].namespace()
    assert json.loads(json.dumps(base)) == base
    assert base["source"] == "zoo:tiny-sd" and base["revision"].startswith("zoo-")
    assert (base["steps"], base["height"], base["width"], base["dtype"]) == (STEPS, 64, 64, "float32")
    for change in ({"steps": STEPS + 1}, {"guidance": 3.0}, {"height": 32, "width": 32}):
        gen = load_generator(GeneratorSettings("sd", "zoo:tiny-sd", **{"steps": STEPS, **change}), device="cpu")
        assert gen.namespace() != base, change
    small = load_generator(GeneratorSettings("sd", "zoo:tiny-sd", steps=2, height=32, width=48), device="cpu")
    assert small.generate(["x"], [0])[0].size == (48, 32)
    # Computed from settings alone, it equals the loaded generator's (cache hits never load a pipeline).
    assert generator_namespace(GeneratorSettings("other-name", "zoo:tiny-sd", steps=STEPS, batch_size=1), "cpu") == base


@pytest.mark.parametrize("name", NAMES)
def test_batch_invariant_false_batches_on_cpu(generators, name):
    """One pipeline call for the whole batch: the denoiser sees all four images (twice, for classifier-free
    guidance) at every step, and the images equal one direct batched call of the same pipeline."""
    gen = load_generator(GeneratorSettings(name, "zoo:" + name, steps=STEPS, batch_size=4, batch_invariant=False),
                         device="cpu")
    assert not gen.batch_invariant and generators[name].batch_invariant
    denoiser = getattr(gen.pipeline, "unet", None) or gen.pipeline.transformer
    batches = []

    def record(module, args, kwargs):
        latents = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        batches.append(latents.shape[0])

    hook = denoiser.register_forward_pre_hook(record, with_kwargs=True)
    try:
        images = gen.generate(PROMPTS, SEEDS)
    finally:
        hook.remove()
    calls = len(batches)  # denoiser calls per pipeline call: the steps (some schedulers add one)
    assert calls >= STEPS and batches == [2 * len(PROMPTS)] * calls
    direct = gen.pipeline(
        prompt=PROMPTS, num_inference_steps=gen.steps, guidance_scale=gen.guidance, height=gen.height,
        width=gen.width, generator=[torch.Generator("cpu").manual_seed(s) for s in SEEDS], output_type="pil",
        **gen._extra_kwargs,
    ).images
    for one, other in zip(images, direct):
        assert np.array_equal(pixels(one), pixels(other))
    # the invariant default makes one call per image: the same denoiser sees batches of 2
    batches.clear()
    hook = (getattr(generators[name].pipeline, "unet", None) or generators[name].pipeline.transformer
            ).register_forward_pre_hook(record, with_kwargs=True)
    try:
        generators[name].generate(PROMPTS[:2], SEEDS[:2])
    finally:
        hook.remove()
    assert batches == [2] * (2 * calls)


def test_batch_invariant_enters_the_namespace_only_when_not_the_default():
    from resynth_index.attribution.resynthesis import cache_namespaces
    from resynth_index.config import load_config

    base = GeneratorSettings("a", "zoo:tiny-sd")
    default = generator_namespace(base, "cpu")
    assert "batch_invariant" not in default  # existing indexes keep their namespaces
    assert generator_namespace(dataclasses.replace(base, batch_invariant=True), "cpu") == default
    batched = generator_namespace(dataclasses.replace(base, batch_invariant=False), "cpu")
    assert batched == {**default, "batch_invariant": False}
    # on CUDA whole batches are the default, so there it is the other way round
    cuda = torch.device("cuda")
    on_cuda = dataclasses.replace(base, dtype="float32")
    assert generator_namespace(dataclasses.replace(on_cuda, batch_invariant=False), cuda) == generator_namespace(
        on_cuda, cuda)
    assert generator_namespace(dataclasses.replace(on_cuda, batch_invariant=True), cuda)["batch_invariant"] is True
    # and the digest the cache keys vectors on follows it
    table = {"name": "a", "source": "zoo:tiny-sd"}
    cpu = torch.device("cpu")
    plain = cache_namespaces(load_config({"generators": [table]}), cpu, "embedder")
    same = cache_namespaces(load_config({"generators": [{**table, "batch_invariant": True}]}), cpu, "embedder")
    other = cache_namespaces(load_config({"generators": [{**table, "batch_invariant": False}]}), cpu, "embedder")
    assert plain == same and plain["a"] != other["a"]


def test_settings_are_validated():
    for bad in ({"steps": 0}, {"batch_size": 0}, {"dtype": "float64"}, {"height": 60}, {"guidance": -1.0},
                {"batch_invariant": "yes"}):
        with pytest.raises(ConfigError):
            GeneratorSettings("x", "zoo:tiny-sd", **bad)
    with pytest.raises(ConfigError):
        GeneratorSettings("", "zoo:tiny-sd")
    with pytest.raises(ConfigError):
        GeneratorSettings("x", 42)
    assert GeneratorSettings("x").source == ""  # gallery-only


def test_generate_checks_its_arguments(generators):
    gen = generators["tiny-sd"]
    assert isinstance(gen, Generator) and gen.generate([], []) == []
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        gen.generate(["a", "b"], [1])
    with pytest.raises(TypeError):
        gen.generate("a cat", [1])
    with pytest.raises(TypeError):
        gen.generate(["a cat"], [1.5])
