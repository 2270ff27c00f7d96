"""The hostile-input suite's cases, generated in code (nothing binary is committed).

``hostile_cases()`` returns :class:`Case` objects: a file name, its bytes, and what must happen to it:
``ok`` (answered, no error), ``error`` (refused with an error naming it) or ``any`` (either, but never a crash).
Run it as a script to write the cases into a directory: ``python tests/hostile_cases.py DIR``.
``hostile_names()`` lists generator names for ``rindex enroll`` (refused or accepted), which the HTTP tests also
send as image names.
"""

from __future__ import annotations

import io
import json
import random
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: str  # "ok" | "error" | "any"
    group: str


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def raw_png(width: int, height: int, *, rows: int | None = None) -> bytes:
    """A greyscale PNG written by hand: ``rows`` rows of data (all of them by default), so that a header can
    announce any size (a 2×200000 strip compresses to a few hundred bytes)."""
    rows = height if rows is None else rows
    raw = zlib.compress((b"\x00" + b"\x80" * width) * rows, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", raw) + _chunk(b"IEND", b"")


def _noise(size=(48, 40), seed=0, mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_with_text(text: dict[str, str], img: Image.Image | None = None, *, compressed: bool = False) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v, zip=compressed)
    return _save(img or _noise(seed=7), "PNG", pnginfo=info)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _valid_images() -> list[Case]:
    out = []
    for seed in range(3):
        base = _noise(seed=seed)
        out += [
            Case(f"valid_{seed}.png", _save(base, "PNG"), "ok", "valid"),
            Case(f"valid_{seed}.jpg", _save(base, "JPEG", quality=85), "ok", "valid"),
            Case(f"valid_{seed}.webp", _save(base, "WEBP", quality=80), "ok", "valid"),
            Case(f"valid_{seed}.gif", _save(base.convert("P"), "GIF"), "ok", "valid"),
            Case(f"valid_{seed}.bmp", _save(base, "BMP"), "ok", "valid"),
            Case(f"valid_{seed}.tif", _save(base, "TIFF"), "ok", "valid"),
            Case(f"valid_rgba_{seed}.png", _save(base.convert("RGBA"), "PNG"), "ok", "valid"),
            Case(f"valid_l_{seed}.png", _save(base.convert("L"), "PNG"), "ok", "valid"),
            Case(f"valid_cmyk_{seed}.jpg", _save(base.convert("CMYK"), "JPEG"), "ok", "valid"),
            Case(f"valid_16bit_{seed}.png",
                 _save(Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 257)), "PNG"), "ok", "valid"),
        ]
    frames = [_noise(seed=s).convert("P") for s in range(3)]
    out.append(Case("animated.gif", _save(frames[0], "GIF", save_all=True, append_images=frames[1:]), "ok", "valid"))
    out.append(Case("banner_40to1.png", _save(_noise((400, 10)), "PNG"), "ok", "valid"))
    return out


def _sizes() -> list[Case]:
    return [
        Case("strip_2x200000.png", raw_png(2, 200_000), "error", "aspect"),
        Case("strip_200000x2.png", raw_png(200_000, 2), "error", "aspect"),
        Case("strip_2x60000.png", raw_png(2, 60_000), "error", "aspect"),
        Case("strip_1x40000000.png", raw_png(1, 40_000_000, rows=8), "error", "aspect"),
        Case("strip_1x51.png", raw_png(1, 51), "error", "aspect"),
        Case("strip_3x1000.png", raw_png(3, 1000), "error", "aspect"),
        Case("bomb_20000x20000.png", raw_png(20_000, 20_000, rows=4), "error", "bomb"),
        Case("bomb_65535x65535.png", raw_png(65_535, 65_535, rows=1), "error", "bomb"),
        Case("zero_width.png", raw_png(0, 10, rows=0), "error", "bomb"),
        Case("one_pixel.png", raw_png(1, 1), "ok", "valid"),
    ]


def _refused_formats() -> list[Case]:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"
    img = _noise((16, 16), seed=3)
    out = [Case("postscript.png", eps, "error", "format"), Case("postscript_eps.jpg", eps, "error", "format"),
           Case("pdf.png", b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n", "error", "format")]
    for fmt, kw in (("PCX", {}), ("PPM", {}), ("TGA", {}), ("SGI", {}), ("ICO", {}), ("IM", {}), ("DDS", {}),
                    ("XBM", {"mode": "1"}), ("SPIDER", {"mode": "F"}), ("MSP", {"mode": "1"})):
        try:
            im = img.convert(kw.get("mode", "RGB"))
            out.append(Case(f"format_{fmt.lower()}.png", _save(im, fmt), "error", "format"))
        except (OSError, KeyError, ValueError):
            continue
    return out


def _not_images() -> list[Case]:
    rng = random.Random(13)
    out = [
        Case("empty.png", b"", "error", "junk"),
        Case("text.png", b"hello, this is not an image\n", "error", "junk"),
        Case("html.jpg", b"<!doctype html><html><body>hi</body></html>", "error", "junk"),
        Case("json.png", json.dumps({"a": 1}).encode(), "error", "junk"),
        Case("png_magic_only.png", b"\x89PNG\r\n\x1a\n", "error", "junk"),
        Case("jpeg_magic_only.jpg", b"\xff\xd8\xff", "error", "junk"),
        Case("gif_header_only.gif", b"GIF89a\x10\x00\x10\x00", "error", "junk"),
        Case("zeros.png", b"\x00" * 4096, "error", "junk"),
        Case("ansi_\x1b[31mred.png", b"\x1b[2J\x1b[31mnot an image", "error", "junk"),
    ]
    for k in range(11):
        out.append(Case(f"random_{k}.png", rng.randbytes(rng.randint(1, 5000)), "error", "junk"))
    return out


def _truncated(valid: list[Case]) -> list[Case]:
    out = []
    sources = [c for c in valid if c.name.startswith("valid_0.")]
    for c in sources:
        for frac in (0.1, 0.3, 0.5, 0.7, 0.9, 0.98):
            cut = max(1, int(len(c.data) * frac))
            out.append(Case(f"trunc{int(frac * 100)}_{c.name}", c.data[:cut], "any", "truncated"))
    return out


def _bitflips(valid: list[Case], n: int) -> list[Case]:
    rng = random.Random(42)
    sources = [c for c in valid if c.name.startswith(("valid_1.", "valid_2."))]
    out = []
    for k in range(n):
        c = sources[k % len(sources)]
        data = bytearray(c.data)
        for _ in range(rng.randint(1, 12)):
            pos = rng.randrange(len(data))
            data[pos] = rng.randrange(256)
        out.append(Case(f"flip{k:03d}_{c.name}", bytes(data), "any", "bitflip"))
    return out


def _metadata() -> list[Case]:
    deep = 100_000
    comfy_deep = '{"1": {"class_type": "CLIPTextEncode", "inputs": {"text": ' + _nested(deep) + "}}}"
    comfy_types = json.dumps({"1": {"class_type": ["list"], "inputs": [1, 2]}, "2": "x", "3": None,
                              "4": {"class_type": "KSampler", "inputs": {"positive": [["a"], 0]}}})
    comfy_mixed = json.dumps({"1": {"class_type": "KSampler", "inputs": {"positive": ["2", 0]}},
                              "2": {"class_type": "CLIPTextEncode", "inputs": {"text": 5}},
                              "x": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat"}}})
    workflow_mixed = json.dumps({"nodes": [{"id": "b", "order": "z", "type": "CLIPTextEncode",
                                            "widgets_values": ["a dog"]},
                                           {"id": 3, "order": 1.5, "type": "CLIPTextEncode",
                                            "widgets_values": [{"x": 1}]}]})
    surrogate = '{"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a \\ud800 cat"}}, ' \
                '"\\udc00": {"class_type": "KSampler", "inputs": {"positive": ["1", 0]}}}'
    huge = "a red bicycle " * 80_000  # about 1.1 MB
    cases = {
        "meta_bang.png": ({"parameters": "!!!"}, "ok"),
        "meta_zwsp.png": ({"parameters": "\u200b"}, "ok"),
        "meta_only_punct.png": ({"parameters": "... ,,, ;;;\nSteps: 1"}, "ok"),
        "meta_huge_prompt.png": ({"parameters": huge}, "ok"),
        "meta_ansi_prompt.png": ({"parameters": "a cat \x1b[2J\x1b[31m in red \r\x07 bell"}, "ok"),
        "meta_nul_prompt.png": ({"parameters": "a\x00cat"}, "ok"),
        "meta_deep_prompt.png": ({"prompt": comfy_deep}, "ok"),
        "meta_deep_workflow.png": ({"workflow": '{"nodes": ' + _nested(deep) + "}"}, "ok"),
        "meta_comfy_types.png": ({"prompt": comfy_types}, "ok"),
        "meta_comfy_mixed_keys.png": ({"prompt": comfy_mixed}, "ok"),
        "meta_workflow_mixed.png": ({"workflow": workflow_mixed}, "ok"),
        "meta_surrogates.png": ({"prompt": surrogate}, "ok"),
        "meta_surrogates_workflow.png": ({"workflow": '{"nodes": [{"type": "CLIPTextEncode", '
                                                      '"widgets_values": ["\\udfff a fox"]}]}'}, "ok"),
        "meta_not_json.png": ({"prompt": "{not json", "workflow": "[1, 2"}, "ok"),
        "meta_json_scalar.png": ({"prompt": "3", "workflow": "null"}, "ok"),
        "meta_many_keys.png": ({f"k{i}": "x" * 100 for i in range(200)}, "ok"),
        "meta_rtl_confusable.png": ({"parameters": "a \u202ecat\u202c on a mat"}, "ok"),
    }
    out = [Case(name, png_with_text(text), expect, "metadata") for name, (text, expect) in cases.items()]
    # over Pillow's 1 MB limit on decompressed text: refused as a text bomb
    out.append(Case("meta_huge_ztxt.png", png_with_text({"parameters": huge}, compressed=True), "error", "metadata"))
    exif = Image.Exif()
    exif[0x010E] = "\x00\x00 \x1b[31m"
    out.append(Case("exif_control.jpg", _save(_noise(seed=9), "JPEG", exif=exif.tobytes()), "ok", "metadata"))
    out.append(Case("exif_garbage.jpg", _save(_noise(seed=9), "JPEG", exif=b"Exif\x00\x00" + b"\xff" * 64),
                    "any", "metadata"))
    return out


def hostile_names() -> list[tuple[str, str, str]]:
    """Generator names for ``rindex enroll NAME``: ``(name, expect, why)`` with ``expect`` ``"refused"`` or
    ``"ok"``. Through HTTP, where no endpoint enrols, the same strings are image names (echoed, never a 5xx)."""
    refused = {
        "empty": "", "spaces only": "   ", "leading space": " vendor", "trailing space": "vendor ",
        "tab": "vendor\tx", "newline": "vendor\nx", "carriage return": "vendor\rx", "NUL": "vendor\x00x",
        "ANSI escape": "\x1b[31mvendor\x1b[0m", "bell": "vendor\x07", "DEL": "vendor\x7f", "C1 control": "vendor\x85",
        "no-break space": "vendor\u00a0x", "ideographic space": "vendor\u3000x", "en quad": "vendor\u2000x",
        "line separator": "vendor\u2028x", "paragraph separator": "vendor\u2029x",
        "zero-width space": "vendor\u200bx", "zero-width joiner": "vendor\u200dx", "soft hyphen": "ven\u00addor",
        "right-to-left override": "\u202erodnev", "byte-order mark": "\ufeffvendor",
        "tag characters": "vendor\U000e0041",
        "Hangul filler": "vendor\u3164", "variation selector": "vendor\ufe0f", "braille blank": "vendor\u2800",
        "private use": "vendor\ue000", "lone surrogate": "vendor\udcff", "65 characters": "v" * 65,
        "10,000 characters": "v" * 10_000, "no letter or digit": "!!!", "only a mark": "\u0301",
        "unknown": "unknown", "Unknown": "Unknown", "UNKNOWN": "UNKNOWN", "Cyrillic o": "unkn\u043ewn",
        "Greek omicron": "unkn\u03bfwn", "fullwidth": "\uff55\uff4e\uff4b\uff4e\uff4f\uff57\uff4e",
        "mathematical bold": "".join(chr(0x1D41A + ord(c) - 97) for c in "unknown"), "digit zero": "unkn0wn",
        "Cyrillic pe": "u\u043fknown", "vv": "unknovvn", "combining diaeresis": "unkno\u0308wn",
        "zero-width inside": "unk\u200bnown", "Real": "Real", "REAL": "REAL", "Cyrillic a": "re\u0430l",
        "Cyrillic ie": "r\u0435al", "digit one": "rea1", "capital I": "reaI",
        "small capitals": "\u0280\u1d07\u1d00\u029f",
        "fullwidth real": "\uff52\uff45\uff41\uff4c", "Greek alpha": "re\u03b1l",
    }
    ok = {"the reserved real": "real", "plain": "tiny-sd", "inner space": "vendor x", "hub id": "org/model-v1.5",
          "Japanese": "\u753b\u50cf\u751f\u6210", "accented": "caf\u00e9", "64 characters": "v" * 64,
          "contains unknown": "unknown-vendor", "contains real": "realistic"}
    return [(n, "refused", why) for why, n in refused.items()] + [(n, "ok", why) for why, n in ok.items()]


def hostile_cases(bitflips: int = 70) -> list[Case]:
    """Every file case of the suite: 201 with the default 70 bit-flipped files (there were 110; 70 keep the
    total above 200 and the suite under a minute)."""
    valid = _valid_images()
    cases = valid + _sizes() + _refused_formats() + _not_images() + _truncated(valid) + _bitflips(valid, bitflips)
    cases += _metadata()
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def write_cases(directory: str | Path, cases: list[Case] | None = None) -> list[Case]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cases = hostile_cases() if cases is None else cases
    for c in cases:
        (directory / c.name).write_bytes(c.data)
    return cases


if __name__ == "__main__":
    written = write_cases(sys.argv[1] if len(sys.argv) > 1 else "hostile-cases")
    print(f"{len(written)} cases")
