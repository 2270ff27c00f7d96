"""A generator's ``call`` table: extra pipeline arguments, validated, used exactly, and in the cache namespace."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from resynth_index.attribution.resynthesis import cache_namespaces
from resynth_index.cli import main
from resynth_index.config import GeneratorSettings, load_config
from resynth_index.errors import ConfigError
from resynth_index.models.generators import generator_namespace, load_generator

STEPS = 3
PROMPT, SEED = "a red car on a mountain road", 7
CALLS = {  # per zoo architecture: arguments its pipeline takes that change the image
    "tiny-sd": {"negative_prompt": "blurry, low quality", "guidance_rescale": 0.7},
    "tiny-pixart": {"negative_prompt": "blurry, low quality", "max_sequence_length": 4},
}


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def settings(zoo: str, **kwargs) -> GeneratorSettings:
    return GeneratorSettings(zoo, "zoo:" + zoo, steps=STEPS, **kwargs)


@pytest.mark.parametrize("zoo", sorted(CALLS))
def test_a_generator_resynthesizes_with_exactly_its_call_arguments(zoo):
    call = CALLS[zoo]
    gen = load_generator(settings(zoo, call=call), device="cpu")
    image = gen.generate([PROMPT], [SEED])[0]
    # the same diffusers pipeline, called by hand with the engine's arguments and exactly the configured ones
    # (a negative prompt one per image, as diffusers wants it for a list of prompts)
    by_hand = {k: [v] if k == "negative_prompt" else v for k, v in call.items()}
    direct = gen.pipeline(
        prompt=[PROMPT], num_inference_steps=STEPS, guidance_scale=gen.guidance, height=gen.height, width=gen.width,
        generator=[torch.Generator("cpu").manual_seed(SEED)], output_type="pil", **by_hand,
        **({"clean_caption": False, "use_resolution_binning": False} if zoo == "tiny-pixart" else {}),
    ).images[0]
    assert np.array_equal(pixels(image), pixels(direct))
    plain = load_generator(settings(zoo), device="cpu").generate([PROMPT], [SEED])[0]
    assert np.abs(pixels(image) - pixels(plain)).mean() > 1  # the call changed the image
    for key in call:  # and each argument on its own does
        one = load_generator(settings(zoo, call={key: call[key]}), device="cpu").generate([PROMPT], [SEED])[0]
        assert not np.array_equal(pixels(one), pixels(plain)), key
        assert not np.array_equal(pixels(one), pixels(image)), key


def test_a_negative_prompt_applies_to_every_image_of_a_batch():
    call = {"negative_prompt": "blurry, low quality"}
    prompts, seeds = [PROMPT, "a bowl of fruit"], [SEED, SEED + 1]
    alone = load_generator(settings("tiny-sd", call=call), device="cpu").generate(prompts, seeds)
    batched = load_generator(settings("tiny-sd", call=call, batch_invariant=False, batch_size=2), device="cpu")
    for one, other in zip(alone, batched.generate(prompts, seeds)):  # one call of 2 prompts: equal up to rounding
        assert np.abs(pixels(one) - pixels(other)).max() <= 2


def test_an_explicit_call_value_overrides_the_engines_choice():
    # The engine turns PixArt's resolution binning off for sample sizes it has no bins for (the tiny zoo's 16);
    # an explicit true reaches diffusers, which refuses that sample size.
    assert load_generator(settings("tiny-pixart"), device="cpu")._extra_kwargs["use_resolution_binning"] is False
    gen = load_generator(settings("tiny-pixart", call={"use_resolution_binning": True}), device="cpu")
    with pytest.raises(ValueError, match="sample size"):
        gen.generate([PROMPT], [SEED])


def test_a_key_the_pipeline_does_not_take_is_named_with_what_it_takes():
    with pytest.raises(ConfigError) as err:
        load_generator(GeneratorSettings("pix", "zoo:tiny-pixart", call={"clip_skip": 2}), device="cpu")
    message = str(err.value)
    assert "'pix'" in message and "'clip_skip'" in message and "PixArtAlphaPipeline" in message
    assert "use_resolution_binning" in message and "negative_prompt" in message
    assert "num_inference_steps" not in message  # engine-set arguments are not offered
    with pytest.raises(ConfigError, match="'negative_promt'"):  # a typo is not swallowed by **kwargs
        load_generator(GeneratorSettings("sd", "zoo:tiny-sd", call={"negative_promt": "x"}), device="cpu")


@pytest.mark.parametrize(
    ("key", "value", "hint"),
    [
        ("num_inference_steps", 5, "'steps'"),
        ("guidance_scale", 3.0, "'guidance'"),
        ("height", 64, "'height'"),
        ("prompt", "a cat", "prompt"),
        ("generator", 1, "seed"),
        ("num_images_per_prompt", 2, "gamma"),
        ("output_type", "np", "PIL"),
        ("callback_on_step_end", "f", "callbacks"),
        ("prompt_embeds", 0.0, "tensors"),
    ],
)
def test_an_argument_the_engine_sets_is_refused_with_what_to_use(key, value, hint):
    config = {"generators": [{"name": "sd", "source": "zoo:tiny-sd", "call": {key: value}}]}
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert "'sd'" in str(err.value) and repr(key) in str(err.value) and hint in str(err.value)


@pytest.mark.parametrize(
    "call",
    [{"negative_prompt": {"a": 1}}, {"timesteps": [[1, 2]]}, {"eta": float("nan")}, {"negative_prompt": ["a"]},
     "negative_prompt = 'x'", {"not an identifier": 1}, {1: "x"}],
)
def test_values_must_be_scalars_or_flat_lists(call):
    with pytest.raises(ConfigError, match="'sd'"):
        load_config({"generators": [{"name": "sd", "source": "zoo:tiny-sd", "call": call}]})


def test_call_tables_parse_inline_and_after_the_generator(tmp_path):
    path = tmp_path / "rindex.toml"
    path.write_text(
        '[[generators]]\nname = "sd"\nsource = "zoo:tiny-sd"\ncall = { negative_prompt = "blurry", clip_skip = 1 }\n'
        '\n[[generators]]\nname = "sdxl"\nsource = "zoo:tiny-sdxl"\n'
        "\n[generators.call]\noriginal_size = [64, 64]\nguidance_rescale = 0.5\n"
        '\n[[generators]]\nname = "pix"\nsource = "zoo:tiny-pixart"\n'
    )
    sd, sdxl, pix = load_config(path).generators
    assert sd.call == {"clip_skip": 1, "negative_prompt": "blurry"}
    assert sdxl.call == {"guidance_rescale": 0.5, "original_size": (64, 64)}  # lists become tuples
    assert pix.call == {}


def test_the_call_enters_the_cache_namespace_and_no_call_keeps_the_old_one():
    cpu = torch.device("cpu")
    plain = settings("tiny-sd")
    assert "call" not in generator_namespace(plain, cpu)  # the namespace of indexes made before calls existed
    assert set(generator_namespace(plain, cpu)) == {
        "source", "revision", "scheduler", "steps", "guidance", "height", "width", "dtype"
    }
    assert generator_namespace(settings("tiny-sd", call={}), cpu) == generator_namespace(plain, cpu)

    def digest(call):
        config = load_config({"generators": [{"name": "sd", "source": "zoo:tiny-sd", "call": call}]})
        return cache_namespaces(config, cpu, "embedder-id")["sd"]

    base = digest({"negative_prompt": "blurry", "guidance_rescale": 0.7})
    assert digest({"guidance_rescale": 0.7, "negative_prompt": "blurry"}) == base  # order does not matter
    assert digest({"negative_prompt": "blurry", "guidance_rescale": 0.6}) != base  # one value changed
    assert digest({"negative_prompt": "blurry"}) != base  # one argument dropped
    no_call = load_config({"generators": [{"name": "sd", "source": "zoo:tiny-sd"}]})
    assert digest({}) == cache_namespaces(no_call, cpu, "embedder-id")["sd"]
    assert len({base, digest({}), digest({"negative_prompt": "blurry"})}) == 3


def test_rindex_info_shows_how_each_generator_is_called(tmp_path):
    from resynth_index import Attributor

    config = tmp_path / "rindex.toml"
    config.write_text(
        '[cache]\nprompt_embedder = "none"\n'
        '[[generators]]\nname = "sd"\nsource = "zoo:tiny-sd"\nsteps = 4\nscheduler = "DDIMScheduler"\n'
        'call = { negative_prompt = "blurry", clip_skip = 1 }\n'
        '[[generators]]\nname = "pix"\nsource = "zoo:tiny-pixart"\n'
        "[generators.call]\nuse_resolution_binning = false\n"
        '[[generators]]\nname = "vendor"\n'  # gallery-only: nothing to call
    )
    index = tmp_path / "index"
    with Attributor(str(config), index=index) as engine:
        assert engine.cache.info()["prompts"] == 0  # a writer creates the index; info opens it read-only
    runner = CliRunner()
    result = runner.invoke(main, ["info", "--config", str(config), "--index", str(index), "--json"])
    assert result.exit_code == 0, result.output
    calls = json.loads(result.stdout)["generator_calls"]
    assert set(calls) == {"sd", "pix"}
    assert calls["sd"] == {"source": "zoo:tiny-sd", "steps": 4, "guidance": 7.5, "height": 64, "width": 64,
                           "scheduler": "DDIMScheduler", "call": {"clip_skip": 1, "negative_prompt": "blurry"}}
    assert calls["pix"]["call"] == {"use_resolution_binning": False} and calls["pix"]["scheduler"] is None
    result = runner.invoke(main, ["info", "--config", str(config), "--index", str(index)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.split("generator_calls:")[1].splitlines()
    sd_line = next(line for line in lines if line.strip().startswith("sd:"))
    assert 'steps=4' in sd_line and "scheduler=DDIMScheduler" in sd_line and "size=64x64" in sd_line
    assert 'clip_skip=1, negative_prompt="blurry"' in sd_line
    assert any(line.strip().startswith("pix:") and "use_resolution_binning=false" in line for line in lines)
