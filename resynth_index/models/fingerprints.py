"""Generator fingerprints for the reference gallery: low-bit-plane CNN features (after LIDA: Wang, Cheng, Han,
Gui, "Attribution as Retrieval: Model-Agnostic AI-Generated Image Attribution", CVPR 2026) and a training-free
noise-residual spectrum.

Both work at the image's **native resolution**: an image is cut into patches (never resized: interpolating the
bit planes or the residual would blur exactly the traces they are meant to keep), the patches with the most
high-frequency energy are kept, each is described, and the image's feature is the mean over its patches.
An image smaller than the patch size is used whole.

* ``bitplane``: the lowest ``bits`` bit planes of every RGB channel, stretched to 0..255 (for 3 bits
  ``(x & 7) * 36``, as in LIDA), fed to EfficientNet-Lite0 with its real ImageNet weights (or a timm backbone
  with ``features_only``) and average-pooled after block stage ``layer``. Early stages keep the pixel-level
  statistics these planes carry; stage 2 was the best measured on the zoo.
* ``spectrum``: the log power spectrum of the noise residual (image minus its 3x3 box blur), over
  ``window``-sized patches, averaged over patches (``rfft2``: ``window * (window // 2 + 1)`` values per
  channel). Upsampling layers leave periodic peaks there; it needs no network at all. ``colour="mean"``
  averages the R, G and B spectra into one; ``colour="opponent"`` keeps three, of the opponent channels
  luminance ``(R+G+B)/3``, red-green ``R-G`` and blue-yellow ``B-(R+G)/2``, each centred on its own mean, so
  that the texture of the colour noise is not drowned by that of the brightness. On clean images of the hard
  benchmark's generators that separates fine-tunes better (README *Measured results*), but JPEG's chroma
  subsampling and blur wipe out the colour noise first. ``colour="mean+chroma"`` keeps the spectrum of
  ``"mean"`` with two thirds of the vector's energy and adds the red-green and blue-yellow spectra with the
  other third, so that the colour noise adds evidence where it survives without outvoting the rest where
  it does not.

* ``texture`` (an embedding part, not a gallery fingerprint: ``[embedder] texture``): the channel means and the
  channel covariance (Gram matrix) of EfficientNet-Lite0's early block stages on the image's central crop,
  which keep how the early filters' responses vary together.
* ``thumbnail`` (an embedding part too: ``[embedder] thumbnail``): the whole image box-filtered down to a few
  dozen pixels a side, where in the frame light and colour fall. Only the fine-tune siblings' second stage
  reads it (:mod:`resynth_index.attribution.prototypes`).

Features are returned raw; the gallery centres them on its real-photo prototype before cosine matching
(:mod:`resynth_index.gallery.references`). An image that cannot be described raises :class:`ImageError`; it never
becomes a zero vector.

:func:`load_fingerprint` builds one by kind and keyword arguments; :func:`fingerprint_from_config` maps the
``[gallery]`` table onto it.

Example::

    from PIL import Image
    from resynth_index.models.fingerprints import load_fingerprint
    fp = load_fingerprint("spectrum")
    vectors = fp.extract([Image.open("a.png").convert("RGB")])   # (1, fp.dim) float32
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..config import GalleryConfig
from ..devices import resolve_device
from ..errors import ConfigError, ImageError, ModelNotAvailableError
from .backbones import (EFFICIENTNET_BLOCKS, EFFICIENTNET_STAGE_CHANNELS, IMAGENET_MEAN, IMAGENET_STD,
                        load_efficientnet_lite0)

FINGERPRINT_KINDS = ("spectrum", "bitplane")
MIN_SIDE = 16  # below this no patch says anything about a generator


def low_bit_planes(pixels: np.ndarray, bits: int = 3) -> np.ndarray:
    """The lowest ``bits`` bit planes of a uint8 image, stretched to 0..255: ``(x & (2**bits - 1)) * scale``
    with ``scale = 255 // (2**bits - 1)`` (36 for 3 bits, as in LIDA). Shape and dtype are kept."""
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
        raise ValueError("low_bit_planes() takes a uint8 array")
    if not 1 <= bits <= 7:
        raise ValueError(f"bits must be between 1 and 7, got {bits}")
    mask = (1 << bits) - 1
    return ((pixels & mask) * (255 // mask)).astype(np.uint8)


def high_frequency_energy(pixels: np.ndarray) -> float:
    """Mean absolute 4-neighbour Laplacian of the grey image (flat patches score 0)."""
    g = pixels.astype(np.float32).mean(axis=-1) if pixels.ndim == 3 else pixels.astype(np.float32)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(np.abs(lap).mean())


def select_patches(pixels: np.ndarray, size: int, count: int) -> list[np.ndarray]:
    """Up to ``count`` non-overlapping ``size``-square crops of ``pixels`` (H, W, C), those with the most
    high-frequency energy first; an image no larger than ``size`` on both sides is returned whole. A side
    shorter than ``size`` gives patches as long as that side (cropped, never padded or resized)."""
    h, w = pixels.shape[:2]
    if h <= size and w <= size:
        return [pixels]
    ph, pw = min(size, h), min(size, w)
    tiles = [pixels[y : y + ph, x : x + pw] for y in range(0, h - ph + 1, ph) for x in range(0, w - pw + 1, pw)]
    energy = [high_frequency_energy(t) for t in tiles]
    order = sorted(range(len(tiles)), key=lambda i: (-energy[i], i))
    return [tiles[i] for i in order[:count]]


def _pixels(image: Image.Image, label: str) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    if min(arr.shape[:2]) < MIN_SIDE:
        raise ImageError(f"{label}: {arr.shape[1]}x{arr.shape[0]} is too small for a fingerprint (min {MIN_SIDE} px)")
    return arr


class Fingerprint:
    """Base: ``id`` names everything that changes the vectors; ``extract`` returns ``(n, dim)`` float32."""

    kind = ""

    def __init__(self, *, id: str, dim: int) -> None:
        self.id = id
        self.dim = dim

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} dim={self.dim}>"

    def extract(self, images: Sequence[Image.Image], names: Sequence[str] | None = None) -> np.ndarray:
        rows = []
        for i, im in enumerate(images):
            label = names[i] if names is not None else f"<image {i}>"
            rows.append(self._describe(_pixels(im, label)))
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)

    def _describe(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError


#: how the spectrum treats colour, and how many spectra it keeps: one of the channel mean, three of the opponent
#: channels, or the mean's with the two chroma channels' beside it
_SPECTRA = {"mean": 1, "opponent": 3, "mean+chroma": 3}
SPECTRUM_COLOURS = tuple(_SPECTRA)


class SpectrumFingerprint(Fingerprint):
    """Log power spectrum of the 3x3-box-blur noise residual (see the module docstring)."""

    kind = "spectrum"

    def __init__(self, *, window: int = 64, patches: int = 8, colour: str = "mean") -> None:
        if window < MIN_SIDE or window % 2:
            raise ConfigError(f"gallery.window must be an even number >= {MIN_SIDE}, got {window}")
        if colour not in SPECTRUM_COLOURS:
            raise ConfigError(f"spectrum colour must be one of {', '.join(SPECTRUM_COLOURS)}, got {colour!r}")
        self.window, self.patches, self.colour = window, patches, colour
        channels = _SPECTRA[colour]
        # "mean" keeps the id it had before colours existed, so stored vectors stay valid
        super().__init__(id=f"spectrum:residual3:w{window}:p{patches}" + ("" if colour == "mean" else f":{colour}"),
                         dim=channels * window * (window // 2 + 1))

    def _describe(self, pixels: np.ndarray) -> np.ndarray:
        power = np.zeros((_SPECTRA[self.colour], self.window, self.window // 2 + 1), np.float64)
        chosen = select_patches(pixels, self.window, self.patches)
        for patch in chosen:
            a = patch.astype(np.float32)
            padded = np.pad(a, ((1, 1), (1, 1), (0, 0)), mode="edge")
            blur = sum(padded[dy : dy + a.shape[0], dx : dx + a.shape[1]] for dy in range(3) for dx in range(3)) / 9
            # s= zero-pads a patch shorter than the window, so every image gives the same frequency grid.
            f = np.fft.rfft2((a - blur).transpose(2, 0, 1), s=(self.window, self.window))
            mean = (np.abs(f) ** 2).mean(axis=0, keepdims=True)
            if self.colour == "mean":
                power += mean
                continue
            # the opponent channels' residual spectra from the RGB ones (the residual is linear in the pixels)
            chroma = np.abs(np.stack([f[0] - f[1], f[2] - (f[0] + f[1]) / 2])) ** 2
            luminance = np.abs(f.mean(axis=0, keepdims=True)) ** 2
            power += np.concatenate([luminance if self.colour == "opponent" else mean, chroma])
        logs = np.log(power / len(chosen) + 1e-3)
        if self.colour == "mean":
            return logs.ravel()
        logs -= logs.mean(axis=(1, 2), keepdims=True)
        if self.colour == "opponent":
            return logs.ravel()
        # mean+chroma: the spectrum of "mean" keeps two thirds of the vector's energy and the colour noise one third,
        # so colour informs the match without being able to outvote brightness when JPEG or blur has erased it.
        return np.concatenate([np.sqrt(2 / 3) * _unit(logs[0].ravel()), np.sqrt(1 / 3) * _unit(logs[1:].ravel())])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


class BitPlaneFingerprint(Fingerprint):
    """CNN features of the low-bit-plane image (LIDA), pooled after block stage ``layer``."""

    kind = "bitplane"

    def __init__(
        self,
        *,
        backbone: str = "efficientnet-lite0",
        layer: int = 2,
        bits: int = 3,
        patch: int = 256,
        patches: int = 4,
        device: str | torch.device = "cpu",
    ) -> None:
        self.bits, self.patch, self.patches = bits, patch, patches
        self.device = resolve_device(device)
        self.stages = _load_stages(backbone, layer, self.device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        with torch.no_grad():
            dim = int(self.stages(torch.zeros(1, 3, 32, 32, device=self.device)).shape[1])
        super().__init__(id=f"bitplane{bits}:{backbone}:block{layer}:p{patch}x{patches}", dim=dim)

    def _describe(self, pixels: np.ndarray) -> np.ndarray:
        chosen = select_patches(low_bit_planes(pixels, self.bits), self.patch, self.patches)
        batch = torch.from_numpy(np.stack(chosen)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            feats = self.stages((batch - self.mean) / self.std).mean(dim=(2, 3))
        feats = torch.nn.functional.normalize(feats, dim=-1)
        return feats.mean(dim=0).cpu().numpy()


def _load_stages(backbone: str, layer: int, device: torch.device) -> torch.nn.Module:
    """The backbone's stem and first ``layer`` stages as one module mapping images to feature maps."""
    if backbone == "efficientnet-lite0":
        if not 1 <= layer <= EFFICIENTNET_BLOCKS:
            raise ConfigError(f"gallery.layer must be between 1 and {EFFICIENTNET_BLOCKS}, got {layer}")
        net = load_efficientnet_lite0(device)
        return torch.nn.Sequential(net.conv_stem, net.bn1, *net.blocks[:layer]).eval()
    if backbone.startswith("timm:"):
        import timm

        name = backbone[len("timm:") :]
        try:
            net = timm.create_model(name, pretrained=True, features_only=True, out_indices=(layer,))
        except Exception as exc:  # noqa: BLE001 - offline, unknown name, no such stage
            raise ModelNotAvailableError(f"gallery backbone {backbone!r}: cannot load: {exc}") from exc
        net = net.eval().requires_grad_(False).to(device)
        return _FirstFeatureMap(net)
    raise ConfigError(f"gallery.backbone must be 'efficientnet-lite0' or 'timm:NAME', got {backbone!r}")


class _FirstFeatureMap(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def texture_dim(layers: Sequence[int]) -> int:
    """The length of :class:`TextureFingerprint`'s vector for block stages ``layers``: each stage's channel means
    and the upper triangle of their covariance."""
    return sum(c + c * (c + 1) // 2 for c in (EFFICIENTNET_STAGE_CHANNELS[n - 1] for n in set(layers)))


class TextureFingerprint(Fingerprint):
    """Second-order texture statistics at native resolution: for each block stage in ``layers``, the channel means
    and the channel covariance (Gram matrix, upper triangle) of EfficientNet-Lite0's feature map there, over the
    image's central ``max_side``-square crop (never resized: the stride-2 stem then sees the generator's own
    pixel grid).

    Fine-tunes trained on a style set move the co-occurrence of early filters' responses more than their means,
    which is what a pooled embedding keeps (Gatys, Ecker, Bethge, "Image Style Transfer Using Convolutional
    Neural Networks", CVPR 2016, describe style by exactly these Gram matrices). Each stage's means and
    covariance are scaled to unit length apiece, so that the covariance's many entries do not drown the means
    and one stage does not drown another."""

    kind = "texture"

    def __init__(self, *, layers: Sequence[int] = (2,), max_side: int = 256,
                 device: str | torch.device = "cpu") -> None:
        layers = tuple(sorted({int(n) for n in layers}))
        if not layers or not all(1 <= n <= EFFICIENTNET_BLOCKS for n in layers):
            raise ConfigError(f"embedder.texture_layers must be block stages between 1 and {EFFICIENTNET_BLOCKS}, "
                              f"got {list(layers)}")
        self.layers, self.max_side = layers, max_side
        self.device = resolve_device(device)
        net = load_efficientnet_lite0(self.device)
        self.stem = torch.nn.Sequential(net.conv_stem, net.bn1).eval()
        self.blocks = list(net.blocks[: layers[-1]])
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self._upper = {c: torch.triu_indices(c, c, device=self.device)
                       for c in (EFFICIENTNET_STAGE_CHANNELS[n - 1] for n in layers)}
        super().__init__(id=f"texture:efficientnet-lite0:block{'+'.join(map(str, layers))}:gram:c{max_side}",
                         dim=texture_dim(layers))

    def extract(self, images: Sequence[Image.Image], names: Sequence[str] | None = None) -> np.ndarray:
        # batched by crop size: one forward pass per size, not one per image
        crops = [self._crop(_pixels(im, names[i] if names is not None else f"<image {i}>"))
                 for i, im in enumerate(images)]
        out = np.zeros((len(crops), self.dim), np.float32)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, c in enumerate(crops):
            by_size.setdefault(c.shape[:2], []).append(i)
        for rows in by_size.values():
            for start in range(0, len(rows), 64):
                chunk = rows[start : start + 64]
                out[chunk] = self._statistics(np.stack([crops[i] for i in chunk]))
        return out

    def _crop(self, pixels: np.ndarray) -> np.ndarray:
        h, w = pixels.shape[:2]
        top, left = max(0, (h - self.max_side) // 2), max(0, (w - self.max_side) // 2)
        return pixels[top : top + self.max_side, left : left + self.max_side]

    def _statistics(self, crops: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        parts = []
        with torch.no_grad():
            fmap = self.stem((x - self.mean) / self.std)
            for stage, block in enumerate(self.blocks, start=1):
                fmap = block(fmap)
                if stage not in self.layers:
                    continue
                flat = fmap.flatten(2).double()
                means = flat.mean(dim=2)
                centred = flat - means[:, :, None]
                upper = self._upper[flat.shape[1]]
                gram = (centred @ centred.transpose(1, 2) / flat.shape[2])[:, upper[0], upper[1]]
                parts += [torch.nn.functional.normalize(means, dim=1), torch.nn.functional.normalize(gram, dim=1)]
        return torch.cat(parts, dim=1).cpu().numpy()


class ThumbnailFingerprint(Fingerprint):
    """The whole image box-filtered down to ``side`` x ``side`` (aspect not kept), its RGB values shifted to
    -0.5..0.5: the layout of light and colour over the frame, which every feature above pools away.

    On the hard benchmark a light fine-tune moves every pixel of an image by about 15 levels for the same seed,
    but its average over many images by less than 2: a small, fixed pattern under a large seed-to-seed one, which
    a linear discriminant fitted on the siblings' own thumbnails finds (README *Why a thumbnail for siblings*)."""

    kind = "thumbnail"

    def __init__(self, *, side: int = 32) -> None:
        if side < 1:
            raise ConfigError(f"embedder.thumbnail must be a side in pixels (0 = none), got {side}")
        self.side = side
        super().__init__(id=f"thumbnail:box{side}", dim=3 * side * side)

    def _describe(self, pixels: np.ndarray) -> np.ndarray:
        small = Image.fromarray(pixels).resize((self.side, self.side), Image.BOX)
        return (np.asarray(small, np.float32) / 255.0 - 0.5).ravel()


def load_fingerprint(kind: str, *, device: str | torch.device = "cpu", **options) -> Fingerprint:
    """A fingerprint extractor by kind (``spectrum``, ``bitplane``, ``texture`` or ``thumbnail``); ``options`` are
    its keyword arguments."""
    if kind == "spectrum":
        return SpectrumFingerprint(**options)
    if kind == "texture":
        return TextureFingerprint(device=device, **options)
    if kind == "thumbnail":
        return ThumbnailFingerprint(**options)
    if kind == "bitplane":
        return BitPlaneFingerprint(device=device, **options)
    raise ConfigError(f"gallery.fingerprint: unknown fingerprint kind {kind!r} (choose from {', '.join(FINGERPRINT_KINDS)})")


def fingerprint_from_config(cfg: GalleryConfig, device: str | torch.device = "cpu", *,
                            kind: str | None = None) -> Fingerprint | None:
    """The fingerprint a ``[gallery]`` table describes, None for ``fingerprint = "none"``. ``kind`` overrides
    the table's ``fingerprint`` (the evaluation compares both kinds under one table's options)."""
    kind = cfg.fingerprint if kind is None else kind
    if kind == "none":
        return None
    if kind == "spectrum":
        return load_fingerprint(kind, window=cfg.window, patches=cfg.patches)
    return load_fingerprint(kind, device=device, backbone=cfg.backbone, layer=cfg.layer, bits=cfg.bits,
                            patch=cfg.patch, patches=cfg.patches)
