"""Candidate generators: one small interface over diffusers text-to-image pipelines.

A :class:`Generator` turns ``(prompt, seed)`` pairs into RGB images and describes, in :meth:`Generator.namespace`,
everything that changes those images, so that the cache can key stored vectors on it. :func:`load_generator`
builds one from :class:`GeneratorSettings`; the ``source`` says where the weights come from:

- ``zoo:NAME``: a built-in, randomly initialised offline stand-in (see :mod:`resynth_index.models.zoo`);
- an existing local directory in diffusers' ``save_pretrained`` layout (SD 1.x/2.x, SDXL, PixArt, ... are
  auto-detected from its ``model_index.json``);
- anything else is a Hugging Face hub id, tried in the local HF cache first, then on the hub.

>>> gen = load_generator(GeneratorSettings(name="sd", source="zoo:tiny-sd"), device="cpu")   # doctest: +SKIP
>>> images = gen.generate(["a red car"] * 2, seeds=[0, 1])                                    # doctest: +SKIP

Determinism: every image has its own CPU ``torch.Generator`` seeded with its seed (diffusers draws the initial
latents from it on the CPU, then moves them), so an image depends only on ``(prompt, seed, settings)``, and on
the device only through floating-point rounding. On CPU images are also bit-identical whatever the batch size
(see ``batch_invariant`` in :class:`Generator`), unless the generator's ``batch_invariant = false``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import GeneratorSettings
from ..generator_call import engine_call_argument
from ..devices import autocast_dtype, resolve_device
from ..errors import ConfigError, ModelNotAvailableError
from .._quiet import quiet_loading

__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_STEPS",
    "Generator",
    "GeneratorSettings",
    "default_batch_invariant",
    "generator_namespace",
    "load_generator",
    "resynthesis_call",
]

log = logging.getLogger(__name__)

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ZOO_PREFIX = "zoo:"
_ZOO_INFO_FILE = "rindex_zoo.json"  # written by zoo.export_zoo: the exported generator's sampling defaults
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_FULL_HASH_LIMIT = 64 << 20  # local weight files up to this size are hashed whole, larger ones by head + tail
_PARTIAL_HASH_CHUNK = 8 << 20


class Generator:
    """A loaded text-to-image pipeline with fixed sampling settings. Use :func:`load_generator` to make one.

    :meth:`generate` is serialised by a lock (a diffusers pipeline keeps per-call state in its scheduler).
    """

    def __init__(
        self,
        settings: GeneratorSettings,
        pipeline: Any,
        device: torch.device,
        dtype: torch.dtype,
        *,
        steps: int,
        guidance: float,
        height: int | None,
        width: int | None,
        batch_invariant: bool | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.pipeline = pipeline
        self.device = device
        self.dtype = dtype
        self.steps = steps
        self.guidance = float(guidance)
        self.height = height
        self.width = width
        # CPU BLAS/oneDNN pick their kernels by problem size (e.g. a GEMM with 1-13 rows takes other code paths
        # than one with 16), so a row computed in a batch of 4 can differ in the last bit from the same row
        # computed alone, and that shows as +-1 pixel values. Bit-exact independence from the batch size
        # therefore needs every image computed with the same shapes: one pipeline call per image. That is the
        # default on CPU; on CUDA batches run whole, for throughput. ``batch_invariant = false`` in a generator's
        # settings batches on CPU too (benchmarks/models.py measures the gain).
        if batch_invariant is None:
            batch_invariant = settings.batch_invariant
        self.batch_invariant = default_batch_invariant(device) if batch_invariant is None else bool(batch_invariant)
        self._call_params = set(inspect.signature(pipeline.__call__).parameters)
        _check_call_arguments(settings, pipeline)
        # The configured call overrides the engine's own per-pipeline choices.
        self._extra_kwargs = {**self._pipeline_specific_kwargs(), **settings.call}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Generator(name={self.name!r}, source={self.settings.source!r}, pipeline={type(self.pipeline).__name__}, "
            f"device={self.device}, batch_invariant={self.batch_invariant}, steps={self.steps}, guidance={self.guidance}, size={self.height}x{self.width})"
        )

    # -- sampling

    def _pipeline_specific_kwargs(self) -> dict:
        extra: dict[str, Any] = {}
        if "clean_caption" in self._call_params:
            # PixArt's caption cleaning depends on optional packages (bs4, ftfy) being installed, which would make
            # images depend on the environment; prompts reaching a generator are already normalised.
            extra["clean_caption"] = False
        if "use_resolution_binning" in self._call_params:
            transformer = getattr(self.pipeline, "transformer", None)
            sample_size = getattr(getattr(transformer, "config", None), "sample_size", None)
            # PixArt bins sizes only for its trained resolutions (sample size 32/64/128) and raises otherwise.
            extra["use_resolution_binning"] = sample_size in (32, 64, 128)
        return extra

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list:
        """One RGB :class:`PIL.Image.Image` per ``(prompt, seed)`` pair, batched by ``settings.batch_size``.

        Each pair gets its own CPU ``torch.Generator`` seeded with its seed, so an image depends only on
        ``(prompt, seed, settings)``. In batch-invariant mode (the default on CPU) each image is one pipeline call
        and the result is bit-identical whatever the batch size; otherwise (the default on CUDA) batches of
        ``settings.batch_size`` run as one call, equal to single calls up to floating-point rounding.
        """
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not one string")
        prompts = list(prompts)
        seeds = list(seeds)
        if len(prompts) != len(seeds):
            raise ValueError(f"generator {self.name!r}: {len(prompts)} prompts but {len(seeds)} seeds")
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise TypeError(f"generator {self.name!r}: prompts must be strings, got {type(prompt).__name__}")
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise TypeError(f"generator {self.name!r}: seeds must be integers, got {seed!r}")
        images: list = []
        size = 1 if self.batch_invariant else self.settings.batch_size
        with self._lock:
            for start in range(0, len(prompts), size):
                images.extend(self._generate_batch(prompts[start : start + size], seeds[start : start + size]))
        return images

    def _generate_batch(self, prompts: list[str], seeds: list[int]) -> list:
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        kwargs: dict[str, Any] = {
            "prompt": prompts,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance,
            "output_type": "pil",
            "generator": generators,
            **self._extra_kwargs,
        }
        for key in self.settings.call:
            if key.startswith("negative_prompt"):  # diffusers wants it the same type as the prompt: one per image
                kwargs[key] = [kwargs[key]] * len(prompts)
        if self.height is not None:
            kwargs["height"] = self.height
        if self.width is not None:
            kwargs["width"] = self.width
        kwargs = {k: v for k, v in kwargs.items() if k in self._call_params or k == "prompt"}
        output = self.pipeline(**kwargs)
        images = output.images if hasattr(output, "images") else output[0]
        if len(images) != len(prompts):
            raise RuntimeError(f"generator {self.name!r}: pipeline returned {len(images)} images for {len(prompts)}")
        return [image.convert("RGB") if image.mode != "RGB" else image for image in images]

    def generate_with(self, prompt: str, seed: int, *, steps: int, guidance: float, height: int, width: int,
                      scheduler: Any | None = None, negative_prompt: str | None = None):
        """One RGB image made with settings other than this generator's (the provenance replay): ``scheduler``
        (a diffusers scheduler, None: the pipeline's own) is used for this call only. Seeded like
        :meth:`generate`, so the same settings give the same image."""
        kwargs: dict[str, Any] = {
            "prompt": [prompt], "num_inference_steps": int(steps), "guidance_scale": float(guidance),
            "height": int(height), "width": int(width), "output_type": "pil",
            "generator": [torch.Generator("cpu").manual_seed(int(seed))], **self._extra_kwargs,
        }
        if negative_prompt:
            kwargs["negative_prompt"] = [negative_prompt]
        kwargs = {k: v for k, v in kwargs.items() if k in self._call_params or k == "prompt"}
        with self._lock:
            original = self.pipeline.scheduler
            try:
                if scheduler is not None:
                    self.pipeline.scheduler = scheduler
                output = self.pipeline(**kwargs)
            finally:
                self.pipeline.scheduler = original
        image = (output.images if hasattr(output, "images") else output[0])[0]
        return image.convert("RGB") if image.mode != "RGB" else image

    # -- identity

    def namespace(self) -> dict:
        """Everything that changes the images (see :func:`generator_namespace`); the cache hashes it."""
        return generator_namespace(self.settings, self.device)


def generator_namespace(settings: GeneratorSettings, device: str | torch.device = "auto") -> dict:
    """Everything that changes a generator's images, computed from its settings without loading it.

    The source's identity (the zoo version for ``zoo:`` sources, a content fingerprint for directories, the
    cached commit hash or the requested revision for hub ids), the effective steps, guidance and size (zoo
    defaults applied), the scheduler override, the dtype resolved for ``device`` and the configured ``call``
    arguments as written (only when there are any). The pipeline class, its scheduler config and the engine's
    own call options follow from the source identity and this package's schema version, so a query answered
    from the cache never needs to load a pipeline to compute its key.
    """
    source = settings.source.strip()
    torch_device = resolve_device(device)
    if source.startswith(_ZOO_PREFIX):
        from . import zoo

        identity = {"source": source, "revision": zoo.ZOO_VERSION}
    else:
        path = Path(os.path.expanduser(source))
        if path.is_dir():
            path = path.resolve()
            identity = {"source": str(path), "revision": None, "fingerprint": _directory_fingerprint(path)}
        else:
            identity = {"source": source, "revision": _cached_commit(source, settings.revision) or settings.revision}
    call = resynthesis_call(settings)
    namespace = {
        **identity,
        **{key: call[key] for key in ("scheduler", "steps", "guidance", "height", "width")},
        "dtype": str(_resolve_dtype(settings, torch_device)).removeprefix("torch."),
    }
    # Only a batching mode other than the device's default enters, so existing indexes keep their namespaces.
    if settings.batch_invariant is not None and settings.batch_invariant != default_batch_invariant(torch_device):
        namespace["batch_invariant"] = settings.batch_invariant
    # Likewise only a non-empty call: a generator without one keeps the namespace it had before calls existed.
    # The call is hashed as written (an explicit value equal to the engine's choice still changes the digest).
    if settings.call:
        namespace["call"] = dict(settings.call)
    return namespace


def resynthesis_call(settings: GeneratorSettings) -> dict:
    """How a generator is called when it resynthesizes, from its settings without loading it: the effective
    steps, guidance and size (zoo or exported-zoo defaults applied; size None = the pipeline's own), the
    scheduler override (None = the pipeline's) and the extra ``call`` arguments. ``rindex info`` shows it."""
    source = settings.source.strip()
    defaults: dict = {}
    if source.startswith(_ZOO_PREFIX):
        from . import zoo

        name = source[len(_ZOO_PREFIX) :]
        defaults = zoo.zoo_defaults(name) if name in zoo.zoo_names() else {}
    elif source and (info := Path(os.path.expanduser(source)) / _ZOO_INFO_FILE).is_file():
        defaults = _read_json(info)
    guidance = settings.guidance if settings.guidance is not None else defaults.get("guidance", DEFAULT_GUIDANCE)
    return {
        "steps": settings.steps or defaults.get("steps") or DEFAULT_STEPS,
        "guidance": float(guidance),
        "height": settings.height or defaults.get("height"),
        "width": settings.width or defaults.get("width"),
        "scheduler": settings.scheduler,
        "call": dict(settings.call),
    }


def default_batch_invariant(device: torch.device) -> bool:
    """Whether a generator on ``device`` runs one pipeline call per image unless its settings say otherwise:
    True on CPU (bit-exact whatever the batch size), False elsewhere (whole batches, for throughput)."""
    return device.type == "cpu"


# --------------------------------------------------------------------------------------------- loading


def load_generator(
    settings: GeneratorSettings, device: str | torch.device = "auto", *, batch_invariant: bool | None = None
) -> Generator:
    """Load the pipeline that ``settings.source`` names and wrap it as a :class:`Generator` on ``device``.

    ``batch_invariant`` (default: the settings' ``batch_invariant``, else True on CPU and False on CUDA) makes
    images bit-identical whatever the batch size, at the cost of one pipeline call per image (see
    :class:`Generator`). An argument that differs from the settings is not reflected in :meth:`Generator.namespace`.

    Raises :class:`ModelNotAvailableError` when the source cannot be found (a hub id not in the local HF cache
    while the hub is unreachable or ``HF_HUB_OFFLINE`` is set, a missing directory, an unknown zoo name) or
    cannot be loaded, and :class:`ConfigError` for an unknown scheduler or device.
    """
    if not isinstance(settings, GeneratorSettings):
        raise TypeError(f"load_generator wants GeneratorSettings, got {type(settings).__name__}")
    torch_device = resolve_device(device)
    dtype = _resolve_dtype(settings, torch_device)
    scheduler_cls = _scheduler_class(settings) if settings.scheduler else None
    source = settings.source.strip()
    if not source:
        raise ConfigError(f"generator '{settings.name}' is gallery-only (no source): it cannot be run")

    defaults: dict = {}
    if source.startswith(_ZOO_PREFIX):
        pipe, defaults = _load_zoo(settings, source)
    else:
        path = Path(os.path.expanduser(source))
        if path.is_dir():
            pipe, defaults = _load_directory(settings, path, dtype)
        elif path.exists() or not _HUB_ID.match(source):
            raise ModelNotAvailableError(
                f"generator '{settings.name}': source '{source}' is neither a diffusers directory nor a hub id "
                "(expected an existing save_pretrained directory, 'org/name' or 'zoo:NAME')"
            )
        else:
            pipe = _load_hub(settings, source, dtype)

    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None
    if scheduler_cls is not None:
        _check_scheduler_compatible(settings, pipe, scheduler_cls)
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    if _module_dtype(pipe) != dtype:
        pipe.to(dtype=dtype)
    pipe.to(torch_device)

    height = settings.height or defaults.get("height") or _default_size(pipe)
    width = settings.width or defaults.get("width") or _default_size(pipe)
    return Generator(
        settings,
        pipe,
        torch_device,
        dtype,
        steps=settings.steps or defaults.get("steps") or DEFAULT_STEPS,
        guidance=settings.guidance if settings.guidance is not None else defaults.get("guidance", DEFAULT_GUIDANCE),
        height=height,
        width=width,
        batch_invariant=batch_invariant,
    )


def _check_call_arguments(settings: GeneratorSettings, pipeline: Any) -> None:
    """Refuse a ``call`` key that the pipeline's ``__call__`` does not name (a ``**kwargs`` catch-all does not
    count: diffusers swallows or merely warns about what lands there)."""
    if not settings.call:
        return
    named = {
        n for n, p in inspect.signature(pipeline.__call__).parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    for key in settings.call:
        if key not in named:
            accepted = sorted(n for n in named if engine_call_argument(n) is None)
            raise ConfigError(
                f"generator '{settings.name}': call key '{key}' is not an argument of "
                f"{type(pipeline).__name__}.__call__; it takes: {', '.join(accepted)}"
            )


def _resolve_dtype(settings: GeneratorSettings, device: torch.device) -> torch.dtype:
    if settings.dtype == "auto":
        return autocast_dtype(device) or torch.float32
    return _DTYPES[settings.dtype]


def _module_dtype(pipe: Any) -> torch.dtype | None:
    for component in getattr(pipe, "components", {}).values():
        if isinstance(component, torch.nn.Module):
            for param in component.parameters():
                return param.dtype
    return None


def _scheduler_class(settings: GeneratorSettings):
    import diffusers
    from diffusers import SchedulerMixin

    cls = getattr(diffusers, settings.scheduler, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ConfigError(
            f"generator '{settings.name}': unknown scheduler '{settings.scheduler}' "
            "(give a diffusers scheduler class name, e.g. 'DPMSolverMultistepScheduler')"
        )
    return cls


def _check_scheduler_compatible(settings: GeneratorSettings, pipe: Any, cls: type) -> None:
    current = type(pipe.scheduler).__name__
    compatible = {c.__name__ for c in getattr(pipe.scheduler, "compatibles", [])} | {current}
    if cls.__name__ not in compatible:
        raise ConfigError(
            f"generator '{settings.name}': scheduler '{cls.__name__}' is not compatible with this pipeline's "
            f"{current}; compatible: {', '.join(sorted(compatible))}"
        )


def _default_size(pipe: Any) -> int | None:
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    sample_size = getattr(getattr(denoiser, "config", None), "sample_size", None)
    factor = getattr(pipe, "vae_scale_factor", None)
    if isinstance(sample_size, int) and isinstance(factor, int) and not type(pipe).__name__.startswith("Flux"):
        return sample_size * factor
    return None  # the pipeline decides


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
