"""Degraded copies of candidates, and the size a query is brought to before it is embedded.

Candidates are generated clean, but queries reach a moderation team re-encoded, resized and smoothed, and that
destroys the fine texture by which fine-tunes of one base model differ. The generator prototypes are therefore
fitted on each candidate *and* a few degraded copies of it: the pooled within-generator covariance then holds
the variation that degradation causes, and the whitening weighs down exactly the directions that degradation
moves (the usual way to make a linear discriminant invariant to a nuisance: put the nuisance in the
within-class scatter). On the hard benchmark this took top-1 under resize x0.5 and blur from about 40% to 90%,
with clean accuracy unchanged or better (README "Measured results").

A copy is one of three families, in turn, with a random strength drawn from a fixed-seed generator seeded by
the candidate's own seed (so a build is reproducible bit for bit, and the same on every worker):

* JPEG at quality 40-95;
* Gaussian blur, sigma 0.3-2.0 px;
* downscale by 0.3-0.9 and back up to the original size (bicubic), which is what a resized query looks like
  once :func:`upscale_to` has brought it back to the generators' output size.

After them come the *colour copies* (``resynthesis.colour_copies``): a grey or a hue-and-saturation shifted copy
of the clean candidate, the two in turn from one the seed picks. Greyscale and colour edits move every colour
statistic and the thumbnail's colours at once, further than any generator's own colour differs from another's;
without copies like these every greyscale query of the hard benchmark went to the one generator whose images are
greyest (20% top-1). Hue is rotated by up to 0.08 of a turn either way and saturation scaled by 0.75-1.3. The
grey copy mixes the channels with weights drawn around ITU-R 601 luma's (a Dirichlet draw with parameters 3, 5,
2): tools make grey differently (601 or 709 luma, the channels' mean, HSL lightness), and a grey copy of 601 luma
alone left the channels' mean and lightness at 40% top-1 (about 87% with the drawn weights). A colour edit of a
degraded copy instead of the clean candidate was measured and lost (README "Why colour copies").

A query larger than every generator's output was enlarged after it was made; :func:`shrink_to` reduces it to
the largest output size, since no copy shows an interpolated, enlarged pixel grid.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

#: Bumped whenever a family or a range changes (it is part of the degraded copies' cache namespace).
DEGRADE_RULE = "degrade-v1"
FAMILIES = ("jpeg", "blur", "rescale")
JPEG_QUALITY = (40, 95)
BLUR_SIGMA = (0.3, 2.0)
RESCALE_FACTOR = (0.3, 0.9)
COLOUR_FAMILIES = ("greyscale", "hue-saturation")
GREY_WEIGHTS_DIRICHLET = (3.0, 5.0, 2.0)  # the grey copy's channel weights: red, green, blue (mean 0.3, 0.5, 0.2)
LUMA_601 = (0.299, 0.587, 0.114)
HUE_TURN = 0.08  # hue rotated by up to this fraction of a turn, either way
SATURATION_SCALE = (0.75, 1.3)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out.convert("RGB")


def degrade(image: Image.Image, family: str, strength: float) -> Image.Image:
    """One degraded copy; ``strength`` in [0, 1] picks the point in the family's range (1 = strongest)."""
    image, strength = image.convert("RGB"), float(strength)
    if family == "jpeg":
        hi, lo = JPEG_QUALITY[1], JPEG_QUALITY[0]
        return _jpeg(image, int(round(hi - strength * (hi - lo))))
    if family == "blur":
        return image.filter(ImageFilter.GaussianBlur(BLUR_SIGMA[0] + strength * (BLUR_SIGMA[1] - BLUR_SIGMA[0])))
    if family == "rescale":
        factor = RESCALE_FACTOR[1] - strength * (RESCALE_FACTOR[1] - RESCALE_FACTOR[0])
        w, h = image.size
        small = image.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.BICUBIC)
        return small.resize((w, h), Image.BICUBIC)
    raise ValueError(f"unknown degradation family {family!r}")


def recolour(image: Image.Image, family: str, hue: float = 0.0, saturation: float = 1.0,
             grey_weights: Sequence[float] = LUMA_601) -> Image.Image:
    """One colour copy: ``greyscale`` (the channels mixed by ``grey_weights``, as 3-channel RGB) or
    ``hue-saturation`` (hue rotated by ``hue`` of a turn, saturation scaled by ``saturation``)."""
    image = image.convert("RGB")
    if family == "greyscale":
        grey = np.asarray(image, np.float32) @ np.asarray(grey_weights, np.float32)
        return Image.fromarray(np.repeat(np.rint(grey).clip(0, 255).astype(np.uint8)[..., None], 3, axis=-1), "RGB")
    if family == "hue-saturation":
        hsv = np.asarray(image.convert("HSV"), dtype=np.float32)
        hsv[..., 0] = (hsv[..., 0] + hue * 256.0) % 256.0
        hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
        return Image.fromarray(np.rint(hsv).astype(np.uint8), "HSV").convert("RGB")
    raise ValueError(f"unknown colour family {family!r}")


def degraded_copies(image: Image.Image, copies: int, seed: int, colour: int = 0) -> list[Image.Image]:
    """``copies`` degraded copies of one candidate (the families in turn, starting at one the seed picks,
    strengths drawn from a generator seeded by ``seed``), then ``colour`` colour copies of it (the colour
    families in turn, from their own generator, so that the degraded copies do not depend on ``colour``)."""
    seed = int(seed) & (2**63 - 1)
    rng = np.random.default_rng(seed)
    start = seed % len(FAMILIES)
    out = [degrade(image, FAMILIES[(start + k) % len(FAMILIES)], float(rng.random())) for k in range(copies)]
    if colour:
        rng = np.random.default_rng([seed, 1])
        first = int(rng.integers(len(COLOUR_FAMILIES)))
        for k in range(colour):
            hue, saturation = rng.uniform(-HUE_TURN, HUE_TURN), rng.uniform(*SATURATION_SCALE)
            weights = rng.dirichlet(GREY_WEIGHTS_DIRICHLET)
            out.append(recolour(image, COLOUR_FAMILIES[(first + k) % len(COLOUR_FAMILIES)], hue, saturation, weights))
    return out


def upscale_to(image: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    """``image`` enlarged (bicubic, aspect kept) until it covers ``size`` = (width, height) in one dimension,
    when it is smaller than that in both; otherwise unchanged. Candidates are embedded at the generators' output
    size, so a downscaled query is compared at that scale too."""
    if size is None:
        return image
    w, h = image.size
    scale = min(size[0] / w, size[1] / h)
    if scale <= 1.0:
        return image
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)


def shrink_to(image: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    """``image`` reduced (bicubic, aspect kept) until it fits ``size`` = (width, height) in one dimension, when it
    is larger than that in both; otherwise unchanged. No generator made it that large, so it was enlarged after
    it was made (a platform widening small images, an upscaler): reduced, it shows the generator's own pixel
    grid again instead of an interpolated one, which no cached candidate or degraded copy has."""
    if size is None:
        return image
    w, h = image.size
    scale = max(size[0] / w, size[1] / h)
    if scale >= 1.0:
        return image
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)


def smallest_output(sizes: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """The smallest (by area) of the generators' output sizes (width, height); None when there are none."""
    return min(sizes, key=lambda wh: wh[0] * wh[1]) if sizes else None


def largest_output(sizes: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """The largest (by area) of the generators' output sizes (width, height); None when there are none."""
    return max(sizes, key=lambda wh: wh[0] * wh[1]) if sizes else None


__all__ = ["COLOUR_FAMILIES", "DEGRADE_RULE", "FAMILIES", "degrade", "degraded_copies", "largest_output", "recolour",
           "shrink_to", "smallest_output", "upscale_to"]
