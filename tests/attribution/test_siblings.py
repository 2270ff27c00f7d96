"""Fine-tune siblings: generators whose candidates are near copies are found on the cache and ranked among
themselves by their prototypes alone."""

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from resynth_index import Attributor
from resynth_index.attribution.engine import PACKAGED_PROMPTS, read_prompt_file
from resynth_index.attribution.prototypes import MIN_PER_GENERATOR
from resynth_index.attribution.resynthesis import candidate_seeds, generate_candidates, sibling_seed_stores
from resynth_index.cli import main
from resynth_index.evaluation.samples import read_benchmark, write_samples
from resynth_index.store.keys import normalize_prompt

# The same UNet called at a guidance a tenth apart: the same prompt and seed give near copies, as a light
# fine-tune does. tiny-sdxl is unrelated.
GENERATORS = [
    {"name": "base", "source": "zoo:tiny-sd"},
    {"name": "close", "source": "zoo:tiny-sd", "guidance": 7.4},
    {"name": "sdxl", "source": "zoo:tiny-sdxl"},
]
# one extra seed per sibling keeps the fixture's build short; the count is a parameter like any other
CONFIG = {"generators": GENERATORS, "resynthesis": {"sibling_seeds": 1}}


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    index = tmp_path_factory.mktemp("index")
    samples = tmp_path_factory.mktemp("samples")
    with Attributor(CONFIG, index=index, device="cpu") as engine:
        engine.build(read_prompt_file(PACKAGED_PROMPTS)[:MIN_PER_GENERATOR], progress=False)
        write_samples(engine, samples, per_generator=1)
    return index, samples


def test_near_copies_are_siblings_and_rank_by_their_prototypes(index):
    idx, samples = index
    item = next(it for it in read_benchmark(samples / "manifest.csv") if it.generator == "base")
    with Image.open(samples / item.file) as im:
        image = im.convert("RGB")
    with Attributor(CONFIG, index=idx, device="cpu", readonly=True) as engine:
        family = frozenset({"base", "close"})
        assert engine.siblings() == {"base": family, "close": family}
        result = engine.attribute(image, resynthesize=False)[0]
        protos = engine.prototypes()
        query = engine.embedder.embed([image])[0]
        proto = protos.scores(query)
        weight = engine.config.scoring.prototype_weight
        # the class means fit every block but the thumbnail, which the family's second stage fits alone
        *fitted, thumbnail = engine.embedding_blocks()
        assert protos.columns == (0, sum(fitted)) and thumbnail == 3 * 32 * 32
        assert engine.open_set_prototypes().columns == (0, sum(fitted))
        (stage,) = protos.siblings
        assert set(stage.prototypes.sums) == family
        assert stage.prototypes.columns == (sum(fitted), sum(fitted) + thumbnail)
        first = dataclasses.replace(protos, siblings=()).scores(query)
        thumb = stage.prototypes.cosines(query, ["base", "close"])[0]
    # the two share their best similarity, so only the prototypes' difference separates them
    assert result.scores["base"] - result.scores["close"] == pytest.approx(weight * (proto["base"] - proto["close"]),
                                                                           abs=1e-5)
    # and that is the class means' difference moved by the thumbnail stage's
    assert proto["base"] - proto["close"] == pytest.approx(first["base"] - first["close"]
                                                           + stage.gain * (thumb[0] - thumb[1]), abs=1e-5)
    assert proto["sdxl"] == first["sdxl"]


def test_info_lists_the_sibling_groups(index, tmp_path):
    idx, _ = index
    cfg = tmp_path / "c.toml"
    cfg.write_text("".join("[[generators]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in g.items())
                           for g in GENERATORS))
    out = CliRunner().invoke(main, ["info", "--index", str(idx), "--config", str(cfg), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["siblings"] == [["base", "close"]]
    text = CliRunner().invoke(main, ["info", "--index", str(idx), "--config", str(cfg)])
    assert "siblings: base, close" in text.output


def test_unrelated_generators_have_no_siblings(index):
    idx, _ = index
    with Attributor({"generators": [GENERATORS[0], GENERATORS[2]]}, index=idx, device="cpu", readonly=True) as engine:
        assert engine.prototypes() is not None and engine.siblings() == {}


def test_siblings_get_extra_seeds_that_only_their_prototypes_read(index):
    idx, _ = index
    prompts = read_prompt_file(PACKAGED_PROMPTS)[:MIN_PER_GENERATOR]
    n = len(prompts)
    with Attributor(CONFIG, index=idx, device="cpu") as engine:
        rc = engine.config.resynthesis
        copies, namespaces, k = rc.copies, engine.namespaces, rc.sibling_seeds
        assert k >= 1
        again = engine.build(prompts, progress=False)
        assert (again.images, again.sibling_seeds) == (0, ("base", "close"))  # the fixture's build made them
        info = engine.info()
        assert info["sibling_seeds_per_generator"] == {"base": k * n, "close": k * n}
        assert info["vectors_per_generator"] == {"base": n, "close": n, "sdxl": n}
        assert info["degraded_copies_per_generator"] == {"base": (1 + k) * n * copies, "close": (1 + k) * n * copies,
                                                         "sdxl": n * copies}
        assert engine.prototypes().counts == {"base": (1 + k) * n * (1 + copies), "close": (1 + k) * n * (1 + copies),
                                              "sdxl": n * (1 + copies)}
        # the seeds after the prompt's candidate, and the images γ = 1 + k would have made with them
        stores = sibling_seed_stores(rc, namespaces)
        got = engine.cache.lookup(prompts[0], {"base": stores.namespaces["base"]}).candidates["base"]
        assert got.seeds == candidate_seeds(normalize_prompt(prompts[0]), 1 + k)[1:]
        wide = generate_candidates("base", prompts[:1], settings=dataclasses.replace(rc, gamma=1 + k),
                                   generator=engine.generator, embedder=engine.embedder).vectors[0, 1:]
        wide = wide / np.linalg.norm(wide, axis=1, keepdims=True)
        assert np.einsum("ij,ij->i", got.vectors, wide).min() > 0.9999
    # The query-time evidence reads the same namespaces either way; with none, the prototypes read only the
    # candidates. Another count is another namespace.
    with Attributor({**CONFIG, "resynthesis": {"sibling_seeds": 0}}, index=idx, device="cpu",
                    readonly=True) as engine:
        assert engine.namespaces == namespaces and engine.info()["sibling_seeds_per_generator"] == {}
        assert engine.prototypes().counts == {g: n * (1 + copies) for g in namespaces}
    fewer = sibling_seed_stores(dataclasses.replace(rc, sibling_seeds=k - 1 or 2), namespaces)
    assert not set(fewer.namespaces.values()) & set(stores.namespaces.values())
