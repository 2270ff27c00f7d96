import textwrap

import pytest

from resynth_index import config as config_module
from resynth_index.config import Config, ConfigError, load_config


def test_no_config_is_the_embedded_default():
    cfg = load_config(None)
    assert [g.source for g in cfg.generators] == [f"zoo:{n}" for n in config_module.ZOO_DEFAULT_GENERATORS]
    assert cfg.embedder.kind == "efficientnet-lite0"
    assert cfg.inverter.chain == ("metadata", "label")
    assert cfg.resynthesis.gamma >= 1


def test_the_embedded_default_builds_the_first_packaged_prompts_and_a_config_builds_them_all(tmp_path):
    from resynth_index.attribution.resynthesis import PACKAGED_PROMPTS, prompts_to_build, read_prompt_file

    packaged = read_prompt_file(PACKAGED_PROMPTS)
    assert len(packaged) > config_module.EMBEDDED_BUILD_LIMIT
    assert prompts_to_build(load_config(None).build) == packaged[: config_module.EMBEDDED_BUILD_LIMIT]
    path = tmp_path / "rindex.toml"
    path.write_text('[[generators]]\nname = "x"\nsource = "zoo:tiny-sd"\n')
    assert prompts_to_build(load_config(path).build) == packaged
    assert prompts_to_build(load_config({"build": {"limit": 5}}).build) == packaged[:5]


def test_module_docstring_example_parses(tmp_path):
    # The documented example lists every key; it must stay valid.
    example = config_module.__doc__.split("Example (every key, with its default unless marked)::", 1)[1]
    path = tmp_path / "rindex.toml"
    path.write_text(textwrap.dedent(example))
    cfg = load_config(path)
    assert cfg.generators[0].name == "sd15"
    assert cfg.generators[0].scheduler == "DPMSolverMultistepScheduler"
    assert cfg.scoring.mode == "both"


@pytest.mark.parametrize(
    "data, named",
    [
        ({"scoring": {"agregate": "max"}}, "scoring.agregate"),
        ({"devise": "cpu"}, "devise"),
        ({"generators": [{"name": "a", "source": "zoo:tiny-sd", "stepz": 3}]}, "generators.stepz"),
    ],
)
def test_unknown_key_is_named(data, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(data)


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"scoring": {"aggregate": "median"}}, "scoring.aggregate"),
        ({"resynthesis": {"gamma": 0}}, "resynthesis.gamma"),
        ({"resynthesis": {"gamma": "4"}}, "must be an integer"),
        ({"resynthesis": {"sibling_seeds": 17}}, "'resynthesis.sibling_seeds' must be between 0 and 16"),
        ({"resynthesis": {"colour_copies": -1}}, "'resynthesis.colour_copies' must be between 0 and 16"),
        ({"resynthesis": {"colour_copies": "grey"}}, "resynthesis.colour_copies"),
        ({"generators": [{"source": "zoo:tiny-sd"}]}, "needs a 'name'"),
        ({"generators": [{"name": "real", "source": "x"}]}, "reserved"),
        ({"gallery": {"fingerprint": "wavelet"}}, "gallery.fingerprint"),
        ({"gallery": {"open_set": "yes"}}, "true or false"),
        ({"generators": [{"name": "a", "source": "x"}, {"name": "a", "source": "y"}]}, "duplicated"),
        ({"inverter": {"chain": ["metadata", "ocr"]}}, "inverter.chain"),
        ({"threads": -1}, "'threads' must be between 0 and"),
        ({"threads": "auto"}, "'threads' must be an integer"),
        ({"generators": [{"name": "a", "source": "zoo:tiny-sd", "batch_invariant": "no"}]},
         "'generators.batch_invariant' must be true or false"),
    ],
)
def test_bad_values_are_named(data, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(data)


def test_toml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("device = \n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_dict_and_partial_tables_keep_other_defaults():
    cfg = load_config({"scoring": {"aggregate": "mean"}, "generators": [{"name": "x", "source": "zoo:tiny-sd"}]})
    assert isinstance(cfg, Config)
    assert cfg.scoring.aggregate == "mean"
    assert cfg.scoring.distance == "cosine"
    assert cfg.generator("x").source == "zoo:tiny-sd"
    with pytest.raises(ConfigError, match="no generator named"):
        cfg.generator("y")


def test_a_generator_without_source_is_gallery_only():
    from resynth_index.models.generators import load_generator

    config = load_config({"generators": [{"name": "vendor-x"}, {"name": "sd", "source": "zoo:tiny-sd"}]})
    assert config.generator("vendor-x").source == ""
    with pytest.raises(ConfigError, match="gallery-only"):
        load_generator(config.generator("vendor-x"), device="cpu")


def test_threads_and_batch_invariant_keys():
    cfg = load_config(None)
    assert cfg.threads == 0  # automatic
    assert all(g.batch_invariant is None for g in cfg.generators)  # the device's default
    cfg = load_config({"threads": 3, "generators": [{"name": "a", "source": "zoo:tiny-sd", "batch_invariant": False}]})
    assert cfg.threads == 3
    assert cfg.generators[0].batch_invariant is False


def test_sibling_seeds_follow_the_candidate_seeds_within_the_prompts_range():
    from resynth_index.config import MAX_GAMMA

    assert load_config({"resynthesis": {"gamma": 4, "sibling_seeds": 3}}).resynthesis.sibling_positions == range(4, 7)
    assert load_config({"resynthesis": {"sibling_seeds": 0}}).resynthesis.sibling_positions == range(1, 1)
    # a prompt's seed range holds MAX_GAMMA seeds: γ at the maximum leaves none for siblings, and is not an error
    assert len(load_config({"resynthesis": {"gamma": MAX_GAMMA - 1, "sibling_seeds": 4}}).resynthesis
               .sibling_positions) == 1
    assert not load_config({"resynthesis": {"gamma": MAX_GAMMA}}).resynthesis.sibling_positions
