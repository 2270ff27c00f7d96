"""The default embedding: EfficientNet-Lite0 block 4 joined with a native-resolution residual spectrum."""

import numpy as np
import pytest
from PIL import Image

from resynth_index.config import EmbedderConfig, load_config
from resynth_index.errors import ConfigError
from resynth_index.models.embedders import FingerprintedEmbedder, embedder_from_config, load_embedder
from resynth_index.models.fingerprints import load_fingerprint


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    smooth = np.repeat(np.repeat(rng.integers(0, 255, (8, 8, 3)), 8, 0), 8, 1).astype(np.uint8)
    return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), Image.fromarray(smooth),
            Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))]


def test_default_config_joins_the_spectrum_and_the_cosine_splits_by_weight(images):
    emb = embedder_from_config(EmbedderConfig(runtime="torch"), device="cpu")
    assert isinstance(emb, FingerprintedEmbedder)
    assert emb.id == "efficientnet-lite0:imagenet:block4+spectrum:residual3:w32:p8:w0.5"
    assert emb.dim == 80 + 32 * 17
    x = emb.embed(images)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    semantic = emb.base.embed(images)
    spectrum = x[:, 80:] / np.sqrt(0.5)
    np.testing.assert_allclose(x @ x.T, 0.5 * semantic @ semantic.T + 0.5 * spectrum @ spectrum.T, atol=1e-5)
    # the spectrum part tells the noise image from the smooth one far more than the semantic part does
    assert spectrum[0] @ spectrum[1] < semantic[0] @ semantic[1]


def test_shared_pass_output_matches_and_tiny_images_keep_the_semantic_part(images):
    emb = embedder_from_config(EmbedderConfig(runtime="torch"), device="cpu")
    vectors, logits = emb.embed_with(images, "logits", [0, 2])
    np.testing.assert_array_equal(vectors, emb.embed(images))
    _, base_logits = emb.base.embed_with(images, "logits", [0, 2])
    assert np.array_equal(logits.numpy(), base_logits.numpy())
    tiny = emb.embed([Image.new("RGB", (8, 8), (200, 10, 10))])
    assert np.all(tiny[0, 80:] == 0) and np.linalg.norm(tiny[0]) == pytest.approx(1.0, abs=1e-5)


def test_fingerprint_keys_are_checked_and_none_keeps_the_plain_embedder():
    plain = embedder_from_config(load_config({"embedder": {"fingerprint": "none", "runtime": "torch"}}).embedder, "cpu")
    assert plain.id == "efficientnet-lite0:imagenet:block4"
    with pytest.raises(ConfigError, match="embedder.fingerprint_weight"):
        FingerprintedEmbedder(load_embedder("efficientnet-lite0", device="cpu", runtime="torch"),
                              load_fingerprint("spectrum", window=32), 1.0)
    with pytest.raises(ConfigError, match="embedder.fingerprint"):
        load_config({"embedder": {"fingerprint": "bitplanes"}})
    with pytest.raises(ConfigError, match="embedder.fingerprint_window"):
        load_config({"embedder": {"fingerprint_window": 8}})
