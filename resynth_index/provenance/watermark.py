"""Invisible DWT-DCT watermarks of the Stable Diffusion family, decoded from the pixels.

``invisible-watermark``'s ``dwtDct`` method (the one diffusers' SDXL pipelines and the original Stable Diffusion
scripts use) hides each message bit in the 4×4 blocks of the Haar approximation band of the U (chroma)
channel: in every block the largest AC coefficient is quantised to a step of 36, a bit 1 to three quarters of a
step and a bit 0 to one quarter; the message repeats over all blocks and decoding takes, per bit, the majority
over its blocks. The known messages:

* ``sdxl``: the fixed 48-bit message of diffusers' ``StableDiffusionXLWatermarker`` and Stability's
  generative-models code (``0xB3EC907BB19E``), embedded in images of at least 256 px;
* ``sd1``: the bytes ``StableDiffusionV1`` (136 bits) of the original Stable Diffusion 1.x scripts;
* ``sd2``: the bytes ``SDV2`` (32 bits) of the Stable Diffusion 2.x scripts.

:func:`block_scores` and :func:`decode_bits` are the library's decoder (``imwatermark.maxDct.EmbedMaxDct``,
whose per-block Python loop costs about 55 ms on a 512×512 image) written over arrays: the same colour conversion
(OpenCV), the same Haar arithmetic, the same rule per block, bit for bit the same output (tested against the
library), in about 2 ms; the block scores are computed once for all messages.

Verdicts follow Stability's published table for the 48-bit message (``scripts/demo/detect.py``): at most 27
agreeing bits "none", 28-33 "partial", 34-35 "likely", 36 or more "very likely". For messages of other lengths
each cut-off is the stricter of two: the same share of the message's bits, and the agreement that a random image
(each bit a fair coin) reaches as rarely as it reaches the 48-bit cut-off. The first guards long messages against
cross-talk (a 32-bit message read as 136 bits agrees well above chance), the second short ones against chance. Anyone can embed these
messages with the public encoder: a watermark says "made by a pipeline that watermarks, or by someone who wanted
it to look so", and JPEG, resizing and cropping weaken it.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from .evidence import WatermarkEvidence

SDXL_MESSAGE = 0b101100111110110010010000011110111011000110011110

#: message name -> its bits, most significant first (the order the encoder embeds them)
MESSAGES: dict[str, tuple[int, ...]] = {
    "sdxl": tuple(int(b) for b in bin(SDXL_MESSAGE)[2:]),
    "sd1": tuple(int(b) for b in np.unpackbits(np.frombuffer(b"StableDiffusionV1", np.uint8))),
    "sd2": tuple(int(b) for b in np.unpackbits(np.frombuffer(b"SDV2", np.uint8))),
}

MIN_PIXELS = 256 * 256  # the library refuses smaller images (too few blocks per bit)
SCALE = 36.0  # the library's default quantisation step for the U channel
BLOCK = 4
_HAAR = 0.7071067811865476  # PyWavelets' Haar decomposition low-pass tap (both taps are equal)
_REFERENCE_BITS = 48
#: Stability's cut-offs for 48 bits: verdict -> the least agreeing bits
_REFERENCE_CUTOFFS = (("very likely", 36), ("likely", 34), ("partial", 28))


def block_scores(rgb: np.ndarray) -> np.ndarray:
    """Per 4×4 block of the U channel's Haar approximation band, in row-major order: 1.0 where the block's
    largest AC coefficient sits in the upper half of its quantisation step (a bit 1), else 0.0.

    ``rgb`` is H×W×3 uint8. The arithmetic is the library's: OpenCV's YUV conversion (RGB→YUV equals its BGR→YUV
    of the swapped image), PyWavelets' Haar filter applied as rows then columns, products summed in the same
    order, so the band is bit-identical to ``pywt.dwt2(..., "haar")`` (tested), in a fraction of its time."""
    import cv2

    rows, cols = rgb.shape[:2]
    u = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV)[: rows // 4 * 4, : cols // 4 * 4, 1].astype(np.float64)
    half = _HAAR * u[1::2, :] + _HAAR * u[0::2, :]
    approx = _HAAR * half[:, 1::2] + _HAAR * half[:, 0::2]
    br, bc = approx.shape[0] // BLOCK, approx.shape[1] // BLOCK
    blocks = approx[: br * BLOCK, : bc * BLOCK].reshape(br, BLOCK, bc, BLOCK).swapaxes(1, 2).reshape(-1, BLOCK * BLOCK)
    value = np.abs(blocks[:, 1:]).max(axis=1)  # the largest AC coefficient's magnitude
    return (value % SCALE > 0.5 * SCALE).astype(np.float64)


def decode_bits(scores: np.ndarray, length: int) -> np.ndarray:
    """The ``length`` message bits ``imwatermark``'s ``dwtDct`` decoder reads, from :func:`block_scores`."""
    slot = np.arange(len(scores)) % length  # blocks carry bits 0, 1, ..., length-1, 0, 1, ...
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(slot, weights=scores, minlength=length) / np.bincount(slot, minlength=length)
    return mean * 255 > 127  # the library's majority rule (NaN, for a bit with no block, reads as 0)


def _tail(n: int, k: int) -> float:
    """P(at least k of n fair coin flips come up as wanted)."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2.0**n


@cache
def cutoff(bits: int, reference: int) -> int:
    """The least agreement of a ``bits``-bit message that a random image reaches as rarely as ``reference``
    of 48 bits."""
    if bits == _REFERENCE_BITS:
        return reference
    target = _tail(_REFERENCE_BITS, reference)
    by_chance = next(k for k in range(bits // 2, bits + 1) if _tail(bits, k) <= target)
    return max(by_chance, math.ceil(reference * bits / _REFERENCE_BITS))


def verdict(bits: int, agreeing: int) -> str:
    for name, reference in _REFERENCE_CUTOFFS:
        if agreeing >= cutoff(bits, reference):
            return name
    return "none"


def detect(rgb: np.ndarray, *, min_agreement: float,
           generators_by_message: dict[str, tuple[str, ...]] | None = None) -> WatermarkEvidence | None:
    """The known message that agrees best with what ``rgb`` (H×W×3 uint8) carries, or None when the image is
    too small to carry one. ``min_agreement`` is the decisive share of 48 bits (0.75: 36 of 48), moved to other
    message lengths as the verdicts are."""
    if rgb.shape[0] * rgb.shape[1] < MIN_PIXELS:
        return None
    scores = block_scores(rgb)
    decisive_48 = math.ceil(min_agreement * _REFERENCE_BITS - 1e-9)
    found = []
    for name, message in MESSAGES.items():
        n = len(message)
        agreeing = int(np.sum(decode_bits(scores, n) == np.array(message, dtype=bool)))
        found.append((agreeing / n, name, n, agreeing))
    _, name, n, agreeing = max(found)  # the best share of agreeing bits (cut-offs then depend on the length)
    return WatermarkEvidence(
        message=name, bits=n, agreeing=agreeing, verdict=verdict(n, agreeing),
        decisive=agreeing >= cutoff(n, decisive_48),
        generators=(generators_by_message or {}).get(name, ()),
    )
