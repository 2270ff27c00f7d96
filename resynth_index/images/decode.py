"""Decode and guard input images: one RGB 8-bit picture plus the text the file carries, or an ImageError.

Every query image passes through :func:`decode_image` first. It never returns a placeholder for a broken
file: an unreadable input raises an :class:`~resynth_index.errors.ImageError` whose message names the image
(its path, or the ``name`` given for bytes / in-memory images) and says what is wrong. The subclass is chosen
where the cause is known, so that callers decide by type (the HTTP service's status codes):
:class:`~resynth_index.errors.ImageUnreadable` (missing file, a directory, an I/O error),
:class:`~resynth_index.errors.NotAnImage` (empty, text, an unrecognised format),
:class:`~resynth_index.errors.ImageTooLarge` (over ``max_pixels``, Pillow's decompression-bomb limit) and
:class:`~resynth_index.errors.CorruptImage` (truncated or damaged data, an unconvertible mode).

Normalisation rules (all documented because they change pixels, and therefore embeddings and hashes):

* **Size guard.** The pixel count in the header is checked against ``max_pixels`` *before* any pixel data
  is decoded, so a decompression bomb (a 20000×20000 PNG of a few KB) is refused without allocating it.
  Pillow's own hard limit (``2 × PIL.Image.MAX_IMAGE_PIXELS``) also applies and is reported the same way.
* **Frames.** Multi-frame files (animated GIF/WebP/APNG, multi-page TIFF) give their first frame.
* **Orientation.** The EXIF orientation tag is applied (the picture as a viewer shows it).
* **Alpha.** Images with transparency (RGBA, LA, PA, palette + ``transparency``) are *composited over white*,
  as a viewer would show them; the colour stored under fully transparent pixels is undefined and discarded.
* **High bit depth.** 16-bit greyscale (``I;16``, ``I;16B``, ``I``) is scaled to 8 bits by ``v / 257``
  (rounded), so a full-range 16-bit image stays full-range instead of being clipped to white. A mode ``I``
  image whose values all fit in 0..255 is taken as already 8-bit. Float images (``F``) in 0..1 are
  scaled by 255, otherwise clipped to 0..255.
* **Colour.** CMYK is converted to RGB (through its embedded ICC profile when Pillow's ImageCms can, else
  Pillow's plain conversion); palette, greyscale, bilevel, YCbCr and LAB images are converted with Pillow.
  RGB images are not colour-managed: stored values are kept as they are.

``metadata`` collects the text a file carries: PNG ``tEXt``/``iTXt``/``zTXt`` chunks under their own keys
(A1111's ``parameters``, ComfyUI's ``prompt`` and ``workflow``...), a JPEG/GIF ``comment``, and from EXIF
``exif:UserComment`` (the 8-byte charset header decoded: ``ASCII``, ``UNICODE`` (UTF-16), ``JIS``, undefined),
``exif:ImageDescription`` and ``exif:Software``. ``data`` keeps the file's bytes for the provenance readers.

Example::

    >>> from PIL import Image
    >>> d = decode_image(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), name="clear.png")
    >>> d.image.mode, d.image.getpixel((0, 0))
    ('RGB', (255, 255, 255))
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import CorruptImage, ImageError, ImageTooLarge, ImageUnreadable, NotAnImage

MAX_PIXELS_DEFAULT = 40_000_000
"""Default decompression-bomb guard: images with more pixels than this are refused before decoding."""

MAX_ASPECT_DEFAULT = 50.0
"""Default longest-to-shortest side ratio above which an image is refused before decoding. Preprocessing scales
the shorter side to the model's input size, so a 2×200000 strip would become a 224×22,400,000 tensor; 50:1 keeps
the worst case at 224×11,200 (2.5 Mpixel) while admitting any panorama or banner a camera or a site writes."""

ALLOWED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF")
"""The Pillow decoders an input may reach (``Image.open(..., formats=...)``): the formats people and
generators save pictures in. Everything else, notably EPS/PostScript and PDF (which Pillow hands to an external
Ghostscript), is refused as :class:`NotAnImage` whatever the file is called. AVIF/HEIF only where a plugin
registered them."""

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic"}
)
"""File extensions :func:`iter_image_paths` picks up when it walks a directory (case-insensitive)."""

_EXIF_IFD = 0x8769
_TAG_USER_COMMENT = 0x9286
_TAG_IMAGE_DESCRIPTION = 0x010E
_TAG_SOFTWARE = 0x0131
_TAG_XP_COMMENT = 0x9C9C


@dataclass
class DecodedImage:
    """One decoded input image.

    Attributes:
        path: the file it came from, or None for bytes / in-memory images.
        image: RGB, 8 bits per channel, fully loaded (no lazy file handle behind it).
        metadata: text carried by the file (see the module docstring for the keys).
        pixel_sha256: hex SHA-256 of ``b"{width}x{height}:"`` followed by the RGB bytes; identical pixels give
            an identical hash whatever the container format or metadata.
        data: the encoded file as read (None for in-memory images): provenance readers verify C2PA hashes on it.
        format: Pillow's name of the container format (``PNG``, ``JPEG``, ``WEBP``...), None for in-memory images.
    """

    path: str | None
    image: Image.Image
    metadata: dict[str, str] = field(default_factory=dict)
    pixel_sha256: str = ""
    data: bytes | None = field(default=None, repr=False)
    format: str | None = None

    @property
    def label(self) -> str:
        """How messages name this image: its path, else ``<image>``."""
        return self.path or "<image>"


def decode_image(
    source: str | os.PathLike | bytes | Image.Image,
    *,
    max_pixels: int = MAX_PIXELS_DEFAULT,
    name: str | None = None,
    max_aspect: float = MAX_ASPECT_DEFAULT,
) -> DecodedImage:
    """Decode ``source`` into a :class:`DecodedImage` or raise an :class:`ImageError` subclass naming it.

    Args:
        source: a file path, the encoded bytes of a file, or a PIL image (copied, never modified).
        max_pixels: refuse images whose header announces more than this many pixels (width × height).
        name: how to name the image in errors when ``source`` is bytes or a PIL image (a path names itself).
        max_aspect: refuse images whose longer side is more than this many times their shorter side.
    """
    if max_pixels is None or int(max_pixels) <= 0:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    max_pixels = int(max_pixels)

    path: str | None = None
    if isinstance(source, Image.Image):
        label = name or "<in-memory image>"
        _check_size(source.size, max_pixels, label, max_aspect)
        try:
            source.load()
            metadata = _collect_metadata(source)
            frame = ImageOps.exif_transpose(source)  # always a new image: the caller's is never modified
            rgb = _to_rgb(frame, label)
        except ImageError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"{label}: cannot read image: {_describe(exc)}") from exc
        except Exception as exc:  # noqa: BLE001 - any decoder failure becomes a named ImageError
            raise CorruptImage(f"{label}: cannot read image: {_describe(exc)}") from exc
        return DecodedImage(path=None, image=rgb, metadata=metadata, pixel_sha256=_pixel_hash(rgb))

    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<image bytes>"
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        label = name or path
        data = _read_file(path, label)
    else:
        raise TypeError(f"decode_image() takes a path, bytes or a PIL image, not {type(source).__name__}")

    if not data:
        raise NotAnImage(f"{label}: empty file (0 bytes), not an image")

    try:
        with warnings.catch_warnings():
            # Our own guard below decides; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=_allowed_formats())
            container = im.format
            _check_size(im.size, max_pixels, label, max_aspect)
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
            metadata = _collect_metadata(im)
            im = ImageOps.exif_transpose(im) or im
            rgb = _to_rgb(im, label)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{label}: refused as a possible decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        head = data[:16]
        hint = _refused_format_hint(data) or (" (looks like text)" if _looks_like_text(head) else "")
        raise NotAnImage(f"{label}: not a recognised image format{hint}") from exc
    except MemoryError as exc:
        raise CorruptImage(f"{label}: out of memory while decoding") from exc
    except RecursionError as exc:
        raise CorruptImage(f"{label}: cannot decode image: structure nested too deeply") from exc
    except Exception as exc:  # noqa: BLE001 - truncated data, bad chunks, zlib errors, codec errors...
        raise CorruptImage(f"{label}: cannot decode image: {_describe(exc)}") from exc

    return DecodedImage(path=path, image=rgb, metadata=metadata, pixel_sha256=_pixel_hash(rgb), data=data,
                        format=container)


def iter_image_paths(inputs: Sequence[str | os.PathLike]) -> Iterator[Path]:
    """Yield image files: each input file as given (whatever its extension, even if missing, so that the
    caller reports it), and for each directory every file below it with an image extension
    (:data:`IMAGE_EXTENSIONS`), recursively, in sorted order. Hidden entries (``.name``, e.g. macOS ``._x.png``
    resource forks) inside directories are skipped."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            yield from _walk(p)
        else:
            yield p


def _walk(root: Path) -> Iterator[Path]:
    try:
        entries = sorted(root.iterdir(), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _walk(entry)
        elif entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS:
            yield entry


# --------------------------------------------------------------------------------------------- helpers


def _read_file(path: str, label: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise ImageUnreadable(f"{label}: file not found") from exc
    except IsADirectoryError as exc:
        raise ImageUnreadable(f"{label}: is a directory, not an image file") from exc
    except OSError as exc:
        raise ImageUnreadable(f"{label}: cannot read file: {exc.strerror or exc}") from exc


def _allowed_formats() -> tuple[str, ...]:
    Image.init()  # registers the plugins, so that only formats this Pillow knows are named
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def _refused_format_hint(data: bytes) -> str:
    """`` (FORMAT is not accepted)`` when a decoder outside the allow-list recognises ``data``."""
    Image.init()
    allowed = set(ALLOWED_FORMATS)
    for fmt, (_factory, accept) in Image.OPEN.items():
        if fmt in allowed or accept is None:
            continue
        try:
            if accept(data[:64]):
                return f" ({fmt} is not an accepted format; accepted: {', '.join(_allowed_formats())})"
        except Exception:  # noqa: BLE001 - a plugin's sniffer is best effort here
            continue
    return ""


def _check_size(size: tuple[int, int], max_pixels: int, label: str, max_aspect: float = MAX_ASPECT_DEFAULT) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise CorruptImage(f"{label}: invalid image size {w}x{h}")
    if max(w, h) > max_aspect * min(w, h):
        raise ImageTooLarge(
            f"{label}: image is {w}x{h}, an aspect ratio of {max(w, h) / min(w, h):,.0f}:1, above the limit of "
            f"{max_aspect:g}:1"
        )
    if w * h > max_pixels:
        raise ImageTooLarge(
            f"{label}: image is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,} "
            "(possible decompression bomb; raise max_pixels to accept it)"
        )


def _describe(exc: BaseException) -> str:
    msg = str(exc).strip()
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _pixel_hash(rgb: Image.Image) -> str:
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def _to_rgb(im: Image.Image, label: str) -> Image.Image:
    """Convert any decoded frame to a loaded 8-bit RGB image following the module rules."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im.copy() if im.readonly else im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)
        if mode == "I" and arr.size and arr.max() <= 255 and arr.min() >= 0:
            out = arr
        else:
            out = np.clip(arr, 0, 65535) / 257.0
        grey = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im).astype(np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * 255.0
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(im)
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        if im.mode == "RGB":
            return im
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except Exception as exc:  # noqa: BLE001
        raise CorruptImage(f"{label}: cannot convert image mode {mode!r} to RGB: {_describe(exc)}") from exc


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken profile falls back to the plain conversion
            pass
    return im.convert("RGB")


def _collect_metadata(im: Image.Image) -> dict[str, str]:
    meta: dict[str, str] = {}
    # PNG text chunks (tEXt/iTXt/zTXt), including those after IDAT once loaded.
    text = getattr(im, "text", None)
    if isinstance(text, dict):
        for k, v in text.items():
            s = _as_text(v)
            if s is not None and s.strip():
                meta[str(k)] = s
    for k, v in im.info.items():
        if k in meta or k in ("exif", "icc_profile", "transparency", "xmp", "XML:com.adobe.xmp"):
            continue
        if isinstance(v, str) and v.strip():
            meta[str(k)] = v
        elif k == "comment" and isinstance(v, (bytes, bytearray)):
            s = _as_text(bytes(v))
            if s and s.strip():
                meta["comment"] = s
    try:
        exif = im.getexif()
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the image unreadable
        exif = None
    if exif:
        desc = exif.get(_TAG_IMAGE_DESCRIPTION)
        desc_s = _as_text(desc) if desc is not None else None
        if desc_s and desc_s.strip("\x00 \t\r\n"):
            meta["exif:ImageDescription"] = desc_s.strip("\x00")
        software = _as_text(exif.get(_TAG_SOFTWARE)) if exif.get(_TAG_SOFTWARE) is not None else None
        if software and software.strip("\x00 \t\r\n"):
            meta["exif:Software"] = software.strip("\x00 ")
        try:
            sub = exif.get_ifd(_EXIF_IFD)
        except Exception:  # noqa: BLE001
            sub = {}
        uc = sub.get(_TAG_USER_COMMENT) if sub else None
        if uc is None:
            uc = exif.get(_TAG_USER_COMMENT)
        if uc is not None:
            s = decode_user_comment(uc)
            if s and s.strip():
                meta["exif:UserComment"] = s
        xp = exif.get(_TAG_XP_COMMENT)
        if isinstance(xp, (bytes, bytearray, tuple)):
            try:
                raw = bytes(xp)
                s = raw.decode("utf-16-le").rstrip("\x00")
                if s.strip():
                    meta["exif:XPComment"] = s
            except Exception:  # noqa: BLE001
                pass
    return meta


def _as_text(v: object) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, (bytes, bytearray)):
        b = bytes(v)
        for enc in ("utf-8", "latin-1"):
            try:
                return b.decode(enc)
            except UnicodeDecodeError:
                continue
    return None


def decode_user_comment(value: object) -> str | None:
    """Decode an EXIF UserComment value: 8-byte charset header (``ASCII``, ``UNICODE``, ``JIS`` or undefined)
    then the text. UNICODE text is UTF-16; its byte order is taken from a BOM when present, else guessed from
    where the zero bytes fall (writers disagree: piexif writes big-endian whatever the TIFF byte order)."""
    if isinstance(value, str):
        return value.strip("\x00") or None
    if not isinstance(value, (bytes, bytearray)):
        return None
    b = bytes(value)
    header, body = b[:8], b[8:]
    if header.startswith(b"UNICODE"):
        text = _decode_utf16(body)
    elif header.startswith(b"ASCII"):
        text = body.decode("utf-8", errors="replace")
    elif header.startswith(b"JIS"):
        try:
            text = body.decode("shift_jis")
        except UnicodeDecodeError:
            text = body.decode("utf-8", errors="replace")
    elif header == b"\x00" * 8:
        text = body.decode("utf-8", errors="replace")
    else:
        # No recognised header: the whole value is the text (some writers skip the header).
        text = b.decode("utf-8", errors="replace")
    text = text.strip("\x00")
    return text or None


def _decode_utf16(body: bytes) -> str:
    if body.startswith(b"\xfe\xff"):
        return body[2:].decode("utf-16-be", errors="replace")
    if body.startswith(b"\xff\xfe"):
        return body[2:].decode("utf-16-le", errors="replace")
    if len(body) % 2:
        body = body + b"\x00"
    even_zeros = body[0::2].count(0)
    odd_zeros = body[1::2].count(0)
    enc = "utf-16-be" if even_zeros >= odd_zeros else "utf-16-le"
    return body.decode(enc, errors="replace")
