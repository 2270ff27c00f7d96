"""Degraded copies of candidates (for the prototypes) and the size a small query is brought to."""

import numpy as np
import pytest
from PIL import Image

from resynth_index.images.degrade import (COLOUR_FAMILIES, FAMILIES, degrade, degraded_copies, largest_output, recolour,
                                          shrink_to, smallest_output, upscale_to)


def _image(seed=0, size=(64, 48)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def test_copies_are_reproducible_from_the_seed_and_cycle_through_the_families():
    im = _image()
    a, b = degraded_copies(im, 6, seed=12345), degraded_copies(im, 6, seed=12345)
    assert [np.asarray(x).tobytes() for x in a] == [np.asarray(x).tobytes() for x in b]
    other = degraded_copies(im, 6, seed=12346)
    assert any(np.asarray(x).tobytes() != np.asarray(y).tobytes() for x, y in zip(a, other))
    for copy in a:
        assert copy.size == im.size and copy.mode == "RGB"
        assert np.abs(np.asarray(copy, np.int16) - np.asarray(im, np.int16)).mean() > 1.0  # really degraded
    # six copies = each of the three families twice: copy k and copy k + 3 come from the same family
    start = 12345 % len(FAMILIES)
    for k in range(3):
        family = FAMILIES[(start + k) % len(FAMILIES)]
        assert any(np.asarray(a[k]).tobytes() == np.asarray(degrade(im, family, s)).tobytes()
                   for s in np.random.default_rng(12345).random(6))


@pytest.mark.parametrize("family", FAMILIES)
def test_stronger_degradation_moves_the_image_further(family):
    im = _image(1)
    weak, strong = degrade(im, family, 0.0), degrade(im, family, 1.0)
    diff = lambda x: np.abs(np.asarray(x, np.int16) - np.asarray(im, np.int16)).mean()  # noqa: E731
    assert diff(strong) > diff(weak)


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="sharpen"):
        degrade(_image(), "sharpen", 0.5)
    with pytest.raises(ValueError, match="sepia"):
        recolour(_image(), "sepia")


def _is_grey(image):
    x = np.asarray(image)
    return bool((x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all())


def test_colour_copies_follow_the_degraded_ones_without_changing_them():
    im = _image(2)
    kinds = set()
    for seed in range(12345, 12365):
        plain, coloured = degraded_copies(im, 2, seed), degraded_copies(im, 2, seed, colour=2)
        assert len(coloured) == 4 and coloured[0].size == im.size and coloured[3].mode == "RGB"
        assert [np.asarray(x).tobytes() for x in plain] == [np.asarray(x).tobytes() for x in coloured[:2]]
        assert [np.asarray(x).tobytes() for x in degraded_copies(im, 2, seed, colour=2)] == \
               [np.asarray(x).tobytes() for x in coloured]  # reproducible from the seed
        # the two colour families in turn: one grey copy, one whose hue moved (and not grey)
        assert sorted(_is_grey(c) for c in coloured[2:]) == [False, True]
        first = degraded_copies(im, 2, seed, colour=1)[2]
        kinds.add(_is_grey(first))
        assert np.asarray(first).tobytes() == np.asarray(coloured[2]).tobytes()
    assert kinds == {True, False}  # the seed picks which family comes first, so a build gets both


def test_a_hue_saturation_copy_moves_the_colours_and_keeps_each_pixels_value():
    im = _image(3)
    shifted = recolour(im, "hue-saturation", hue=0.08, saturation=1.3)
    x, y = np.asarray(im, np.int16), np.asarray(shifted, np.int16)
    assert np.abs(x - y).mean() > 10 and not _is_grey(shifted)
    # HSV's value (the brightest channel) is what neither a hue rotation nor a saturation scale touches
    assert np.abs(x.max(-1) - y.max(-1)).max() <= 2
    assert _is_grey(recolour(im, COLOUR_FAMILIES[0]))


def test_grey_copies_mix_the_channels_differently_from_seed_to_seed():
    im = _image(4)
    # the default weights are ITU-R 601 luma's, what PIL's "L" conversion computes (to a level of rounding)
    luma = np.asarray(recolour(im, "greyscale"), np.int16)[..., 0]
    assert np.abs(luma - np.asarray(im.convert("L"), np.int16)).max() <= 1
    greys = [c for seed in range(20) for c in degraded_copies(im, 0, seed, colour=2) if _is_grey(c)]
    assert len(greys) == 20
    levels = {np.asarray(g)[..., 0].tobytes() for g in greys}
    assert len(levels) == 20  # each its own mix of red, green and blue
    blue_heavy = recolour(im, "greyscale", grey_weights=(0.0, 0.0, 1.0))
    assert np.array_equal(np.asarray(blue_heavy)[..., 0], np.asarray(im)[..., 2])
