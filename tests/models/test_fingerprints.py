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


def test_texture_statistics_read_the_central_crop_at_native_resolution():
    texture = load_fingerprint("texture")
    assert texture.id == "texture:efficientnet-lite0:block2:gram:c256" and texture.dim == 24 + 24 * 25 // 2
    first = load_fingerprint("texture", layers=[1])
    assert first.dim == 16 + 16 * 17 // 2
    # several stages: each stage's statistics in turn, as that stage alone gives them
    both = load_fingerprint("texture", layers=[2, 1])
    assert both.id == "texture:efficientnet-lite0:block1+2:gram:c256" and both.dim == first.dim + texture.dim
    image = _image(4)
    np.testing.assert_allclose(both.extract([image])[0], np.concatenate([first.extract([image])[0],
                                                                         texture.extract([image])[0]]), atol=1e-6)
    pixels = np.asarray(_image(3, size=(320, 300))).copy()
    a = texture.extract([Image.fromarray(pixels)])[0]
    np.testing.assert_array_equal(a, texture.extract([Image.fromarray(pixels)])[0])
    # the means and the covariance each carry half of the length
    assert np.linalg.norm(a[:24]) == pytest.approx(1.0, abs=1e-5) and np.linalg.norm(a[24:]) == pytest.approx(1.0, abs=1e-5)
    outside, inside = pixels.copy(), pixels.copy()
    outside[:20] = 0  # above the central 256 rows of 300
    inside[150:170, 150:170] = 255
    assert np.array_equal(texture.extract([Image.fromarray(outside)])[0], a)
    assert not np.allclose(texture.extract([Image.fromarray(inside)])[0], a)


def test_texture_describes_the_texture_not_the_pixel_values():
    """Two draws of one blocky texture are close; the same pixel values shuffled into fine noise are far."""
    def blocky(seed: int) -> np.ndarray:
        cells = np.random.default_rng(seed).integers(0, 255, (16, 16, 3))
        return np.repeat(np.repeat(cells, 4, 0), 4, 1).astype(np.uint8)

    first, second = blocky(0), blocky(1)
    shuffled = first.reshape(-1, 3)[np.random.default_rng(2).permutation(64 * 64)].reshape(64, 64, 3)
    a, b, c = load_fingerprint("texture").extract([Image.fromarray(x) for x in (first, second, shuffled)])
    assert a @ b / 2 > 0.95 and a @ c / 2 < 0.9  # each vector has length sqrt(2): means and covariance
