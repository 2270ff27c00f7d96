"""Degraded copies of candidates (for the prototypes) and the size a small query is brought to."""

import numpy as np
import pytest
from PIL import Image

from resynth_index.images.degrade import (FAMILIES, degrade, degraded_copies, largest_output, shrink_to, smallest_output,
                                          upscale_to)


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


def test_a_smaller_query_is_enlarged_to_the_output_size_keeping_its_aspect():
    assert upscale_to(_image(size=(32, 32)), (64, 64)).size == (64, 64)
    assert upscale_to(_image(size=(32, 16)), (64, 64)).size == (64, 32)  # covers the width, aspect kept
    big = _image(size=(96, 96))
    assert upscale_to(big, (64, 64)) is big
    assert upscale_to(_image(size=(40, 100)), (64, 64)).size == (40, 100)  # taller than the output already
    assert upscale_to(big, None) is big
    assert smallest_output([(512, 512), (64, 96), (1024, 1024)]) == (64, 96)
    assert smallest_output([]) is None


def test_a_larger_query_is_reduced_to_the_output_size_keeping_its_aspect():
    assert shrink_to(_image(size=(320, 320)), (64, 64)).size == (64, 64)
    assert shrink_to(_image(size=(320, 160)), (64, 64)).size == (128, 64)  # fits the height, aspect kept
    small = _image(size=(48, 48))
    assert shrink_to(small, (64, 64)) is small
    wide = _image(size=(200, 40))
    assert shrink_to(wide, (64, 64)) is wide  # not larger in both dimensions: it may be a native crop
    assert shrink_to(small, None) is small
    assert largest_output([(512, 512), (64, 96), (1024, 1024)]) == (1024, 1024)
    assert largest_output([]) is None
