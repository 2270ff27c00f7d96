"""One forward pass for an inverter and the embedder that share a network: the same results as separate passes.

EfficientNet-Lite0 with its real ImageNet weights (label inverter + block-4 embedder, torch and ONNX Runtime),
and a tiny random-init open_clip model (CLIP interrogator + open_clip embedder, final features and a block's
CLS token). Every batch mixes images whose prompt comes from metadata with images the model must invert.
"""

import io

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from resynth_index.errors import ConfigError, UsageError
from resynth_index.images.decode import decode_image
from resynth_index.models.backbones import efficientnet_preprocess, load_efficientnet_lite0
from resynth_index.models.embedders import load_embedder
from resynth_index.models.inverters import (
    ChainInverter,
    ClipInterrogator,
    LabelInverter,
    MetadataInverter,
    default_inverter,
)
from resynth_index.models.shared_forward import shared_forward


def _with_prompt(image: Image.Image, prompt: str):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"{prompt}\nSteps: 10, Seed: 1")
    buf = io.BytesIO()
    image.save(buf, "PNG", pnginfo=info)
    return decode_image(buf.getvalue(), name=prompt)


@pytest.fixture(scope="module")
def images():
    """Five images, the second and the fifth carrying their prompt: metadata answers them, the model the rest."""
    skdata = pytest.importorskip("skimage.data")
    rng = np.random.default_rng(0)
    return [
        decode_image(Image.fromarray(skdata.coffee()), name="coffee"),
        _with_prompt(Image.fromarray(skdata.astronaut()), "an astronaut in a white suit"),
        decode_image(Image.fromarray(skdata.chelsea()), name="chelsea"),
        decode_image(Image.fromarray(rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)), name="noise"),
        _with_prompt(Image.fromarray(skdata.rocket()), "a rocket on its launch pad"),
    ]


class _RowCounter:
    """Counts the images that pass through a module (rows of its input batches)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.rows = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, _module, inputs, _output):
        self.rows += int(inputs[0].shape[0])

    def close(self) -> None:
        self._handle.remove()


def _separate(inverter, embedder, ims):
    return inverter.invert(ims), embedder.embed([d.image for d in ims])


# ------------------------------------------------------------------------------------ EfficientNet-Lite0


def test_efficientnet_default_pair_runs_the_network_once_with_identical_results(images):
    embedder = load_embedder("efficientnet-lite0", device="cpu", batch_size=2, runtime="torch")  # 3 batches
    inverter = default_inverter(device="cpu")
    shared = shared_forward(inverter, embedder)
    assert shared is not None and isinstance(shared.stage, LabelInverter)

    model = load_efficientnet_lite0("cpu")
    stem, head = _RowCounter(model.conv_stem), _RowCounter(model.conv_head)
    try:
        done = shared.invert_and_embed(images)
        assert stem.rows == len(images)  # every image through the network once
        assert head.rows == 3  # the layers after the embedding only for the images metadata left to the model
        stem.rows = head.rows = 0
        inversions, vectors = _separate(inverter, embedder, images)
        assert (stem.rows, head.rows) == (len(images) + 3, 3)  # the old path: two passes for those three
    finally:
        stem.close(), head.close()

    np.testing.assert_array_equal(done.embeddings, vectors)  # bit for bit, metadata images included
    assert done.embeddings.dtype == np.float32
    assert done.inversions == inversions
    assert [i.source for i in done.inversions] == ["label:efficientnet-lite0", "metadata:parameters",
                                                   "label:efficientnet-lite0", "label:efficientnet-lite0",
                                                   "metadata:parameters"]
    assert done.inversions[0].prompt == "a photo of an espresso"
    assert done.embed_seconds > 0 and done.invert_seconds >= 0


def test_embed_with_gives_the_network_logits_for_the_asked_rows_only(images):
    embedder = load_embedder("efficientnet-lite0", device="cpu", batch_size=2, runtime="torch")
    pixels = [d.image for d in images]
    vectors, logits = embedder.embed_with(pixels, "logits", [3, 0, 2])
    np.testing.assert_array_equal(vectors, embedder.embed(pixels))
    assert tuple(logits.shape) == (3, 1000)  # ascending rows: 0, 2, 3
    x = torch.stack([efficientnet_preprocess(pixels[i]) for i in (0, 2, 3)])
    with torch.inference_mode():
        direct = embedder.model(x)
    torch.testing.assert_close(logits, direct, atol=1e-4, rtol=0)
    assert embedder.embed_with(pixels, "logits", [])[1].numel() == 0
    with pytest.raises(UsageError):
        embedder.embed_with(pixels, "image_features", [0])
    with pytest.raises(UsageError):
        embedder.embed_with(pixels, "logits", [5])


def test_final_layer_embedder_shares_too(images):
    embedder = load_embedder("efficientnet-lite0", layer=0, device="cpu", batch_size=4, runtime="torch")
    inverter = default_inverter(device="cpu")
    done = shared_forward(inverter, embedder).invert_and_embed(images)
    inversions, vectors = _separate(inverter, embedder, images)
    np.testing.assert_array_equal(done.embeddings, vectors)
    assert done.inversions == inversions


def test_all_prompts_from_metadata_is_the_embedding_alone(images):
    embedder = load_embedder("efficientnet-lite0", device="cpu", runtime="torch")
    ims = [images[1], images[4]]
    model = load_efficientnet_lite0("cpu")
    head = _RowCounter(model.conv_head)
    try:
        done = shared_forward(default_inverter(device="cpu"), embedder).invert_and_embed(ims)
    finally:
        head.close()
    assert head.rows == 0
    np.testing.assert_array_equal(done.embeddings, embedder.embed([d.image for d in ims]))
    assert [i.prompt for i in done.inversions] == ["an astronaut in a white suit", "a rocket on its launch pad"]


def test_onnxruntime_shared_pass_matches_its_separate_passes_and_torch(images):
    model = load_efficientnet_lite0("cpu")
    x = torch.stack([efficientnet_preprocess(d.image) for d in images[:2]])
    with torch.inference_mode():
        before = model(x)
    ort = load_embedder("efficientnet-lite0", device="cpu", batch_size=2, runtime="onnxruntime")
    assert ort.runtime == "onnxruntime" and ort.id == "efficientnet-lite0:imagenet:block4"
    # Building the ONNX sessions leaves the shared torch network as it was (eval mode, same outputs).
    assert not any(m.training for m in model.modules())
    with torch.inference_mode():
        torch.testing.assert_close(model(x), before, atol=0, rtol=0)

    torch_emb = load_embedder("efficientnet-lite0", device="cpu", batch_size=2, runtime="torch")
    inverter = default_inverter(device="cpu")
    done = shared_forward(inverter, ort).invert_and_embed(images)
    inversions, vectors = _separate(inverter, ort, images)
    np.testing.assert_array_equal(done.embeddings, vectors)
    assert done.inversions == inversions  # ONNX Runtime's logits decide as torch's label inverter does
    # ONNX Runtime against torch: the tolerance the runtime is documented with.
    np.testing.assert_allclose(vectors, torch_emb.embed([d.image for d in images]), atol=1e-4, rtol=0)


def test_runtime_option_is_checked():
    with pytest.raises(ConfigError, match="embedder.runtime"):
        load_embedder("efficientnet-lite0", device="cpu", runtime="tensorrt")
    with pytest.raises(ConfigError, match="embedder.runtime"):
        load_embedder("open_clip", model="ViT-B-32", device="cpu", runtime="onnxruntime")
    # ONNX Runtime is a dependency, so "auto" takes it on the CPU: the build and the README's main job rely on it
    assert load_embedder("efficientnet-lite0", device="cpu").runtime == "onnxruntime"


def test_models_that_do_not_coincide_run_separately():
    effnet = load_embedder("efficientnet-lite0", device="cpu", runtime="torch")
    assert shared_forward(MetadataInverter(), effnet) is None
    assert shared_forward(None, effnet) is None
    effnet.share_forward = False
    try:
        assert shared_forward(default_inverter(device="cpu"), effnet) is None
    finally:
        effnet.share_forward = True


# ---------------------------------------------------------------------------------------------- open_clip


@pytest.fixture(scope="module")
def tiny_clip(register_tiny_clip):
    return register_tiny_clip("rindex-test-shared-clip", vision_layers=3)


@pytest.mark.parametrize("layer", [None, 2])
def test_open_clip_interrogator_and_embedder_share_the_image_tower(images, tiny_clip, layer):
    embedder = load_embedder("open_clip", model=tiny_clip, pretrained=None, layer=layer, device="cpu", batch_size=2)
    interrogator = ClipInterrogator(tiny_clip, None, device="cpu", margin=-1.0, max_modifiers=2)
    inverter = ChainInverter([MetadataInverter(), interrogator])
    shared = shared_forward(inverter, embedder)
    assert shared is not None and shared.stage is interrogator

    blocks = embedder.model.visual.transformer.resblocks
    first, last = _RowCounter(blocks[0]), _RowCounter(blocks[-1])
    try:
        done = shared.invert_and_embed(images)
        once = (first.rows, last.rows)
        first.rows = last.rows = 0
        inversions, vectors = _separate(inverter, embedder, images)
        twice = (first.rows, last.rows)
    finally:
        first.close(), last.close()
    np.testing.assert_array_equal(done.embeddings, vectors)
    assert done.inversions == inversions
    assert [i.source for i in done.inversions].count(interrogator.id) == 3
    assert once[0] == len(images) and twice[0] == len(images) + 3  # the tower's first block: once per image
    if layer is None:
        assert once[1] == len(images)
    else:  # the layer embedder stops at block 2, the interrogator needs the whole tower
        assert twice[1] == 3 and once[1] >= 3


def test_open_clip_with_the_label_inverter_does_not_share(tiny_clip):
    embedder = load_embedder("open_clip", model=tiny_clip, pretrained=None, device="cpu")
    assert shared_forward(default_inverter(device="cpu"), embedder) is None
    other = load_embedder("efficientnet-lite0", device="cpu", runtime="torch")
    assert shared_forward(ClipInterrogator(tiny_clip, None, device="cpu"), other) is None
