"""The query path runs EfficientNet-Lite0 once per image on the default configuration, with the same
attributions as two passes; ONNX Runtime and torch attribute the zoo samples alike."""

import dataclasses
import io

import numpy as np
import pytest
from PIL import PngImagePlugin

from resynth_index import Attributor
from resynth_index.attribution.engine import PACKAGED_PROMPTS, read_prompt_file
from resynth_index.evaluation.samples import read_manifest, write_samples
from resynth_index.models.backbones import EFFICIENTNET_INPUT_SIZE, load_efficientnet_lite0
from resynth_index.models.embedders import embedder_from_config, load_embedder

SMALL = {
    "generators": [{"name": "a", "source": "zoo:tiny-sd"}, {"name": "b", "source": "zoo:tiny-pixart"}],
    "cache": {"prompt_embedder": "none"},
    "gallery": {"fingerprint": "none"},
}


@pytest.fixture(scope="module")
def index_and_samples(tmp_path_factory):
    """A 3-prompt index over two zoo generators, 3 held-out samples each (no metadata) and one image carrying
    a built prompt in its metadata; every query's prompt written through once."""
    index = tmp_path_factory.mktemp("index")
    samples = tmp_path_factory.mktemp("samples")
    prompts = read_prompt_file(PACKAGED_PROMPTS)[:3]
    with Attributor(SMALL, index=index, device="cpu") as engine:
        engine.build(prompts, progress=False)
        write_samples(engine, samples, per_generator=3)
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", f"{prompts[0]}\nSteps: 10, Seed: 5")
        image = engine.generator("a").generate([prompts[0]], [5])[0]
        buf = io.BytesIO()
        image.save(buf, format="PNG", pnginfo=info)
        (samples / "with_prompt.png").write_bytes(buf.getvalue())
        paths = sorted(str(samples / f) for f in read_manifest(samples / "manifest.csv")) + [
            str(samples / "with_prompt.png")
        ]
        engine.attribute(paths)  # write the label prompts through
    return index, paths


def _summary(results):
    return [(r.prompt, r.prompt_source, r.cache, r.prediction, r.scores,
             {g: [(e.score, e.prompt, e.seed, e.kind) for e in ev] for g, ev in r.evidence.items()})
            for r in results]


class _Rows:
    """Rows through a module at the network's input size; ``native`` counts the others (the texture statistics
    read each image at its own size, in a pass of their own)."""

    def __init__(self, module):
        self.rows = self.native = 0
        self.handle = module.register_forward_hook(self.hook)

    def hook(self, _module, inputs, _output):
        if inputs[0].shape[-1] == EFFICIENTNET_INPUT_SIZE:
            self.rows += int(inputs[0].shape[0])
        else:
            self.native += int(inputs[0].shape[0])


def test_default_query_runs_the_network_once_per_image_with_identical_attributions(index_and_samples):
    index, paths = index_and_samples
    with Attributor(SMALL, index=index, device="cpu") as engine:
        # the configured embedder (its id, so the index's namespaces), run in torch so the hook sees every pass
        engine.models.embedder = embedder_from_config(dataclasses.replace(engine.config.embedder, runtime="torch"),
                                                      "cpu")
        stem = _Rows(load_efficientnet_lite0("cpu").conv_stem)
        try:
            shared = engine.attribute(paths)
            once, native = stem.rows, stem.native
            stem.rows = 0
            engine.embedder.share_forward = False
            separate = engine.attribute(paths)
            twice = stem.rows
        finally:
            stem.handle.remove()
    assert once == len(paths)  # one pass per image
    assert native == len(paths)  # and the texture statistics once per image, at the image's own size
    assert twice == 2 * len(paths) - 1  # the old path: two for every image the label model inverts
    assert all(r.ok and r.cache == "hit" for r in shared)
    assert shared[-1].prompt_source == "metadata:parameters"
    assert {r.prompt_source for r in shared[:-1]} == {"label:efficientnet-lite0"}
    assert _summary(shared) == _summary(separate)  # every score and every piece of evidence, exactly
    assert {"decode", "invert", "embed", "lookup", "score"} <= set(shared[0].timings)


def test_onnxruntime_attributes_the_zoo_samples_as_torch_does(index_and_samples):
    index, paths = index_and_samples
    out, torch_rows = {}, {}
    for runtime in ("torch", "onnxruntime"):
        with Attributor(SMALL, index=index, device="cpu") as engine:
            engine.models.embedder = load_embedder("efficientnet-lite0", device="cpu", runtime=runtime)
            stem = _Rows(load_efficientnet_lite0("cpu").conv_stem)
            try:
                out[runtime] = engine.attribute(paths, resynthesize=False)
            finally:
                stem.handle.remove()
            torch_rows[runtime] = stem.rows
    assert torch_rows == {"torch": len(paths), "onnxruntime": 0}  # ONNX Runtime gives the labels too
    for t, o in zip(out["torch"], out["onnxruntime"]):
        assert (o.prompt, o.prompt_source, o.cache, o.prediction) == (t.prompt, t.prompt_source, t.cache, t.prediction)
        assert list(o.scores) == list(t.scores)  # the same ranking
        np.testing.assert_allclose(list(o.scores.values()), list(t.scores.values()), atol=1e-4)
