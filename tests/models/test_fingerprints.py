"""Fingerprint features: bit-plane extraction, native-resolution patches, spectrum and bit-plane CNN."""

import numpy as np
import pytest
from PIL import Image

from resynth_index.errors import ConfigError, ImageError
from resynth_index.models.fingerprints import (
    high_frequency_energy,
    load_fingerprint,
    low_bit_planes,
    select_patches,
)


def test_low_bit_planes_exact_on_hand_made_pixels():
    pixels = np.array([[[0, 1, 7], [8, 255, 250]], [[9, 16, 100], [3, 4, 5]]], dtype=np.uint8)
    expected = np.array([[[0, 36, 252], [0, 252, 72]], [[36, 0, 144], [108, 144, 180]]], dtype=np.uint8)
    out = low_bit_planes(pixels)
    assert out.dtype == np.uint8 and np.array_equal(out, expected)
    assert np.array_equal(low_bit_planes(pixels, bits=1), (pixels & 1) * 255)
    assert np.array_equal(low_bit_planes(pixels, bits=2), (pixels & 3) * 85)


def test_low_bit_planes_rejects_other_dtypes_and_bits():
    with pytest.raises(ValueError, match="uint8"):
        low_bit_planes(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="bits"):
        low_bit_planes(np.zeros((2, 2, 3), np.uint8), bits=8)


def test_patches_are_native_crops_ranked_by_high_frequency_energy():
    rng = np.random.default_rng(0)
    pixels = np.full((128, 192, 3), 120, np.uint8)
    pixels[64:, 128:] = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # the only detailed tile
    pixels[:64, 64:128] = rng.integers(100, 140, (64, 64, 3), dtype=np.uint8)  # mildly detailed
    patches = select_patches(pixels, 64, 2)
    assert len(patches) == 2
    assert np.array_equal(patches[0], pixels[64:, 128:]) and np.array_equal(patches[1], pixels[:64, 64:128])
    assert high_frequency_energy(pixels[:64, :64]) == 0.0
    small = pixels[:40, :50]
    assert len(select_patches(small, 64, 4)) == 1 and np.array_equal(select_patches(small, 64, 4)[0], small)


def _image(seed: int, size=(96, 80)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_spectrum_is_deterministic_and_sized():
    fp = load_fingerprint("spectrum", window=32, patches=4)
    a = fp.extract([_image(1), _image(1), _image(2)])
    assert a.shape == (3, 32 * 17) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a[0], a[1]) and not np.allclose(a[0], a[2])


def test_spectrum_sees_periodic_upsampling_traces():
    """A nearest-neighbour 2x upsampling (a classic generator trace) moves power; a plain noise image does not."""
    fp = load_fingerprint("spectrum", window=32, patches=4)
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    upsampled = np.repeat(np.repeat(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), 2, 0), 2, 1)
    v_noise, v_up = fp.extract([Image.fromarray(noise), Image.fromarray(upsampled)])
    grid = lambda v: v.reshape(32, 17)  # noqa: E731
    # Repeating pixels suppresses the highest horizontal frequency (Nyquist column) of the residual.
    assert grid(v_up)[:, -1].mean() < grid(v_noise)[:, -1].mean() - 3


def test_bitplane_features_depend_on_the_low_bits_only():
    fp = load_fingerprint("bitplane", layer=2, patch=64, patches=2)
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
    high_changed = pixels ^ np.uint8(0b11000000)  # same lowest 3 bits, very different image
    low_changed = pixels ^ np.uint8(0b00000101)
    a, b, c = fp.extract([Image.fromarray(pixels), Image.fromarray(high_changed), Image.fromarray(low_changed)])
    assert a.shape == (fp.dim,) and fp.dim == 24
    assert np.array_equal(a, b)
    assert not np.allclose(a, c, atol=1e-4)


def test_too_small_image_is_an_error_naming_it_never_a_zero_vector():
    fp = load_fingerprint("spectrum")
    with pytest.raises(ImageError, match="tiny.png.*too small"):
        fp.extract([Image.new("RGB", (8, 8))], names=["tiny.png"])


def test_unknown_kind_and_bad_options_are_named():
    with pytest.raises(ConfigError, match="fingerprint kind"):
        load_fingerprint("wavelet")
    with pytest.raises(ConfigError, match="gallery.layer"):
        load_fingerprint("bitplane", layer=9)
    with pytest.raises(ConfigError, match="gallery.backbone"):
        load_fingerprint("bitplane", backbone="resnet")
