"""Prompt inverters: from a decoded image to the text prompt that the candidate generators resynthesize.

Every inverter takes a batch of :class:`~resynth_index.images.decode.DecodedImage` and returns one
:class:`Inversion` (the prompt and where it came from) or None per image. Only an inverter that may have
nothing to say (the metadata reader on a file without a prompt) returns None; the model-based ones always
answer. :class:`ChainInverter` tries inverters in order per image: the prompt a file carries beats any
guess from its pixels, so metadata goes first.

Kinds (:func:`load_inverter`; :func:`inverter_from_config` builds the ``[inverter]`` table's chain):

``metadata``
    :class:`MetadataInverter`: A1111/Forge ``parameters`` text, a ComfyUI ``prompt`` graph (or its
    ``workflow``), EXIF UserComment (A1111 writes its parameters there in JPEG/WebP) and ImageDescription.
``label``
    :class:`LabelInverter`: ImageNet EfficientNet-Lite0 (real weights, offline) top-1 class as
    ``"a photo of a {label}"``. Coarse, but real and available everywhere.
``blip``
    :class:`BlipInverter`: a Hugging Face BLIP captioning model from a local directory or hub id
    (greedy decoding).
``clip-interrogator``
    :class:`ClipInterrogator`: ranks a phrase bank (``resynth_index/data/phrases.txt``) with an open_clip
    model's image and text towers.

The label inverter and the CLIP interrogator can also decide from an output of a forward pass another model
ran (:attr:`Inverter.shared_output`, :meth:`Inverter.invert_outputs`), so that the query path runs a network
the embedder shares only once (:mod:`resynth_index.models.shared_forward`).

Example::

    >>> inv = default_inverter(device="cpu")   # Chain(metadata, label)
    >>> inv.id
    'chain(metadata,label:efficientnet-lite0)'
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import torch

from .._quiet import quiet_loading
from ..config import InverterConfig
from ..devices import autocast_dtype, resolve_device
from ..errors import ConfigError, ModelNotAvailableError, UsageError
from ..images.decode import DecodedImage
from ..images.metadata import collapse_whitespace, prompt_from_metadata
from .backbones import (
    NetworkUse,
    efficientnet_preprocess,
    load_efficientnet_lite0,
    load_open_clip,
    open_clip_source,
    open_clip_tag,
)

INVERTER_KINDS = ("metadata", "label", "blip", "clip-interrogator")
DEFAULT_BLIP_MODEL = "Salesforce/blip-image-captioning-base"


@dataclass(frozen=True)
class Inversion:
    """A prompt and where it came from (``metadata:parameters``, ``label:efficientnet-lite0``, ...)."""

    prompt: str
    source: str


class Inverter:
    """Base class: ``invert(images)`` returns one :class:`Inversion` or None per image, in order."""

    id: str = "inverter"
    #: the output of another model's forward pass this inverter can decide from (``"logits"``,
    #: ``"image_features"``), None when it cannot
    shared_output: str | None = None

    def invert(self, images: Sequence[DecodedImage]) -> list[Inversion | None]:
        raise NotImplementedError

    def network_use(self) -> NetworkUse | None:
        """The network, preprocessing and device of this inverter's forward pass; None unless it has a
        :attr:`shared_output`."""
        return None

    def invert_outputs(self, outputs: torch.Tensor) -> list[Inversion]:
        """The inversions :meth:`invert` gives, decided from :attr:`shared_output` rows computed elsewhere
        (one row per image, in the compute precision, on this inverter's device)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"


def _images_of(images: Sequence[DecodedImage]) -> list[DecodedImage]:
    if isinstance(images, DecodedImage):
        return [images]
    out = list(images)
    for im in out:
        if not isinstance(im, DecodedImage):
            raise TypeError(f"invert() takes DecodedImage objects (see images.decode_image), got {type(im).__name__}")
    return out


class MetadataInverter(Inverter):
    """The prompt the file carries, in this order of trust:

    1. ``parameters`` (A1111/Forge PNG text chunk) → ``metadata:parameters``;
    2. ComfyUI ``prompt`` graph, else ``workflow`` → ``metadata:comfyui``;
    3. EXIF UserComment → ``metadata:exif-usercomment`` (A1111-style text is parsed the same way);
    4. EXIF ImageDescription → ``metadata:exif-imagedescription``.

    Returns None for an image without any of them."""

    id = "metadata"

    def invert(self, images: Sequence[DecodedImage]) -> list[Inversion | None]:
        out = []
        for im in _images_of(images):
            found = prompt_from_metadata(im.metadata or {})
            out.append(Inversion(*found) if found else None)
        return out



# ------------------------------------------------------------------------------------------------- label


def _imagenet_names() -> list[str]:
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    except Exception as exc:  # noqa: BLE001
        raise ModelNotAvailableError(f"label inverter: ImageNet class names unavailable from timm: {exc}") from exc


def _with_article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


class LabelInverter(Inverter):
    """ImageNet EfficientNet-Lite0 label as a prompt.

    The network is :func:`~resynth_index.models.backbones.load_efficientnet_lite0`'s (shared per device, with
    the embedder). Preprocessing is the embedder's (shorter side 224 bicubic, centre crop, ImageNet mean/std). A class's display name is the
    first of its ImageNet synonyms (``"tabby, tabby cat"`` → ``"tabby"``). ``top_k=1`` (default) gives
    ``"a photo of a {label}"``; with ``top_k>1`` further labels whose probability is at least
    ``min_ratio`` × the top one are joined: ``"a photo of an espresso and a cup"``."""

    shared_output = "logits"

    def __init__(self, *, device: str | torch.device = "auto", top_k: int = 1, min_ratio: float = 0.25,
                 batch_size: int = 32) -> None:
        if top_k < 1:
            raise UsageError(f"label inverter top_k must be >= 1, got {top_k}")
        self.device = resolve_device(device)
        self.model = load_efficientnet_lite0(self.device)
        self._preprocess = efficientnet_preprocess
        self.names = _imagenet_names()
        self.top_k = int(top_k)
        self.min_ratio = float(min_ratio)
        self.batch_size = int(batch_size)
        self.id = "label:efficientnet-lite0"


    def network_use(self) -> NetworkUse:
        return NetworkUse(self.model, self._preprocess, self.device)

    @staticmethod
    def short_name(description: str) -> str:
        return description.split(",")[0].strip()

    def predict(self, images: Sequence[DecodedImage], k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-``k`` (ImageNet description, probability) per image."""
        ims = _images_of(images)
        out: list[list[tuple[str, float]]] = []
        dtype = autocast_dtype(self.device)
        for start in range(0, len(ims), self.batch_size):
            chunk = ims[start : start + self.batch_size]
            x = torch.stack([self._preprocess(d.image) for d in chunk]).to(self.device)
            with torch.inference_mode():
                ctx = torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
                with ctx:
                    logits = self.model(x)
                out.extend(self._top(logits, k))
        return out

    def _top(self, logits: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        probs = logits.float().softmax(-1).cpu()
        vals, idx = probs.topk(k, dim=-1)
        return [[(self.names[i], float(v)) for v, i in zip(v_row, i_row)]
                for v_row, i_row in zip(vals.tolist(), idx.tolist())]

    def invert(self, images: Sequence[DecodedImage]) -> list[Inversion | None]:
        ims = _images_of(images)
        if not ims:
            return []
        return self._prompts(self.predict(ims, k=max(self.top_k, 1)))

    def invert_outputs(self, outputs: torch.Tensor) -> list[Inversion]:
        if len(outputs) == 0:
            return []
        with torch.inference_mode():
            return self._prompts(self._top(outputs, max(self.top_k, 1)))

    def _prompts(self, predictions: list[list[tuple[str, float]]]) -> list[Inversion]:
        results: list[Inversion] = []
        for preds in predictions:
            top_p = preds[0][1]
            labels: list[str] = []
            for desc, p in preds[: self.top_k]:
                name = self.short_name(desc)
                if (not labels or p >= self.min_ratio * top_p) and name not in labels:
                    labels.append(name)
            prompt = "a photo of " + " and ".join(_with_article(n) for n in labels)
            results.append(Inversion(prompt, self.id))
        return results


# -------------------------------------------------------------------------------------------------- BLIP


class BlipInverter(Inverter):
    """BLIP image captioning (``BlipForConditionalGeneration`` + ``BlipProcessor``), greedy decoding.

    ``model`` (alias ``source``) is a local directory in ``save_pretrained`` layout or a hub id found in the
    local cache (no download is attempted when ``HF_HUB_OFFLINE=1``); default
    ``Salesforce/blip-image-captioning-base``. ``prompt`` optionally conditions the caption (e.g.
    ``"a picture of"``; it is kept as the caption's start, as BLIP does)."""

    def __init__(self, model: str | None = None, *, source: str | None = None, device: str | torch.device = "auto",
                 max_new_tokens: int = 30, batch_size: int = 8, prompt: str | None = None) -> None:
        if model is not None and source is not None and model != source:
            raise UsageError(f"blip: give model= or source=, not both ({model!r} vs {source!r})")
        model = model or source or DEFAULT_BLIP_MODEL
        if max_new_tokens < 1:
            raise UsageError(f"blip max_new_tokens must be >= 1, got {max_new_tokens}")
        self.device = resolve_device(device)
        self.model_id = str(model)
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.prompt = prompt
        self.id = f"blip:{self.model_id}"
        try:
            from transformers import BlipForConditionalGeneration, BlipProcessor
        except Exception as exc:  # noqa: BLE001
            raise ModelNotAvailableError(f"blip: transformers' BLIP classes cannot be imported: {exc}") from exc
        looks_local = self.model_id.startswith(("/", "./", "../", "~")) or os.path.exists(self.model_id)
        if looks_local and not os.path.isdir(os.path.expanduser(self.model_id)):
            raise ModelNotAvailableError(f"blip: model directory {self.model_id!r} does not exist")
        source = os.path.expanduser(self.model_id) if looks_local else self.model_id
        try:
            with quiet_loading():
                self.processor = BlipProcessor.from_pretrained(source)
                self.model = BlipForConditionalGeneration.from_pretrained(source)
        except Exception as exc:  # noqa: BLE001 - offline hub, missing files, wrong architecture
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelNotAvailableError(
                f"blip: cannot load {self.model_id!r} (not a local BLIP directory and not in the local hub "
                f"cache; no download is possible here): {first[:300]}"
            ) from None
        self.model.eval().requires_grad_(False).to(self.device)

    def invert(self, images: Sequence[DecodedImage]) -> list[Inversion | None]:
        ims = _images_of(images)
        out: list[Inversion | None] = []
        dtype = autocast_dtype(self.device)
        for start in range(0, len(ims), self.batch_size):
            chunk = [d.image for d in ims[start : start + self.batch_size]]
            kwargs: dict[str, Any] = {"images": chunk, "return_tensors": "pt"}
            if self.prompt:
                kwargs["text"] = [self.prompt] * len(chunk)
            inputs = self.processor(**kwargs).to(self.device)
            gen_kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": False, "num_beams": 1}
            with torch.inference_mode():
                ctx = torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
                with ctx:
                    ids = self.model.generate(**inputs, **gen_kwargs)  # BLIP stops at its [SEP] itself
            for text in self.processor.batch_decode(ids, skip_special_tokens=True):
                out.append(Inversion(collapse_whitespace(text), self.id))
        return out


# ------------------------------------------------------------------------------------- CLIP interrogator


def load_phrase_bank(path: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Read a phrase bank: ``[section]`` headers, one phrase per line, ``#`` comments. Must have
    ``[subjects]``. ``path=None`` reads the packaged ``resynth_index/data/phrases.txt``."""
    if path is None:
        text = resources.files("resynth_index").joinpath("data/phrases.txt").read_text(encoding="utf-8")
        where = "resynth_index/data/phrases.txt"
    else:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(f"phrase bank {path}: cannot read: {exc}") from exc
        where = os.fspath(path)
    bank: dict[str, list[str]] = {}
    section: str | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"\[([A-Za-z0-9_ -]+)\]", line)
        if m:
            section = m.group(1).strip().lower()
            bank.setdefault(section, [])
            continue
        if section is None:
            raise ConfigError(f"phrase bank {where}:{lineno}: phrase before any [section] header")
        if line not in bank[section]:
            bank[section].append(line)
    if not bank.get("subjects"):
        raise ConfigError(f"phrase bank {where}: needs a non-empty [subjects] section")
    return {k: v for k, v in bank.items() if v}


_PHRASE_CACHE: dict[tuple, dict[str, np.ndarray]] = {}
_PHRASE_CACHE_LOCK = threading.Lock()


def _encode_text_truncated(model, tokens: torch.Tensor) -> torch.Tensor | None:
    """``model.encode_text`` over only the first L token positions, L = the longest phrase (EOT included).

    Exact for open_clip's standard ``CLIP`` text tower: its attention is causal and it pools the EOT
    position, so the padding after it cannot influence the result; cutting 77 positions to ~10 makes
    encoding a phrase bank several times faster. Returns None (use the full path) for any other tower
    (no causal mask, other pooling, CustomTextCLIP, CoCa...)."""
    try:
        from open_clip.model import CLIP
    except Exception:  # noqa: BLE001
        return None
    if type(model) is not CLIP or getattr(model, "attn_mask", None) is None:
        return None
    if getattr(model, "text_pool_type", None) != "argmax" or getattr(model, "cls_emb", None) is not None:
        return None
    from open_clip.transformer import text_global_pool

    seq = int(tokens.argmax(dim=-1).max()) + 1
    text = tokens[:, :seq]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype)
    x = x + model.positional_embedding[:seq].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:seq, :seq])
    x = model.ln_final(x)
    x = text_global_pool(x, text, "argmax")
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return x


class ClipInterrogator(Inverter):
    """Prompt from a phrase bank ranked by an open_clip model (image tower vs text tower, cosine).

    prompt = the best ``[subjects]`` phrase, then, for each other section, its best phrase if that phrase's
    cosine exceeds the section's mean cosine by at least ``margin``; at most ``max_modifiers`` such
    modifiers, strongest excess first, joined with ", ". Phrase embeddings are computed once per instance.
    ``pretrained=None`` uses a seeded random initialisation (for tests; the ranking is then meaningless)."""

    shared_output = "image_features"

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = None, *,
                 device: str | torch.device = "auto", phrases: str | os.PathLike | None = None,
                 margin: float = 0.01, max_modifiers: int = 3, batch_size: int = 32) -> None:
        self.device = resolve_device(device)
        self.bank = load_phrase_bank(phrases)
        self.margin = float(margin)
        self.max_modifiers = int(max_modifiers)
        self.batch_size = int(batch_size)
        self.model, self.preprocess = load_open_clip(model, pretrained, self.device)
        model_name, tag = open_clip_source(model, pretrained)
        self.id = f"clip-interrogator:{model_name}" + ("" if model_name.startswith("hf-hub:") else f":{open_clip_tag(tag)}")
        try:
            import open_clip

            self.tokenizer = open_clip.get_tokenizer(model_name)
        except Exception as exc:  # noqa: BLE001
            raise ModelNotAvailableError(f"clip-interrogator: no tokenizer for {model_name!r} offline: {exc}") from None
        self._lock = threading.Lock()
        self._text: dict[str, np.ndarray] | None = None


    def network_use(self) -> NetworkUse:
        return NetworkUse(self.model, self.preprocess, self.device)

    def _encode_text(self, phrases: list[str], *, truncate: bool = True) -> np.ndarray:
        rows = []
        dtype = autocast_dtype(self.device)
        for start in range(0, len(phrases), 128):
            tokens = self.tokenizer(phrases[start : start + 128]).to(self.device)
            with torch.inference_mode():
                ctx = torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
                with ctx:
                    feats = _encode_text_truncated(self.model, tokens) if truncate else None
                    if feats is None:
                        feats = self.model.encode_text(tokens)
                rows.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(rows).astype(np.float32)

    def phrase_embeddings(self) -> dict[str, np.ndarray]:
        """Unit-norm text embedding of every bank phrase, per section (computed once per model and bank)."""
        with self._lock:
            if self._text is None:
                key = (id(self.model), tuple((sec, tuple(ph)) for sec, ph in self.bank.items()))
                with _PHRASE_CACHE_LOCK:
                    cached = _PHRASE_CACHE.get(key)
                if cached is None:
                    cached = {sec: self._encode_text(ph) for sec, ph in self.bank.items()}
                    with _PHRASE_CACHE_LOCK:
                        _PHRASE_CACHE[key] = cached
                self._text = cached
            return self._text

    def _encode_images(self, ims: list[DecodedImage]) -> np.ndarray:
        rows = []
        dtype = autocast_dtype(self.device)
        for start in range(0, len(ims), self.batch_size):
            x = torch.stack([self.preprocess(d.image) for d in ims[start : start + self.batch_size]]).to(self.device)
            with torch.inference_mode():
                ctx = torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
                with ctx:
                    feats = self.model.encode_image(x)
                rows.append(_unit_rows(feats))
        return np.concatenate(rows)

    def invert(self, images: Sequence[DecodedImage]) -> list[Inversion | None]:
        ims = _images_of(images)
        if not ims:
            return []
        text = self.phrase_embeddings()
        return self._phrases(text, self._encode_images(ims))

    def invert_outputs(self, outputs: torch.Tensor) -> list[Inversion]:
        if len(outputs) == 0:
            return []
        text = self.phrase_embeddings()
        with torch.inference_mode():
            img = _unit_rows(outputs)
        return self._phrases(text, img)

    def _phrases(self, text: dict[str, np.ndarray], img: np.ndarray) -> list[Inversion]:
        out: list[Inversion] = []
        for row in img:
            subj_scores = text["subjects"] @ row
            parts = [self.bank["subjects"][int(np.argmax(subj_scores))]]
            extras: list[tuple[float, str]] = []
            for sec, emb in text.items():
                if sec == "subjects":
                    continue
                scores = emb @ row
                best = int(np.argmax(scores))
                excess = float(scores[best] - scores.mean())
                if excess >= self.margin:
                    extras.append((excess, self.bank[sec][best]))
            extras.sort(key=lambda e: -e[0])
            parts.extend(p for _, p in extras[: self.max_modifiers])
            out.append(Inversion(", ".join(parts), self.id))
        return out


def _unit_rows(feats: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()


# ------------------------------------------------------------------------------------------------- chain


class ChainInverter(Inverter):
    """Try ``inverters`` in order for each image; the first non-None answer wins. Each inverter sees only the
    images still unanswered, in one batch. None remains only where every inverter had nothing."""

    def __init__(self, inverters: Sequence[Inverter]) -> None:
        self.inverters = list(inverters)
        if not self.inverters:
            raise UsageError("ChainInverter needs at least one inverter")
        self.id = "chain(" + ",".join(inv.id for inv in self.inverters) + ")"

    def invert(self, images: Sequence[DecodedImage]) -> list[Inversion | None]:
        ims = _images_of(images)
        return run_chain(self.inverters, len(ims), lambda inv, pending: inv.invert([ims[i] for i in pending]))


def run_chain(stages: Sequence[Inverter], n: int,
              answer: Callable[[Inverter, list[int]], Sequence[Inversion | None]]) -> list[Inversion | None]:
    """The chain rule over ``n`` images: each stage in turn answers, through ``answer(stage, pending)``, the
    images (indices, ascending) no earlier stage answered; the first non-None answer wins."""
    results: list[Inversion | None] = [None] * n
    pending = list(range(n))
    for inv in stages:
        if not pending:
            break
        answers = answer(inv, pending)
        if len(answers) != len(pending):
            raise RuntimeError(f"inverter {inv.id} returned {len(answers)} results for {len(pending)} images")
        still = []
        for i, ans in zip(pending, answers):
            if ans is None:
                still.append(i)
            else:
                results[i] = ans
        pending = still
    return results


# ----------------------------------------------------------------------------------------------- factory


_INVERTERS: dict[str, type[Inverter]] = {
    "metadata": MetadataInverter,
    "label": LabelInverter,
    "blip": BlipInverter,
    "clip-interrogator": ClipInterrogator,
    "clipinterrogator": ClipInterrogator,
}


def _accepted_options(cls: type[Inverter]) -> set[str]:
    """The keyword arguments ``cls`` takes, read from its signature."""
    params = inspect.signature(cls).parameters.values()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def load_inverter(kind: str, *, device: str | torch.device = "auto", **options: Any) -> Inverter:
    """Build an inverter by kind.

    * ``"metadata"``: no options.
    * ``"label"``: ``top_k`` (1), ``min_ratio`` (0.25), ``batch_size``.
    * ``"blip"``: ``model`` or its alias ``source`` (local dir or hub id, default ``Salesforce/blip-image-captioning-base``),
      ``max_new_tokens`` (30), ``batch_size`` (8), ``prompt`` (None).
    * ``"clip-interrogator"``: ``model`` ("ViT-B-32"), ``pretrained`` (None = random init), ``phrases``
      (path of a phrase bank), ``margin`` (0.01), ``max_modifiers`` (3), ``batch_size``.

    The kind and options are configuration, so a wrong one (an unknown kind, an option the kind does not take,
    a value its constructor refuses) raises ConfigError; ModelNotAvailableError when the model cannot be loaded.
    """
    k = (kind or "").strip().lower().replace("_", "-")
    cls = _INVERTERS.get(k)
    if cls is None:
        raise ConfigError(f"inverter.chain: unknown inverter kind {kind!r}; expected one of {', '.join(INVERTER_KINDS)}")
    accepted = _accepted_options(cls)
    unknown = sorted(set(options) - (accepted - {"device"}))
    if unknown:
        takes = ", ".join(sorted(accepted - {"device"})) or "no options"
        raise ConfigError(f"inverter {kind!r}: unknown option(s) {', '.join(unknown)} (it takes: {takes})")
    if "device" in accepted:
        options["device"] = device
    try:
        return cls(**options)
    except UsageError as exc:
        raise ConfigError(f"inverter {kind!r}: {exc}") from None


def inverter_from_config(cfg: InverterConfig, device: str | torch.device = "auto") -> Inverter:
    """The inverter an ``[inverter]`` table describes: its ``chain``, one stage per kind, with the table's
    model options (a chain of one kind is that inverter itself)."""
    options: dict[str, dict[str, Any]] = {
        "metadata": {},
        "label": {},
        "blip": {"source": cfg.blip_model, "max_new_tokens": cfg.max_new_tokens},
        "clip-interrogator": {"model": cfg.clip_model, "pretrained": cfg.clip_pretrained or None},
    }
    stages = [load_inverter(kind, device=device, **options[kind]) for kind in cfg.chain]
    return stages[0] if len(stages) == 1 else ChainInverter(stages)


def default_inverter(device: str | torch.device = "auto") -> Inverter:
    """Chain(metadata, label): the file's own prompt when it has one, else the ImageNet label prompt."""
    return ChainInverter([MetadataInverter(), LabelInverter(device=device)])
