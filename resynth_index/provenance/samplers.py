"""Front-end sampler names -> the diffusers scheduler that runs the same algorithm, where one exists.

A1111 names a sampler and (since 1.9) a separate schedule type ("DPM++ 2M" + "Karras", or the older joined
"DPM++ 2M Karras"); ComfyUI names ``sampler_name`` and ``scheduler`` ("dpmpp_2m" + "karras"). The table follows
diffusers' own A1111 correspondence. An equivalent algorithm is not an equivalent noise path: A1111 draws its
noise on the GPU by default and ComfyUI scales it its own way, so their images replay close but not pixel-exact
in diffusers; files made by diffusers pipelines (and ``rindex zoo samples --with-parameters``) replay exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: normalised sampler name -> (diffusers class, config overrides); None: no diffusers equivalent
_SAMPLERS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm2": ("KDPM2DiscreteScheduler", {}),
    "dpm2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "plms": ("PNDMScheduler", {"skip_prk_steps": True}),
    "dpm++ 2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++ 2m sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "dpm++ sde": ("DPMSolverSDEScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "dpm++ 2s a": None, "dpm++ 3m sde": None, "dpm fast": None, "dpm adaptive": None, "restart": None,
}
_COMFY = {"euler": "euler", "euler_ancestral": "euler a", "heun": "heun", "dpm_2": "dpm2",
          "dpm_2_ancestral": "dpm2 a", "lms": "lms", "ddim": "ddim", "dpmpp_2m": "dpm++ 2m",
          "dpmpp_2m_sde": "dpm++ 2m sde", "dpmpp_sde": "dpm++ sde", "uni_pc": "unipc", "lcm": "lcm", "ddpm": "ddpm",
          "dpmpp_2s_ancestral": "dpm++ 2s a", "dpmpp_3m_sde": "dpm++ 3m sde", "dpm_fast": "dpm fast",
          "dpm_adaptive": "dpm adaptive"}
#: schedule type -> overrides; None: no diffusers equivalent
_SCHEDULES: dict[str, dict[str, Any] | None] = {
    "": {}, "automatic": {}, "normal": {}, "simple": {}, "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True}, "sgm uniform": {"timestep_spacing": "trailing"},
    "sgm_uniform": {"timestep_spacing": "trailing"}, "beta": {"use_beta_sigmas": True},
}


@dataclass(frozen=True)
class SchedulerChoice:
    """A diffusers scheduler class and the config values that make it the stated sampler."""

    class_name: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in sorted(self.overrides.items()))
        return f"{self.class_name}({extra})" if extra else self.class_name


def map_sampler(sampler: str) -> SchedulerChoice | str:
    """The diffusers equivalent of a front end's sampler (plus schedule) name, or a sentence saying why none."""
    words = sampler.strip().lower().split()
    if not words:
        return "no sampler stated"
    head, schedule = " ".join(words), ""
    for name in ("karras", "exponential", "sgm uniform", "automatic"):  # A1111's joined "<sampler> <schedule>"
        if head.endswith(" " + name):
            head, schedule = head[: -len(name) - 1], name
            break
    if head not in _SAMPLERS and words[0] in _COMFY:  # ComfyUI: "<sampler_name> <scheduler>"
        head, schedule = _COMFY[words[0]], " ".join(words[1:])
    if head not in _SAMPLERS:
        return f"sampler {sampler!r} is not one this engine knows"
    base = _SAMPLERS[head]
    if base is None:
        return f"sampler {sampler!r} has no diffusers equivalent"
    extra = _SCHEDULES.get(schedule)
    if extra is None:
        return f"schedule {schedule!r} of sampler {sampler!r} has no diffusers equivalent"
    return SchedulerChoice(base[0], {**base[1], **extra})


def build_scheduler(current: Any, choice: SchedulerChoice) -> Any | None:
    """A scheduler for ``choice`` built from the pipeline's ``current`` scheduler config; None when ``current``
    already is that scheduler. Raises ValueError when the class does not fit the pipeline."""
    import diffusers

    if type(current).__name__ == choice.class_name and all(
        current.config.get(k) == v for k, v in choice.overrides.items()
    ):
        return None
    cls = getattr(diffusers, choice.class_name, None)
    compatible = {c.__name__ for c in getattr(current, "compatibles", [])} | {type(current).__name__}
    if cls is None or choice.class_name not in compatible:
        raise ValueError(f"{choice.class_name} is not compatible with this pipeline's {type(current).__name__}")
    return cls.from_config(current.config, **choice.overrides)


def a1111_name(scheduler: Any) -> str | None:
    """The A1111 name of a diffusers scheduler instance (what ``rindex zoo samples --with-parameters`` writes),
    or None when it is none of the table's."""
    for name, entry in _SAMPLERS.items():
        if entry is None or entry[0] != type(scheduler).__name__:
            continue
        if all(scheduler.config.get(k) == v for k, v in entry[1].items()):
            label = next(a for a in _A1111_LABELS if a.lower() == name)
            return label + (" Karras" if scheduler.config.get("use_karras_sigmas") else "")
    return None


_A1111_LABELS = ("Euler", "Euler a", "Heun", "DPM2", "DPM2 a", "LMS", "DDIM", "PLMS", "DPM++ 2M", "DPM++ 2M SDE",
                 "DPM++ SDE", "UniPC", "LCM", "DDPM")
