"""The default embedding: EfficientNet-Lite0 block 4 joined with a native-resolution residual spectrum (of the
RGB mean with the two chroma channels' beside it by default, of the mean alone, or one per opponent channel),
and optionally with native-resolution texture statistics between them."""

import numpy as np
import pytest
from PIL import Image

from resynth_index.config import EmbedderConfig, load_config
from resynth_index.errors import ConfigError
from resynth_index.models.embedders import FingerprintedEmbedder, embedder_from_config, embedding_blocks, load_embedder
from resynth_index.models.fingerprints import load_fingerprint


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    smooth = np.repeat(np.repeat(rng.integers(0, 255, (8, 8, 3)), 8, 0), 8, 1).astype(np.uint8)
    return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), Image.fromarray(smooth),
            Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))]


def test_default_config_joins_texture_spectrum_and_thumbnail_and_the_cosine_splits_by_weight(images):
    cfg = EmbedderConfig(runtime="torch")
    emb = embedder_from_config(cfg, device="cpu")
    assert isinstance(emb, FingerprintedEmbedder)
    assert emb.id == ("efficientnet-lite0:imagenet:block4+texture:efficientnet-lite0:block2:gram:c256:w0.25"
                      "+spectrum:residual3:w32:p8:mean+chroma:w0.375+thumbnail:box32:w0.02")
    assert embedding_blocks(cfg, emb.dim) == (80, 324, 3 * 32 * 17, 3 * 32 * 32) and emb.dim == 80 + 324 + 1632 + 3072
    x = emb.embed(images)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    semantic = emb.base.embed(images)
    texture, spectrum = x[:, 80:404] / np.sqrt(0.25), x[:, 404:2036] / np.sqrt(0.375)
    thumbnail = x[:, 2036:] / np.sqrt(0.02)
    np.testing.assert_allclose(x @ x.T, 0.355 * semantic @ semantic.T + 0.25 * texture @ texture.T
                               + 0.375 * spectrum @ spectrum.T + 0.02 * thumbnail @ thumbnail.T, atol=1e-5)
    # the spectrum part tells the noise image from the smooth one far more than the semantic part does
    assert spectrum[0] @ spectrum[1] < semantic[0] @ semantic[1]
    # the thumbnail is the image box-filtered to 32 x 32 (any aspect), values shifted to -0.5..0.5, unit length
    small = np.stack([np.asarray(im.resize((32, 32), Image.BOX), np.float32).ravel() / 255 - 0.5 for im in images])
    np.testing.assert_allclose(thumbnail, small / np.linalg.norm(small, axis=1, keepdims=True), atol=1e-5)


def test_shared_pass_output_matches_and_tiny_images_keep_the_semantic_part(images):
    emb = embedder_from_config(EmbedderConfig(runtime="torch"), device="cpu")
    vectors, logits = emb.embed_with(images, "logits", [0, 2])
    np.testing.assert_array_equal(vectors, emb.embed(images))
    _, base_logits = emb.base.embed_with(images, "logits", [0, 2])
    assert np.array_equal(logits.numpy(), base_logits.numpy())
    tiny = emb.embed([Image.new("RGB", (8, 8), (200, 10, 10))])
    assert np.all(tiny[0, 80:] == 0) and np.linalg.norm(tiny[0]) == pytest.approx(1.0, abs=1e-5)


def test_fingerprint_keys_are_checked_and_none_keeps_the_plain_embedder():
    plain = load_config({"embedder": {"fingerprint": "none", "texture": "none", "thumbnail": 0,
                                      "runtime": "torch"}}).embedder
    assert embedder_from_config(plain, "cpu").id == "efficientnet-lite0:imagenet:block4"
    mean = load_config({"embedder": {"fingerprint_colour": "mean", "texture": "none", "fingerprint_weight": 0.5,
                                     "thumbnail": 0, "runtime": "torch"}}).embedder
    # the spectrum alone at half the cosine: the id (and namespace) the default had before the texture joined
    assert embedder_from_config(mean, "cpu").id == "efficientnet-lite0:imagenet:block4+spectrum:residual3:w32:p8:w0.5"
    with pytest.raises(ConfigError, match="embedder.fingerprint_weight"):
        FingerprintedEmbedder(load_embedder("efficientnet-lite0", device="cpu", runtime="torch"),
                              [(load_fingerprint("spectrum", window=32), 1.0)])
    with pytest.raises(ConfigError, match="embedder.fingerprint"):
        load_config({"embedder": {"fingerprint": "bitplanes"}})
    with pytest.raises(ConfigError, match="embedder.fingerprint_window"):
        load_config({"embedder": {"fingerprint_window": 8}})


def _noise_image(luminance_seed: int, chroma_seed: int) -> Image.Image:
    """Grey level noise from one seed plus red-green noise from another (which leaves R+G+B unchanged)."""
    grey = np.random.default_rng(luminance_seed).normal(128, 20, (64, 64))
    chroma = np.random.default_rng(chroma_seed).normal(0, 1, (64, 64))
    chroma = np.repeat(np.repeat(chroma[::4, ::4], 4, 0), 4, 1) * 15  # coarse: another texture than the grey's
    rgb = np.stack([grey + chroma, grey - chroma, grey], axis=-1)
    return Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8))


def test_opponent_spectra_keep_the_colour_noise_apart_from_the_brightness_noise():
    opponent = load_fingerprint("spectrum", window=32, colour="opponent")
    mean = load_fingerprint("spectrum", window=32)
    assert mean.id == "spectrum:residual3:w32:p8" and opponent.id == "spectrum:residual3:w32:p8:opponent"
    assert opponent.dim == 3 * mean.dim
    plain, other_chroma = _noise_image(1, 2), _noise_image(1, 3)
    a, b = opponent.extract([plain, other_chroma])
    blocks = a.reshape(3, -1), b.reshape(3, -1)
    np.testing.assert_allclose([blk.mean() for blk in blocks[0]], 0.0, atol=1e-6)  # each channel centred
    # the same brightness noise: the luminance spectra agree closely; other colour noise: red-green moves
    lum_change = np.abs(blocks[0][0] - blocks[1][0]).mean()
    chroma_change = np.abs(blocks[0][1] - blocks[1][1]).mean()
    assert chroma_change > 5 * lum_change
    # a grey image has no colour noise: its red-green spectrum is flat (all zero once centred)
    grey = Image.fromarray(np.asarray(plain).mean(axis=2, keepdims=True).repeat(3, 2).astype(np.uint8))
    assert np.allclose(opponent.extract([grey])[0].reshape(3, -1)[1], 0.0) and blocks[0][1].std() > 0.5


def test_the_colour_key_is_checked_and_opponent_is_an_embedding_of_its_own(images):
    with pytest.raises(ConfigError, match="embedder.fingerprint_colour"):
        load_config({"embedder": {"fingerprint_colour": "rgb"}})
    cfg = load_config({"embedder": {"fingerprint_colour": "opponent", "texture": "none", "fingerprint_weight": 0.5,
                                    "thumbnail": 0, "runtime": "torch"}}).embedder
    emb = embedder_from_config(cfg, device="cpu")
    assert emb.id == "efficientnet-lite0:imagenet:block4+spectrum:residual3:w32:p8:opponent:w0.5"  # its own namespace
    assert emb.dim == 80 + 3 * 32 * 17
    x = emb.embed(images)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_mean_and_chroma_keeps_the_mean_spectrum_and_adds_the_colour_noise_at_a_third():
    mean = load_fingerprint("spectrum", window=32)
    opponent = load_fingerprint("spectrum", window=32, colour="opponent")
    both = load_fingerprint("spectrum", window=32, colour="mean+chroma")
    assert both.id == "spectrum:residual3:w32:p8:mean+chroma" and both.dim == 3 * mean.dim
    plain, other_chroma = _noise_image(1, 2), _noise_image(1, 3)
    a, b = both.extract([plain, other_chroma])
    brightness, chroma = a[: mean.dim], a[mean.dim :]
    # two thirds of the energy in the spectrum that "mean" gives (centred), one third in the colour spectra
    assert np.linalg.norm(brightness) ** 2 == pytest.approx(2 / 3, abs=1e-5)
    assert np.linalg.norm(chroma) ** 2 == pytest.approx(1 / 3, abs=1e-5)
    m = mean.extract([plain])[0]
    m = (m - m.mean()) / np.linalg.norm(m - m.mean())
    np.testing.assert_allclose(brightness / np.sqrt(2 / 3), m, atol=1e-5)
    c = opponent.extract([plain])[0][mean.dim :]
    np.testing.assert_allclose(chroma / np.sqrt(1 / 3), c / np.linalg.norm(c), atol=1e-4)
    # other colour noise on the same brightness noise moves the colour part more (the mean of the R, G and B
    # spectra sees some of it too)
    assert np.abs(a[mean.dim :] - b[mean.dim :]).mean() > 2 * np.abs(a[: mean.dim] - b[: mean.dim]).mean()


def test_texture_joins_between_the_semantic_part_and_the_spectrum_at_its_share(images):
    cfg = load_config({"embedder": {"texture": "gram", "texture_layers": [2], "texture_weight": 0.5,
                                    "fingerprint_weight": 0.25, "thumbnail": 0, "runtime": "torch"}}).embedder
    emb = embedder_from_config(cfg, device="cpu")
    assert emb.id == ("efficientnet-lite0:imagenet:block4+texture:efficientnet-lite0:block2:gram:c256:w0.5"
                      "+spectrum:residual3:w32:p8:mean+chroma:w0.25")
    assert embedding_blocks(cfg, emb.dim) == (80, 24 + 24 * 25 // 2, 3 * 32 * 17) and emb.dim == sum((80, 324, 1632))
    x = emb.embed(images)
    semantic, texture, spectrum = x[:, :80] / np.sqrt(0.25), x[:, 80:404] / np.sqrt(0.5), x[:, 404:] / np.sqrt(0.25)
    np.testing.assert_allclose(semantic, emb.base.embed(images), atol=1e-5)
    np.testing.assert_allclose(texture, load_fingerprint("texture", layers=[2]).extract(images) / np.sqrt(2), atol=1e-5)
    np.testing.assert_allclose(x @ x.T, 0.25 * semantic @ semantic.T + 0.5 * texture @ texture.T
                               + 0.25 * spectrum @ spectrum.T, atol=1e-5)
    # another share is another embedding: another cache namespace
    other = load_config({"embedder": {"texture": "gram", "texture_layers": [2], "runtime": "torch"}}).embedder
    assert embedder_from_config(other, device="cpu").id != emb.id


def test_texture_keys_are_checked():
    with pytest.raises(ConfigError, match="embedder.texture"):
        load_config({"embedder": {"texture": "style"}})
    with pytest.raises(ConfigError, match="embedder.texture_layers"):
        load_config({"embedder": {"texture": "gram", "texture_layers": [8]}})
    with pytest.raises(ConfigError, match="embedder.texture_layers"):
        load_config({"embedder": {"texture": "gram", "texture_layers": []}})
    cfg = load_config({"embedder": {"texture": "gram", "texture_weight": 0.7, "runtime": "torch"}}).embedder
    with pytest.raises(ConfigError, match="embedder.texture_weight \\+ embedder.fingerprint_weight"):
        embedder_from_config(cfg, device="cpu")


def test_thumbnail_keys_are_checked_and_another_side_is_another_embedding():
    with pytest.raises(ConfigError, match="embedder.thumbnail"):
        load_config({"embedder": {"thumbnail": 129}})
    with pytest.raises(ConfigError, match="embedder.thumbnail_weight"):
        embedder_from_config(load_config({"embedder": {"thumbnail_weight": 0.0, "runtime": "torch"}}).embedder, "cpu")
    with pytest.raises(ConfigError, match="scoring.sibling_thumbnail_weight"):
        load_config({"scoring": {"sibling_thumbnail_weight": -0.1}})
    cfg = load_config({"embedder": {"thumbnail": 16, "runtime": "torch"}}).embedder
    emb = embedder_from_config(cfg, device="cpu")
    assert emb.id.endswith("+thumbnail:box16:w0.02") and embedding_blocks(cfg, emb.dim)[-1] == 3 * 16 * 16
