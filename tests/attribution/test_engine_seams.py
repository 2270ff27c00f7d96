"""The engine's seams: shared models (reopen, share_models_from), the resynthesis budget, the gallery view's
protocol, and which error type each kind of mistake raises. One tiny zoo generator, no prompt embedder."""

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from resynth_index import Attributor, UsageError
from resynth_index.attribution.engine import candidate_seeds, read_prompt_file
from resynth_index.attribution.loaded import LoadedModels
from resynth_index.config import MAX_GAMMA, load_config
from resynth_index.errors import ConfigError
from resynth_index.gallery.matching import GalleryView
from resynth_index.gallery.references import Gallery
from resynth_index.images.decode import decode_image

SMALL = {
    "generators": [{"name": "a", "source": "zoo:tiny-sd"}],
    "cache": {"prompt_embedder": "none"},
    "gallery": {"fingerprint": "none"},
}


def _with_prompt(prompt: str, seed: int):
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"{prompt}\nSteps: 10, Seed: {seed}")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", pnginfo=info)
    return decode_image(buf.getvalue(), name=f"{seed}.png")


def test_reopen_shares_the_loaded_models_and_opens_its_own_cache(tmp_path):
    with Attributor(SMALL, index=tmp_path / "i", device="cpu") as writer:
        writer.cache  # noqa: B018 - creates the index
    with Attributor(SMALL, index=tmp_path / "i", device="cpu", readonly=True) as engine:
        embedder = engine.embedder
        namespaces = engine.namespaces
        cache = engine.cache
        other = engine.reopen()
        try:
            assert other.models is engine.models
            assert other.embedder is embedder and other.namespaces == namespaces
            assert other.cache is not cache
        finally:
            other.close()
        assert engine.cache is cache  # closing the reopened engine left this one's cache open


def test_share_models_from_adopts_only_what_would_load_identically(tmp_path):
    with Attributor(SMALL, index=tmp_path / "a", device="cpu") as first:
        embedder, generator = first.embedder, first.generator("a")
        same = Attributor(SMALL, index=tmp_path / "b", device="cpu")
        other_layer = Attributor({**SMALL, "embedder": {"layer": 3}}, index=tmp_path / "c", device="cpu")
        same.share_models_from(first)
        other_layer.share_models_from(first)
        assert same.models.embedder is embedder and same.generator("a") is generator
        assert other_layer.models.embedder is None  # a different [embedder] table is never adopted
        assert other_layer.models.generators["a"] is generator  # identical generator settings are
        same.close()
        other_layer.close()


def test_loaded_models_load_lazily_from_each_config_table():
    models = LoadedModels(load_config(SMALL), device=torch.device("cpu"))
    assert models.embedder is None and models.get_fingerprint() is None and models.get_prompt_embedder() is None
    assert models.get_embedder().id == ("efficientnet-lite0:imagenet:block4+texture:efficientnet-lite0:block2:gram:c256"
                                        ":w0.25+spectrum:residual3:w32:p8:mean+chroma:w0.375"
                                        "+thumbnail:box32:w0.02")
    assert models.get_inverter().id == "chain(metadata,label:efficientnet-lite0)"


def test_resynthesis_budget_leaves_misses_that_do_not_fit(tmp_path):
    with Attributor(SMALL, index=tmp_path / "i", device="cpu") as engine:
        first = engine.attribute_decoded([_with_prompt("a lighthouse on a cliff at dusk", 1)], resynthesis_budget=0.0)
        assert first[0].cache == "miss" and "resynthesize" in first[0].timings  # cost unknown: the first runs
        assert engine.resynthesis_seconds_per_prompt > 0
        skipped = engine.attribute_decoded([_with_prompt("a bowl of ramen on a wooden table", 2)],
                                           resynthesis_budget=0.0)
        assert skipped[0].cache == "miss" and "resynthesize" not in skipped[0].timings
        assert skipped[0].ok and skipped[0].prediction == "a"  # answered from cached evidence
        done = engine.attribute_decoded([_with_prompt("a bowl of ramen on a wooden table", 2)],
                                        resynthesis_budget=1e6)
        assert done[0].cache == "miss" and "resynthesize" in done[0].timings
        assert engine.attribute_decoded([_with_prompt("a bowl of ramen on a wooden table", 3)])[0].cache == "hit"
        assert engine.images_generated == 2


def test_gallery_view_loads_from_anything_with_the_protocols_attributes(tmp_path):
    config = load_config({**SMALL, "gallery": {"fingerprint": "spectrum", "semantic": False}})

    class NoModels:
        id = "never-used"

        def embed(self, images):
            raise AssertionError("gallery.semantic is off: the embedder must not be used")

    with Gallery(tmp_path / "g") as gallery:
        source = SimpleNamespace(config=config, gallery=gallery, embedder=NoModels(), fingerprint=None)
        assert GalleryView.load(source, gallery.version()) is None  # nothing enrolled


def test_mistakes_raise_the_type_that_names_them(tmp_path):
    with pytest.raises(UsageError, match="cannot read prompt list"):
        read_prompt_file(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="build.prompts"):
        Attributor({**SMALL, "build": {"prompts": str(tmp_path / "missing.txt")}}, index=tmp_path / "i",
                   device="cpu").build(progress=False)
    with pytest.raises(ConfigError, match="resynthesis.gamma"):
        load_config({"resynthesis": {"gamma": MAX_GAMMA + 1}})
    assert len(candidate_seeds("a cat", MAX_GAMMA)) == MAX_GAMMA
    with pytest.raises(ConfigError, match="resynthesis.gamma"):
        candidate_seeds("a cat", MAX_GAMMA + 1)
