"""Property test of the decode guard: whatever bytes arrive (valid images of every accepted format, the same cut
short, with bytes flipped, or with another format's header), decoding gives an 8-bit RGB image or the project's
own ImageError naming the input, never another exception."""

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from resynth_index.errors import ImageError
from resynth_index.images.decode import decode_image

_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_HEADERS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBP", b"GIF89a", b"BM", b"II*\x00",
            b"%!PS-Adobe-3.0 EPSF-3.0\n", b"%PDF-1.4\n", b"\x00\x00\x00\x0cjP  ")


def _encoded(fmt: str, w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _check(data: bytes) -> None:
    try:
        d = decode_image(data, name="<hypothesis>")
    except ImageError as exc:
        assert "<hypothesis>" in str(exc)
        return
    assert d.image.mode == "RGB" and min(d.image.size) >= 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(_FORMATS), w=st.integers(1, 40), h=st.integers(1, 40), seed=st.integers(0, 2**16),
       cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6))
def test_damaged_images_decode_or_raise_an_image_error(fmt, w, h, seed, cut, flips):
    data = bytearray(_encoded(fmt, w, h, seed))
    for where, value in flips:
        data[min(int(where * len(data)), len(data) - 1)] = value
    _check(bytes(data[: max(1, int(cut * len(data)))]) if cut < 0.98 else bytes(data))


@settings(max_examples=150, deadline=None)
@given(header=st.sampled_from(_HEADERS), tail=st.binary(max_size=512))
def test_arbitrary_bytes_behind_any_header_decode_or_raise_an_image_error(header, tail):
    _check(header + tail)
