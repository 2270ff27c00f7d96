"""Candidate generators: one small interface over diffusers text-to-image pipelines.

A :class:`Generator` turns ``(prompt, seed)`` pairs into RGB images and describes, in :meth:`Generator.namespace`,
everything that changes those images, so that the cache can key stored vectors on it. :func:`load_generator`
builds one from :class:`GeneratorSettings`; the ``source`` says where the weights come from: ``zoo:NAME``, a
diffusers ``save_pretrained`` directory (SD 1.x/2.x, SDXL, PixArt, ... auto-detected from its
``model_index.json``) or a Hugging Face hub id (:mod:`~resynth_index.models.pipeline_sources` loads and
identifies each).

>>> gen = load_generator(GeneratorSettings(name="sd", source="zoo:tiny-sd"), device="cpu")   # doctest: +SKIP
>>> images = gen.generate(["a red car"] * 2, seeds=[0, 1])                                    # doctest: +SKIP

Determinism: every image has its own CPU ``torch.Generator`` seeded with its seed (diffusers draws the initial
latents from it on the CPU, then moves them), so an image depends only on ``(prompt, seed, settings)``, and on
the device only through floating-point rounding. On CPU images are also bit-identical whatever the batch size
(see ``batch_invariant`` in :class:`Generator`), unless the generator's ``batch_invariant = false``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Sequence
from typing import Any

import torch

from ..config import GeneratorSettings
from ..generator_call import engine_call_argument
from ..devices import autocast_dtype, resolve_device
from ..errors import ConfigError
from .pipeline_sources import load_pipeline, source_defaults, source_identity

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

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
    torch_device = resolve_device(device)
    call = resynthesis_call(settings)
    namespace = {
        **source_identity(settings),
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
    defaults = source_defaults(settings)
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
    if not settings.source.strip():
        raise ConfigError(f"generator '{settings.name}' is gallery-only (no source): it cannot be run")
    pipe, defaults = load_pipeline(settings, dtype)

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

