"""Where a generator's diffusers pipeline comes from, and how the cache identifies that source.

- ``zoo:NAME``: a built-in, randomly initialised offline stand-in (:mod:`resynth_index.models.zoo`), identified
  by the zoo's version;
- an existing local directory in diffusers' ``save_pretrained`` layout, identified by a content fingerprint
  of its files (an exported zoo generator's ``rindex_zoo.json`` also supplies its sampling defaults);
- anything else is a Hugging Face hub id, tried in the local HF cache first, then on the hub (failing in
  seconds when the hub is unreachable), and identified by the cached commit or the requested revision.

:func:`load_pipeline` loads one; :func:`source_identity` and :func:`source_defaults` read what the cache
namespace needs without loading anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any

import torch

from .._quiet import quiet_loading
from ..config import GeneratorSettings
from ..errors import ConfigError, ModelNotAvailableError

__all__ = ["load_pipeline", "source_defaults", "source_identity"]

log = logging.getLogger(__name__)

_ZOO_PREFIX = "zoo:"
_ZOO_INFO_FILE = "rindex_zoo.json"  # written by zoo.export_zoo: the exported generator's sampling defaults
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_FULL_HASH_LIMIT = 64 << 20  # local weight files up to this size are hashed whole, larger ones by head + tail
_PARTIAL_HASH_CHUNK = 8 << 20


def load_pipeline(settings: GeneratorSettings, dtype: torch.dtype) -> tuple[Any, dict]:
    """The pipeline ``settings.source`` names, loaded in ``dtype``, and the sampling defaults its source
    supplies (zoo and exported-zoo generators; empty otherwise). Raises :class:`ModelNotAvailableError` when
    the source cannot be found or loaded."""
    source = settings.source.strip()
    if source.startswith(_ZOO_PREFIX):
        return _load_zoo(settings, source)
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        return _load_directory(settings, path, dtype)
    if path.exists() or not _HUB_ID.match(source):
        raise ModelNotAvailableError(
            f"generator '{settings.name}': source '{source}' is neither a diffusers directory nor a hub id "
            "(expected an existing save_pretrained directory, 'org/name' or 'zoo:NAME')"
        )
    return _load_hub(settings, source, dtype), {}


def source_identity(settings: GeneratorSettings) -> dict:
    """What identifies the source's weights, without loading them: the zoo version for ``zoo:`` sources, a
    content fingerprint for directories, the cached commit hash or the requested revision for hub ids."""
    source = settings.source.strip()
    if source.startswith(_ZOO_PREFIX):
        from . import zoo

        return {"source": source, "revision": zoo.ZOO_VERSION}
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        path = path.resolve()
        return {"source": str(path), "revision": None, "fingerprint": _directory_fingerprint(path)}
    return {"source": source, "revision": _cached_commit(source, settings.revision) or settings.revision}


def source_defaults(settings: GeneratorSettings) -> dict:
    """The sampling defaults (steps, guidance, height, width) a zoo or exported-zoo source supplies, read
    without loading it; empty for other sources."""
    source = settings.source.strip()
    if source.startswith(_ZOO_PREFIX):
        from . import zoo

        name = source[len(_ZOO_PREFIX) :]
        return zoo.zoo_defaults(name) if name in zoo.zoo_names() else {}
    if source and (info := Path(os.path.expanduser(source)) / _ZOO_INFO_FILE).is_file():
        return _read_json(info)
    return {}


def _load_zoo(settings: GeneratorSettings, source: str):
    from . import zoo

    zoo_name = source[len(_ZOO_PREFIX) :]
    if zoo_name not in zoo.zoo_names():
        raise ModelNotAvailableError(
            f"generator '{settings.name}': unknown zoo generator '{zoo_name}' (source '{source}'); "
            f"the zoo has: {', '.join('zoo:' + n for n in zoo.zoo_names())}"
        )
    if settings.revision is not None:
        raise ConfigError(f"generator '{settings.name}': a zoo generator has no revisions (source '{source}')")
    defaults = zoo.zoo_defaults(zoo_name)
    return zoo.build_zoo_pipeline(zoo_name), defaults


def _load_directory(settings: GeneratorSettings, path: Path, dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    path = path.resolve()
    if not (path / "model_index.json").is_file():
        raise ModelNotAvailableError(
            f"generator '{settings.name}': directory '{path}' has no model_index.json "
            "(expected a diffusers save_pretrained directory)"
        )
    if settings.revision is not None:
        raise ConfigError(f"generator '{settings.name}': 'revision' applies to hub ids, not directory '{path}'")
    kwargs = _pipeline_kwargs(_read_json(path / "model_index.json"))
    try:
        with quiet_loading():
            pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True, **_dtype_kwarg(dtype), **kwargs)
    except Exception as err:  # a broken directory: report it in one line, keep the cause chained
        raise ModelNotAvailableError(
            f"generator '{settings.name}': cannot load diffusers directory '{path}': {_one_line(err)}"
        ) from err
    defaults = {}
    info_file = path / _ZOO_INFO_FILE
    if info_file.is_file():
        info = _read_json(info_file)
        defaults = {k: info[k] for k in ("steps", "guidance", "height", "width") if k in info}
    return pipe, defaults


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub endpoint opens (assumed True behind a proxy, which we cannot probe)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        from urllib.parse import urlparse

        from huggingface_hub import constants

        url = urlparse(constants.ENDPOINT)
        port = url.port or (443 if url.scheme == "https" else 80)
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
    except Exception:  # an unusual endpoint setting: let huggingface_hub try and report
        return True


def _load_hub(settings: GeneratorSettings, source: str, dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    unreachable = f"generator '{settings.name}': not found locally and the hub is unreachable (source '{source}')"
    revision = settings.revision
    try:
        index = DiffusionPipeline.load_config(source, revision=revision, local_files_only=True)
        with quiet_loading():
            pipe = DiffusionPipeline.from_pretrained(
                source, revision=revision, local_files_only=True, **_dtype_kwarg(dtype), **_pipeline_kwargs(index)
            )
    except Exception as local_err:
        log.debug("generator %s: local load of %s failed: %s", settings.name, source, local_err)
        if _hub_offline():
            raise ModelNotAvailableError(unreachable + " [HF_HUB_OFFLINE is set]") from None
        if not _hub_reachable():  # fail in seconds rather than after huggingface_hub's ~30 s of retries
            raise ModelNotAvailableError(unreachable) from None
        try:
            index = DiffusionPipeline.load_config(source, revision=revision)
            with quiet_loading():  # diffusers'/transformers' loading bars only; hub download bars stay
                pipe = DiffusionPipeline.from_pretrained(
                    source, revision=revision, **_dtype_kwarg(dtype), **_pipeline_kwargs(index)
                )
        except Exception as err:
            from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

            cause = err
            while cause is not None and not isinstance(
                cause, (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError)
            ):
                cause = cause.__cause__ or cause.__context__
            if isinstance(cause, GatedRepoError):
                message = f"generator '{settings.name}': hub repo '{source}' is gated: log in and accept its terms"
            elif isinstance(cause, RevisionNotFoundError):
                message = f"generator '{settings.name}': revision '{revision}' not found on the hub for '{source}'"
            elif isinstance(cause, RepositoryNotFoundError):
                message = f"generator '{settings.name}': '{source}' not found locally or on the hub"
            elif _looks_like_network_error(err):
                message = unreachable
            else:
                message = f"generator '{settings.name}': cannot load '{source}': {_one_line(err)}"
            raise ModelNotAvailableError(message) from err
    return pipe


def _looks_like_network_error(err: BaseException) -> bool:
    seen = 0
    while err is not None and seen < 20:
        name = type(err).__name__
        text = str(err).lower()
        if any(k in name for k in ("Connection", "Timeout", "OfflineMode", "LocalEntryNotFound")) or any(
            k in text for k in ("connection", "resolve", "timed out", "offline", "unreachable", "network")
        ):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """``dtype=`` for diffusers versions that take it (where ``torch_dtype`` is deprecated), else ``torch_dtype=``."""
    from diffusers.pipelines import pipeline_utils

    return {"dtype": dtype} if hasattr(pipeline_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def _pipeline_kwargs(model_index: dict) -> dict:
    """Keyword arguments that skip the NSFW safety checker (and its download) where the pipeline has one."""
    kwargs: dict[str, Any] = {}
    if "safety_checker" in model_index:
        kwargs["safety_checker"] = None
        if "requires_safety_checker" in model_index:
            kwargs["requires_safety_checker"] = False
    return kwargs


def _cached_commit(source: str, revision: str | None) -> str | None:
    """The commit hash of the HF-cache snapshot that holds ``source`` (None when unknown)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source, "model_index.json", revision=revision)
    except Exception:
        return None
    if isinstance(found, str):
        parts = Path(found).parts
        if len(parts) >= 3 and parts[-3] == "snapshots":
            return parts[-2]
    return None


def _directory_fingerprint(path: Path) -> str:
    """A content hash of a local pipeline directory: configs and small files whole, big weights by head + tail
    (a fine-tune changes every tensor, so it changes both ends; sizes are hashed too)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        size = file.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        with open(file, "rb") as handle:
            if size <= _FULL_HASH_LIMIT:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            else:
                digest.update(handle.read(_PARTIAL_HASH_CHUNK))
                handle.seek(size - _PARTIAL_HASH_CHUNK)
                digest.update(handle.read(_PARTIAL_HASH_CHUNK))
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelNotAvailableError(f"cannot read {path}: {_one_line(err)}") from err
    if not isinstance(data, dict):
        raise ModelNotAvailableError(f"{path} is not a JSON object")
    return data


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
