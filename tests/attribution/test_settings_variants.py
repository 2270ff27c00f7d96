"""Settings variants: one model called several ways (``[[generators.variants]]``), each built and cached under its
own namespace, every image attributed to the generator's one name."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL.PngImagePlugin import PngInfo

from resynth_index import Attributor
from resynth_index.attribution.engine import PACKAGED_PROMPTS, read_prompt_file
from resynth_index.attribution.open_set import MIN_SAMPLES, calibrate_open_set, candidate_scores
from resynth_index.attribution.resynthesis import candidate_seeds, degraded_namespaces
from resynth_index.cli import main
from resynth_index.config import load_config
from resynth_index.errors import ConfigError
from resynth_index.evaluation.baselines import restrict_generators
from resynth_index.evaluation.benchmark import resolve_held_out
from resynth_index.store.keys import normalize_prompt

TOML = """
[[generators]]
name = "sd"
source = "zoo:tiny-sd"
steps = 3
aliases = ["SD 1.5"]
call = { negative_prompt = "blurry" }

[[generators.variants]]
steps = 6
scheduler = "DDIMScheduler"

[[generators.variants]]
guidance = 3.0
[generators.variants.call]
guidance_rescale = 0.5

[[generators]]
name = "sdxl"
source = "zoo:tiny-sdxl"
steps = 3
"""


def test_variants_are_entries_of_their_own_attributed_to_their_generator(tmp_path):
    path = tmp_path / "rindex.toml"
    path.write_text(TOML)
    config = load_config(path)
    sd, first, second, sdxl = config.generators
    assert [g.name for g in config.generators] == ["sd", "sd~1", "sd~2", "sdxl"]
    assert (first.variant_of, first.steps, first.scheduler, first.guidance) == ("sd", 6, "DDIMScheduler", None)
    assert first.call == {"negative_prompt": "blurry"}  # the generator's call, unchanged
    assert (second.steps, second.guidance) == (3, 3.0)
    assert second.call == {"negative_prompt": "blurry", "guidance_rescale": 0.5}  # merged over the generator's
    assert first.aliases == () and sd.aliases == ("SD 1.5",)  # what names the model stays with the generator
    assert config.attribution_names == ["sd", "sdxl"]
    assert config.attributed_to == {"sd": "sd", "sd~1": "sd", "sd~2": "sd", "sdxl": "sdxl"}


def test_eval_labels_and_held_out_generators_take_their_variants_along(tmp_path):
    path = tmp_path / "rindex.toml"
    path.write_text(TOML + '\n[[generators]]\nname = "pix"\nsource = "zoo:tiny-pixart"\n')
    config = load_config(path)
    assert resolve_held_out(config, "auto") == ["pix"]  # the last generator, not a variant
    with pytest.raises(ConfigError, match="not configured"):
        resolve_held_out(config, "sd~1")  # a variant is not a generator an image can come from
    kept = restrict_generators(config, ["sd", "pix"])
    assert [g.name for g in kept.generators] == ["sd", "sd~1", "sd~2", "pix"]


@pytest.mark.parametrize("variant, message", [
    ({"seed": 3}, r"generators\.sd\.variants\[1\]\.seed"),
    ({"steps": 3}, "exactly as its own entry does"),
    ({"steps": 0}, "must be positive"),
])
def test_a_bad_variant_is_named(variant, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"generators": [{"name": "sd", "source": "zoo:tiny-sd", "steps": 3, "variants": [variant]}]})


def test_only_runnable_generators_have_variants_and_variant_of_names_one():
    with pytest.raises(ConfigError, match="only a runnable generator"):
        load_config({"generators": [{"name": "vendor", "variants": [{"steps": 4}]}]})
    with pytest.raises(ConfigError, match="'variant_of' must name another configured generator"):
        load_config({"generators": [{"name": "sd", "source": "zoo:tiny-sd", "variant_of": "nope"}]})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    index = tmp_path_factory.mktemp("index")
    config = tmp_path_factory.mktemp("config") / "rindex.toml"
    config.write_text(TOML)
    with Attributor(str(config), index=index, device="cpu") as engine:
        engine.build(read_prompt_file(PACKAGED_PROMPTS)[:MIN_SAMPLES], progress=False)
    return str(config), index


def test_an_image_made_as_a_variant_is_attributed_to_its_generator(built, tmp_path):
    config, index = built
    prompt = read_prompt_file(PACKAGED_PROMPTS)[0]
    with Attributor(config, index=index, device="cpu") as engine:
        assert len(set(engine.namespaces.values())) == 4  # each variant is cached under its own namespace
        seed = candidate_seeds(normalize_prompt(prompt), 1)[0]
        made = {g: engine.generator(g).generate([prompt], [seed])[0] for g in ("sd", "sd~1")}
        assert np.abs(np.asarray(made["sd"], float) - np.asarray(made["sd~1"], float)).mean() > 1
        info = PngInfo()
        info.add_text("parameters", f"{prompt}\nSteps: 6, CFG scale: 7.5")  # the prompt, no seed: no replay
        path = tmp_path / "variant.png"
        made["sd~1"].save(path, pnginfo=info)
        result = engine.attribute(path)[0]
    assert result.prediction == "sd"
    assert set(result.scores) == set(result.evidence) == {"sd", "sdxl"}  # no variant name reaches the answer
    restricted = [e for e in result.evidence["sd"] if e.kind == "restricted"]
    # the variant's own candidate of this prompt is the image itself: the generator's evidence includes it
    assert max(e.score for e in restricted) > 0.999 and {e.seed for e in restricted} == {seed}


def test_the_open_set_leaves_a_generator_out_with_its_variants(built):
    config, index = built
    with Attributor(config, index=index, device="cpu") as engine:
        ns, sc = engine.namespaces, engine.config.scoring
        degraded = degraded_namespaces(engine.config.resynthesis, ns)
        attributed_to = engine.config.attributed_to
        rows = candidate_scores(engine.cache, ns, sc, degraded, attributed_to=attributed_to)
        cal = calibrate_open_set(engine.cache, ns, sc, degraded, attributed_to=attributed_to)
    assert {t for t, _ in rows} == {"sd", "sdxl"}  # the variants' candidates count as sd's
    assert all(set(scores) == {"sd", "sdxl"} for _, scores in rows)
    assert cal.samples == len(rows) and cal.threshold is not None


def test_info_shows_each_variants_call(built):
    config, index = built
    result = CliRunner().invoke(main, ["info", "--config", config, "--index", str(index), "--json"])
    assert result.exit_code == 0, result.output
    calls = json.loads(result.stdout)["generator_calls"]
    assert calls["sd~1"]["variant_of"] == "sd" and calls["sd~1"]["steps"] == 6
    assert calls["sd~1"]["scheduler"] == "DDIMScheduler" and "variant_of" not in calls["sd"]
    # a generator and its variants may be near copies, but they are one name: no extra seeds to tell them apart
    data = json.loads(result.stdout)
    assert data["siblings"] == [["sd", "sd~2"]]  # the variant at another guidance
    assert data["sibling_seeds_per_generator"] == {}
