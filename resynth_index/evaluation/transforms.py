"""The robustness transforms of the Resynthesis paper, applied to *query* images only (never to candidates or
the gallery): Bongini, Molinari, Costanzo, Tondi, Barni, "Training-free Source Attribution of AI-generated Images
via Resynthesis" (arXiv 2510.24278, WIFS 2025).

Seventeen transforms, each a small function ``f(image, *, seed=0, **params) -> PIL.Image`` (8-bit RGB in, 8-bit
RGB out) with documented parameters and defaults inside the ranges the paper evaluates. Every transform is
deterministic given its parameters and ``seed``; the random ones (crop position, noise, print-scan) draw from
``numpy.random.default_rng(seed)``. Codec transforms (JPEG, WebP, the social-media ones) really encode and decode.

Spec strings select and parameterise them on the command line (``rindex eval --transforms``)::

    jpeg                       # default parameters
    jpeg:quality=50            # one parameter
    resize:factor=0.4,crop:fraction=0.5      # a comma list; a bare word starts a new transform

Example::

    >>> from PIL import Image
    >>> from resynth_index.evaluation.transforms import apply_transform, parse_transforms
    >>> [t.label for t in parse_transforms("jpeg:quality=50,blur")]
    ['jpeg(quality=50)', 'blur(sigma=1.0)']
    >>> apply_transform(Image.new("RGB", (64, 64), "gray"), "greyscale").size
    (64, 64)
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from ..errors import ConfigError


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _encode(image: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    _rgb(image).save(buf, fmt, **kw)
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out.convert("RGB")


def _from_float(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8), "RGB")


def _to_float(image: Image.Image) -> np.ndarray:
    return np.asarray(_rgb(image), dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------------------------- the 17
def jpeg(image: Image.Image, *, quality: int = 75, seed: int = 0) -> Image.Image:
    """JPEG round trip at ``quality`` (the paper: 50–100)."""
    return _encode(image, "JPEG", quality=int(quality))


def webp(image: Image.Image, *, quality: int = 75, seed: int = 0) -> Image.Image:
    """Lossy WebP round trip at ``quality``."""
    return _encode(image, "WEBP", quality=int(quality))


def resize(image: Image.Image, *, factor: float = 0.5, seed: int = 0) -> Image.Image:
    """Rescale both sides by ``factor`` (the paper: 0.4–2.0), bicubic; the image keeps its new size."""
    w, h = image.size
    return _rgb(image).resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.BICUBIC)


def crop(image: Image.Image, *, fraction: float = 0.7, seed: int = 0) -> Image.Image:
    """Keep a ``fraction`` of each side (the paper: 50–90%) at a position drawn from ``seed``."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"crop: fraction must be in (0, 1], got {fraction}")
    w, h = image.size
    cw, ch = max(1, round(w * fraction)), max(1, round(h * fraction))
    rng = np.random.default_rng(seed)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return _rgb(image).crop((x, y, x + cw, y + ch))


def rotate(image: Image.Image, *, degrees: float = 5.0, seed: int = 0) -> Image.Image:
    """Rotate by ``degrees`` (counter-clockwise; the paper: ±5°), same size, corners filled by edge colour."""
    img = _rgb(image)
    fill = tuple(int(v) for v in np.asarray(img).reshape(-1, 3).mean(axis=0))
    return img.rotate(float(degrees), resample=Image.BICUBIC, expand=False, fillcolor=fill)


def contrast(image: Image.Image, *, factor: float = 1.5, seed: int = 0) -> Image.Image:
    """PIL contrast enhancement by ``factor`` (1 = unchanged)."""
    return ImageEnhance.Contrast(_rgb(image)).enhance(float(factor))


def brightness(image: Image.Image, *, factor: float = 1.3, seed: int = 0) -> Image.Image:
    """PIL brightness enhancement by ``factor`` (1 = unchanged)."""
    return ImageEnhance.Brightness(_rgb(image)).enhance(float(factor))


def blur(image: Image.Image, *, sigma: float = 1.0, seed: int = 0) -> Image.Image:
    """Gaussian blur with standard deviation ``sigma`` pixels."""
    return _rgb(image).filter(ImageFilter.GaussianBlur(radius=float(sigma)))


def instagram(image: Image.Image, *, size: int = 1080, min_width: int = 320, quality: int = 85, seed: int = 0) -> Image.Image:
    """Instagram-style upload: fit the longest side into ``size`` px (downscale only), widen images narrower than
    ``min_width`` px to that width (Instagram's minimum), then JPEG at ``quality``."""
    img = _rgb(image)
    w, h = img.size
    scale = min(1.0, size / max(w, h))
    if w * scale < min_width:
        scale = min_width / w
    if scale != 1.0:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    return _encode(img, "JPEG", quality=int(quality))


def twitter(image: Image.Image, *, max_side: int = 4096, upload_quality: int = 92, quality: int = 85, seed: int = 0) -> Image.Image:
    """Twitter-style recompression: the uploaded JPEG (``upload_quality``) is fitted into ``max_side`` px and
    re-encoded by the platform at ``quality`` with 4:2:0 chroma subsampling (two generations of JPEG)."""
    img = _encode(image, "JPEG", quality=int(upload_quality))
    w, h = img.size
    if max(w, h) > max_side:
        s = max_side / max(w, h)
        img = img.resize((round(w * s), round(h * s)), Image.LANCZOS)
    return _encode(img, "JPEG", quality=int(quality), subsampling=2)


def greyscale(image: Image.Image, *, seed: int = 0) -> Image.Image:
    """Luma only (ITU-R 601), returned as 3-channel RGB."""
    return _rgb(image).convert("L").convert("RGB")


def hsv_shift(image: Image.Image, *, hue: float = 0.05, saturation: float = 1.2, value: float = 1.0, seed: int = 0) -> Image.Image:
    """Rotate hue by ``hue`` of a turn, scale saturation and value by ``saturation`` and ``value``."""
    hsv = np.asarray(_rgb(image).convert("HSV"), dtype=np.float32)
    hsv[..., 0] = (hsv[..., 0] + hue * 256.0) % 256.0
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * value, 0, 255)
    return Image.fromarray(np.rint(hsv).astype(np.uint8), "HSV").convert("RGB")


def cmyk(image: Image.Image, *, quality: int = 90, seed: int = 0) -> Image.Image:
    """RGB → CMYK → RGB round trip through PIL (naive conversion; ``quality`` > 0 also stores the CMYK image as
    a JPEG at that quality, as a print workflow would)."""
    c = _rgb(image).convert("CMYK")
    if quality > 0:
        buf = io.BytesIO()
        c.save(buf, "JPEG", quality=int(quality))
        c = Image.open(io.BytesIO(buf.getvalue()))
        c.load()
    return c.convert("RGB")


def median(image: Image.Image, *, size: int = 3, seed: int = 0) -> Image.Image:
    """Median filter over a ``size`` × ``size`` window (odd)."""
    if size < 1 or size % 2 == 0:
        raise ConfigError(f"median: size must be odd and positive, got {size}")
    return _rgb(image).filter(ImageFilter.MedianFilter(int(size)))


def white_noise(image: Image.Image, *, sigma: float = 0.03, seed: int = 0) -> Image.Image:
    """Additive Gaussian noise, standard deviation ``sigma`` on the [0, 1] scale, per pixel and channel."""
    arr = _to_float(image)
    return _from_float(arr + np.random.default_rng(seed).normal(0.0, sigma, arr.shape).astype(np.float32))


def perlin_field(height: int, width: int, *, scale: float = 8.0, octaves: int = 3, seed: int = 0) -> np.ndarray:
    """Fractal Perlin (gradient) noise in about [-1, 1], shape (height, width); ``scale`` = lattice cells along
    the longer side in the first octave, each further octave doubles it and halves the amplitude."""
    rng = np.random.default_rng(seed)
    out = np.zeros((height, width), dtype=np.float64)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = max(1.0, scale * 2**o)
        gy, gx = int(np.ceil(cells * height / max(height, width))) + 1, int(np.ceil(cells * width / max(height, width))) + 1
        angles = rng.uniform(0, 2 * np.pi, (gy + 1, gx + 1))
        grad = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
        ys = np.arange(height) * (gy - 1) / max(height, 1)
        xs = np.arange(width) * (gx - 1) / max(width, 1)
        y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
        fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]

        def dot(dy, dx):
            g = grad[(y0 + dy)[:, None], (x0 + dx)[None, :]]
            return g[..., 0] * (fx - dx) + g[..., 1] * (fy - dy)

        fade = lambda t: t * t * t * (t * (t * 6 - 15) + 10)  # noqa: E731
        u, v = fade(fx), fade(fy)
        n0 = dot(0, 0) * (1 - u) + dot(0, 1) * u
        n1 = dot(1, 0) * (1 - u) + dot(1, 1) * u
        out += amp * ((n0 * (1 - v) + n1 * v) * np.sqrt(2.0))
        total += amp
        amp /= 2.0
    return out / total


def perlin(image: Image.Image, *, amplitude: float = 0.06, scale: float = 8.0, octaves: int = 3, seed: int = 0) -> Image.Image:
    """Additive Perlin noise (the same field on every channel), ``amplitude`` on the [0, 1] scale."""
    arr = _to_float(image)
    field_ = perlin_field(arr.shape[0], arr.shape[1], scale=scale, octaves=int(octaves), seed=seed)
    return _from_float(arr + amplitude * field_[..., None].astype(np.float32))


def print_scan(
    image: Image.Image,
    *,
    blur_sigma: float = 0.8,
    noise: float = 0.02,
    gamma: float = 1.1,
    colour_shift: float = 0.03,
    quality: int = 90,
    seed: int = 0,
) -> Image.Image:
    """Simulated print and scan: Gaussian blur (``blur_sigma``), a per-channel gain drawn within
    ±``colour_shift`` with a ``gamma`` curve, Gaussian sensor noise (``noise``), then JPEG at ``quality``."""
    rng = np.random.default_rng(seed)
    arr = _to_float(_rgb(image).filter(ImageFilter.GaussianBlur(radius=float(blur_sigma))))
    gain = 1.0 + rng.uniform(-colour_shift, colour_shift, 3).astype(np.float32)
    arr = np.clip(arr * gain, 0, 1) ** float(gamma)
    arr = arr + rng.normal(0.0, noise, arr.shape).astype(np.float32)
    return _encode(_from_float(arr), "JPEG", quality=int(quality))


TRANSFORMS: dict[str, Callable[..., Image.Image]] = {
    "jpeg": jpeg,
    "webp": webp,
    "resize": resize,
    "crop": crop,
    "rotate": rotate,
    "contrast": contrast,
    "brightness": brightness,
    "blur": blur,
    "instagram": instagram,
    "twitter": twitter,
    "greyscale": greyscale,
    "hsv_shift": hsv_shift,
    "cmyk": cmyk,
    "median": median,
    "print_scan": print_scan,
    "white_noise": white_noise,
    "perlin": perlin,
}


def _defaults(fn: Callable) -> dict[str, Any]:
    kw = fn.__kwdefaults__ or {}
    return {k: v for k, v in kw.items() if k != "seed"}


@dataclass(frozen=True)
class Transform:
    """One parameterised transform; ``label`` is its stable name in reports (``jpeg(quality=50)``)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def full_params(self) -> dict[str, Any]:
        return {**_defaults(TRANSFORMS[self.name]), **self.params}

    @property
    def label(self) -> str:
        return f"{self.name}(" + ",".join(f"{k}={v}" for k, v in self.full_params.items()) + ")"

    def __call__(self, image: Image.Image, seed: int = 0) -> Image.Image:
        return TRANSFORMS[self.name](image, seed=seed, **self.params)


def _coerce(name: str, key: str, raw: str) -> Any:
    defaults = _defaults(TRANSFORMS[name])
    if key not in defaults:
        raise ConfigError(f"transform {name!r} has no parameter {key!r} (parameters: {', '.join(defaults) or 'none'})")
    kind = type(defaults[key])
    try:
        return int(raw) if kind is int else float(raw)
    except ValueError:
        raise ConfigError(f"transform {name}: {key}={raw!r} is not a {kind.__name__}") from None


def parse_transforms(spec: str | None) -> list[Transform]:
    """Parse ``"jpeg:quality=50,blur:sigma=2,greyscale"``; ``"all"`` (or None) = every transform with defaults,
    ``"none"`` or ``""`` = no transform."""
    if spec is None or spec.strip() == "all":
        return [Transform(n) for n in TRANSFORMS]
    out: list[Transform] = []
    for token in [t.strip() for t in spec.split(",") if t.strip()]:
        if token == "none":
            continue
        if "=" in token and ":" not in token:
            if not out:
                raise ConfigError(f"transform parameter {token!r} comes before any transform name")
            key, raw = token.split("=", 1)
            last = out[-1]
            out[-1] = Transform(last.name, {**last.params, key.strip(): _coerce(last.name, key.strip(), raw.strip())})
            continue
        name, _, rest = token.partition(":")
        name = name.strip()
        if name not in TRANSFORMS:
            raise ConfigError(f"unknown transform {name!r}; choose from {', '.join(TRANSFORMS)}")
        params = {}
        if rest:
            key, eq, raw = rest.partition("=")
            if not eq:
                raise ConfigError(f"transform {name}: parameter {rest!r} must be key=value")
            params[key.strip()] = _coerce(name, key.strip(), raw.strip())
        out.append(Transform(name, params))
    return out


def apply_transform(image: Image.Image, spec: str | Transform, seed: int = 0) -> Image.Image:
    """Apply one transform given by name/spec string or :class:`Transform`."""
    t = spec if isinstance(spec, Transform) else parse_transforms(spec)[0]
    return t(image, seed=seed)
