"""Embedders: real EfficientNet-Lite0 weights and a seeded random-init open_clip ViT-B-32, on CPU."""

import numpy as np
import pytest
from PIL import Image

from resynth_index.models.backbones import efficientnet_preprocess, load_efficientnet_lite0
from resynth_index.models.embedders import load_embedder
from resynth_index.errors import ConfigError, ModelNotAvailableError


@pytest.fixture(scope="module")
def photos():
    skdata = pytest.importorskip("skimage.data")
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (96, 160, 3), dtype=np.uint8))
    return [
        Image.fromarray(skdata.coffee()),
        Image.fromarray(skdata.chelsea()),
        Image.fromarray(skdata.rocket()),
        noise,
        Image.fromarray(skdata.camera()).convert("L"),  # greyscale input is converted
    ]


@pytest.fixture(scope="module")
def effnet():
    return load_embedder("efficientnet-lite0", layer=0, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def clip_final():
    return load_embedder("open_clip", model="ViT-B-32", pretrained=None, device="cpu", batch_size=3)


@pytest.fixture(scope="module")
def clip_layer6():
    return load_embedder("open_clip", model="ViT-B-32", pretrained=None, layer=6, device="cpu", batch_size=3)


def _check_rows(e, x, n):
    assert x.dtype == np.float32
    assert x.shape == (n, e.dim)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(x).all()


def test_efficientnet_rows_deterministic_and_batch_independent(effnet, photos):
    assert effnet.id == "efficientnet-lite0:imagenet:pool"
    assert effnet.dim == 1280
    a = effnet.embed(photos)  # batch_size=2: three internal batches, the last one partial
    _check_rows(effnet, a, len(photos))
    np.testing.assert_array_equal(a, effnet.embed(photos))
    singles = np.concatenate([effnet.embed([im]) for im in photos])
    np.testing.assert_allclose(a, singles, atol=1e-5)
    # Different pictures are different points; the features are not degenerate.
    sims = a @ a.T
    assert sims[0, 1] < 0.9 and sims[1, 2] < 0.9
    assert effnet.embed([]).shape == (0, 1280)


def test_efficientnet_intermediate_stage_is_the_default_and_differs_from_final(effnet, photos):
    stage = load_embedder("efficientnet-lite0", device="cpu")
    assert stage.id == "efficientnet-lite0:imagenet:block4" and stage.dim == 80
    assert stage.model is effnet.model  # one network, two read-outs
    a = stage.embed(photos)
    _check_rows(stage, a, len(photos))
    np.testing.assert_array_equal(a, stage.embed(photos))
    np.testing.assert_allclose(a, np.concatenate([stage.embed([im]) for im in photos]), atol=1e-5)
    assert load_embedder("efficientnet-lite0", layer=2, device="cpu").dim == 24
    first = load_embedder("efficientnet-lite0", layer=1, device="cpu")  # a depthwise-separable stage
    assert first.dim == 16 and first.embed(photos[:1]).shape == (1, 16)
    # Same images, different geometry: pairwise similarities are not those of the final features.
    final = effnet.embed(photos)
    assert not np.allclose(a @ a.T, final @ final.T, atol=0.05)


def test_efficientnet_loaded_once_and_real_weights(effnet, photos):
    assert load_efficientnet_lite0("cpu") is effnet.model
    x = efficientnet_preprocess(photos[1]).unsqueeze(0)
    assert tuple(x.shape) == (1, 3, 224, 224)
    import torch

    with torch.inference_mode():
        top = int(effnet.model(x).argmax())
    assert top in (281, 282, 285)  # tabby, tiger cat, Egyptian cat: the packaged ImageNet weights are real


def test_open_clip_final_and_intermediate_layer(clip_final, clip_layer6, photos):
    assert clip_final.id == "open_clip:ViT-B-32:random-seed0:final"
    assert clip_layer6.id == "open_clip:ViT-B-32:random-seed0:layer6"
    assert clip_final.id != clip_layer6.id
    assert (clip_final.dim, clip_layer6.dim) == (512, 768)
    assert clip_final.model is clip_layer6.model  # one load per process

    imgs = photos[:4]
    f = clip_final.embed(imgs)
    m = clip_layer6.embed(imgs)
    _check_rows(clip_final, f, 4)
    _check_rows(clip_layer6, m, 4)
    np.testing.assert_array_equal(m, clip_layer6.embed(imgs))
    np.testing.assert_allclose(m[:1], clip_layer6.embed(imgs[:1]), atol=1e-5)
    np.testing.assert_allclose(f[3:], clip_final.embed(imgs[3:]), atol=1e-5)
    # The intermediate layer is a different feature space, not the final one under another name.
    assert f.shape[1] != m.shape[1]
    gram_f, gram_m = f @ f.T, m @ m.T
    assert np.abs(gram_f - gram_m).max() > 1e-3
    # The hook was removed: the final embedding is unchanged after an intermediate-layer pass.
    np.testing.assert_allclose(clip_final.embed(imgs[:2]), f[:2], atol=1e-6)


def test_open_clip_random_init_is_reproducible(clip_layer6, photos):
    from resynth_index.models import backbones

    backbones._OPEN_CLIP_CACHE.clear()
    fresh = load_embedder("open_clip", model="ViT-B-32", layer=6, device="cpu")
    assert fresh.model is not clip_layer6.model
    np.testing.assert_allclose(fresh.embed(photos[:2]), clip_layer6.embed(photos[:2]), atol=1e-5)


def test_open_clip_errors():
    with pytest.raises(ModelNotAvailableError, match="laion2b_s34b_b79k"):
        load_embedder("open_clip", model="ViT-B-32", pretrained="laion2b_s34b_b79k", device="cpu")
    with pytest.raises(ModelNotAvailableError, match="hf-hub:nobody/no-such-clip"):
        load_embedder("open_clip", model="ViT-B-32", pretrained="hf-hub:nobody/no-such-clip", device="cpu")
    with pytest.raises(ModelNotAvailableError, match="unknown model"):
        load_embedder("open_clip", model="ViT-Q-99", device="cpu")
    with pytest.raises(ConfigError, match="layer"):
        load_embedder("open_clip", model="ViT-B-32", layer=13, device="cpu")
    with pytest.raises(ConfigError):
        load_embedder("open_clip", device="cpu")
    with pytest.raises(ConfigError, match="unknown embedder"):
        load_embedder("resnet-9000", device="cpu")
    with pytest.raises(ConfigError, match="layer"):
        load_embedder("efficientnet-lite0", layer=8, device="cpu")
