"""decode_image: every odd or broken input gives clean RGB or an ImageError naming the file."""

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from resynth_index.errors import CorruptImage, ImageError, ImageTooLarge, ImageUnreadable, NotAnImage
from resynth_index.images.decode import MAX_PIXELS_DEFAULT, DecodedImage, decode_image, iter_image_paths


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _header_only_png(width: int, height: int) -> bytes:
    """A PNG whose IHDR announces width×height RGB but whose IDAT holds a single row: tiny on disk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * (3 * min(width, 16)))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _assert_rgb(d: DecodedImage, size):
    assert isinstance(d, DecodedImage)
    assert d.image.mode == "RGB"
    assert d.image.size == size
    assert len(d.pixel_sha256) == 64


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty_one.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty_one.png") as e:
        decode_image(p)
    assert "empty" in str(e.value)


def test_text_file_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\n")
    with pytest.raises(ImageError, match="notes.png") as e:
        decode_image(p)
    assert "not a recognised image" in str(e.value)


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(buf, "PNG")
    p = tmp_path / "cut_short.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="cut_short.png"):
        decode_image(p)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="nowhere.png"):
        decode_image(tmp_path / "nowhere.png")
    with pytest.raises(ImageError, match="is a directory"):
        decode_image(tmp_path)


def test_bomb_refused_by_header_before_decoding(tmp_path):
    # 8000x8000 = 64M pixels: above our 40M default, below Pillow's own limits, so only our guard can refuse it;
    # the file's pixel data is truncated, so a decoder that ran first would fail with another message.
    p = tmp_path / "bomb_8k.png"
    p.write_bytes(_header_only_png(8000, 8000))
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match="bomb_8k.png") as e:
        decode_image(p)
    assert time.perf_counter() - t0 < 1.0
    assert "8000x8000" in str(e.value) and "limit" in str(e.value)
    # The guard is configurable: with a higher limit the same file reaches the decoder and fails as truncated.
    with pytest.raises(ImageError, match="bomb_8k.png") as e2:
        decode_image(p, max_pixels=70_000_000)
    assert "limit" not in str(e2.value)


def test_20000_square_bomb_refused_cheaply(tmp_path):
    p = tmp_path / "bomb_20k.png"
    p.write_bytes(_header_only_png(20000, 20000))
    assert p.stat().st_size < 1000
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match="bomb_20k.png") as e:
        decode_image(p)
    assert time.perf_counter() - t0 < 1.0
    assert "bomb" in str(e.value)


def test_small_image_under_custom_limit_and_bad_limit():
    img = Image.new("RGB", (100, 100), (10, 20, 30))
    with pytest.raises(ImageError, match="tiny.png"):
        decode_image(img, name="tiny.png", max_pixels=9_999)
    _assert_rgb(decode_image(img, max_pixels=10_000), (100, 100))
    assert MAX_PIXELS_DEFAULT == 40_000_000


def test_cmyk_jpeg_to_rgb(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(p, "JPEG", quality=95)  # pure red in CMYK
    assert Image.open(p).mode == "CMYK"
    d = decode_image(p)
    _assert_rgb(d, (32, 32))
    r, g, b = d.image.getpixel((16, 16))
    assert r > 200 and g < 60 and b < 60


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    p = tmp_path / "deep.png"
    Image.fromarray(ramp).save(p)
    assert Image.open(p).mode.startswith("I")
    d = decode_image(p)
    _assert_rgb(d, (256, 8))
    a = np.asarray(d.image)
    assert a[0, 0].tolist() == [0, 0, 0]
    assert a[0, -1].tolist() == [255, 255, 255]
    assert 120 <= a[0, 128, 0] <= 135  # mid-grey stays mid-grey
    assert (a[..., 0] == 255).mean() < 0.05  # not clipped to white


def test_16bit_rgb_png(tmp_path):
    raw = b"\x00" + struct.pack(">6H", 65535, 32768, 0, 0, 0, 65535)
    ihdr = struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0)
    p = tmp_path / "rgb48.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw))
                  + _png_chunk(b"IEND", b""))
    a = np.asarray(decode_image(p).image)
    assert a.tolist() == [[[255, 128, 0], [0, 0, 255]]]


def test_rgba_composited_on_white(tmp_path):
    arr = np.zeros((4, 8, 4), dtype=np.uint8)
    arr[:, :4] = (255, 0, 0, 0)  # fully transparent red -> white
    arr[:, 4:] = (0, 0, 255, 255)  # opaque blue stays blue
    p = tmp_path / "alpha.png"
    Image.fromarray(arr, "RGBA").save(p)
    d = decode_image(p)
    _assert_rgb(d, (8, 4))
    assert d.image.getpixel((0, 0)) == (255, 255, 255)
    assert d.image.getpixel((7, 0)) == (0, 0, 255)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(p).n_frames == 3
    d = decode_image(p)
    _assert_rgb(d, (16, 16))
    r, g, b = d.image.getpixel((8, 8))
    assert r > 200 and g < 50 and b < 50


@pytest.mark.parametrize("mode", ["P", "L", "LA", "1", "I"])
def test_palette_grey_and_other_modes(tmp_path, mode):
    base = Image.fromarray(np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))).convert("RGB")
    img = base.convert(mode) if mode != "I" else base.convert("L").convert("I")
    p = tmp_path / (f"mode_{mode}.png" if mode != "I" else "mode_I.tif")  # PNG cannot store mode I
    img.save(p)
    d = decode_image(p)
    _assert_rgb(d, (16, 16))
    a = np.asarray(d.image).astype(int)
    assert a.max() > 100  # never an all-black placeholder


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.paste(1, (4, 0, 8, 8))
    p = tmp_path / "pal_t.png"
    img.save(p, transparency=0)
    d = decode_image(p)
    assert d.image.getpixel((0, 0)) == (255, 255, 255)
    assert d.image.getpixel((6, 0)) == (0, 255, 0)


def test_png_text_chunks_and_hash(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a red fox\nSteps: 20, Sampler: Euler")
    info.add_itxt("prompt", '{"1": {}}')
    info.add_text("workflow", "{}", zip=True)
    img = Image.new("RGB", (8, 8), (1, 2, 3))
    p = tmp_path / "meta.png"
    img.save(p, pnginfo=info)
    d = decode_image(p)
    assert d.path == str(p)
    assert d.metadata["parameters"].startswith("a red fox")
    assert d.metadata["prompt"] == '{"1": {}}'
    assert d.metadata["workflow"] == "{}"
    # Same pixels in another container and from memory give the same hash; other pixels another one.
    q = tmp_path / "same.bmp"
    img.save(q)
    assert decode_image(q).pixel_sha256 == d.pixel_sha256
    assert decode_image(img).pixel_sha256 == d.pixel_sha256
    assert decode_image(p.read_bytes(), name="x").pixel_sha256 == d.pixel_sha256
    assert decode_image(Image.new("RGB", (8, 8), (1, 2, 4))).pixel_sha256 != d.pixel_sha256
    assert decode_image(Image.new("RGB", (4, 16), (1, 2, 3))).pixel_sha256 != d.pixel_sha256


def test_exif_user_comment_and_description(tmp_path):
    exif = Image.Exif()
    exif[0x010E] = "a lighthouse at dusk"
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + "a castle, oil painting".encode("utf-16-be")
    p = tmp_path / "exif.jpg"
    Image.new("RGB", (8, 8), (9, 9, 9)).save(p, exif=exif)
    d = decode_image(p)
    assert d.metadata["exif:ImageDescription"] == "a lighthouse at dusk"
    assert d.metadata["exif:UserComment"] == "a castle, oil painting"


def test_bytes_error_uses_name():
    with pytest.raises(ImageError, match="upload-17"):
        decode_image(b"GIF89a garbage", name="upload-17")
    with pytest.raises(TypeError):
        decode_image(12345)


def test_iter_image_paths(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    for rel in ["b/2.png", "a/1.JPG", "a/z.webp", "a/notes.txt", "a/.hidden.png", "top.gif"]:
        (tmp_path / rel).write_bytes(b"x")
    extra = tmp_path / "a" / "notes.txt"
    got = list(iter_image_paths([tmp_path, extra]))
    rel = [str(p.relative_to(tmp_path)) for p in got]
    assert rel == ["a/1.JPG", "a/z.webp", "b/2.png", "top.gif", "a/notes.txt"]


# ----------------------------------------------------------- each cause raises its own ImageError subclass
# (callers such as the HTTP service choose by type, never by message)

def _noise_png(size: int = 64) -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _raises(kind, *args, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as e:
        decode_image(*args, **kwargs)
    assert type(e.value) is kind, f"{type(e.value).__name__}: {e.value}"
    return e.value


def test_unreadable_missing_file_and_directory(tmp_path):
    assert "file not found" in str(_raises(ImageUnreadable, tmp_path / "nowhere.png"))
    assert "is a directory" in str(_raises(ImageUnreadable, tmp_path))


def test_unreadable_on_an_os_error(tmp_path):
    parent = tmp_path / "a_file.png"
    parent.write_bytes(_noise_png())
    # a path through a regular file: the OS refuses it (ENOTDIR), whoever runs the test
    assert "cannot read file" in str(_raises(ImageUnreadable, parent / "inside.png"))


def test_not_an_image_empty_text_and_unknown_bytes(tmp_path):
    assert "empty file" in str(_raises(NotAnImage, b"", name="empty"))
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\n")
    assert "looks like text" in str(_raises(NotAnImage, p))
    assert "not a recognised image format" in str(_raises(NotAnImage, b"\x00\x01\x02\x03garbage", name="blob"))


def test_too_large_by_our_pixel_limit():
    err = _raises(ImageTooLarge, _header_only_png(8000, 8000), name="bomb_8k.png")
    assert "8000x8000" in str(err) and "limit" in str(err)
    _raises(ImageTooLarge, Image.new("RGB", (100, 100)), name="tiny.png", max_pixels=9_999)


def test_too_large_by_pillows_bomb_limit():
    # 20000x20000 is above twice Pillow's MAX_IMAGE_PIXELS: Pillow refuses it even when our limit would not.
    err = _raises(ImageTooLarge, _header_only_png(20000, 20000), name="bomb_20k.png", max_pixels=10**10)
    assert "decompression bomb" in str(err)


def test_corrupt_truncated_and_zero_size():
    data = _noise_png()
    err = _raises(CorruptImage, data[: len(data) // 2], name="cut.png")
    assert "cannot decode image" in str(err)
    # under a raised limit the header-only PNG reaches the decoder, which finds its pixel data missing
    _raises(CorruptImage, _header_only_png(8000, 8000), name="short.png", max_pixels=70_000_000)


def test_corrupt_when_the_mode_cannot_be_converted(monkeypatch):
    img = Image.new("HSV", (4, 4))

    def refuse(self, *args, **kwargs):
        raise ValueError("conversion not supported")

    monkeypatch.setattr(Image.Image, "convert", refuse)
    assert "cannot convert image mode 'HSV'" in str(_raises(CorruptImage, img, name="hsv"))


def test_every_type_is_an_image_error():
    for kind in (ImageUnreadable, NotAnImage, ImageTooLarge, CorruptImage):
        assert issubclass(kind, ImageError)
