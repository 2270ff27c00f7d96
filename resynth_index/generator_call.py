"""What a generator's pipeline call may be given in the config: its ``call`` arguments (not those the engine sets
itself) and its settings variants (``[[generators.variants]]``: how else the same model may be called)."""

from __future__ import annotations

import math
from typing import Any, Mapping

from .errors import ConfigError

#: Pipeline-call arguments the engine sets itself, and what to do instead of passing them in ``call``.
_ENGINE_CALL_ARGUMENTS = {
    "prompt": "the engine passes each image's own (inverted, normalised) prompt",
    "prompt_2": "the engine passes each image's own prompt to every text encoder",
    "prompt_3": "the engine passes each image's own prompt to every text encoder",
    "num_inference_steps": "use the generator's 'steps' key",
    "guidance_scale": "use the generator's 'guidance' key",
    "height": "use the generator's 'height' key",
    "width": "use the generator's 'width' key",
    "generator": "the engine seeds one torch.Generator per candidate (resynthesis.seed_base shifts the seeds)",
    "latents": "the initial noise comes from each candidate's seed (resynthesis.seed_base shifts the seeds)",
    "num_images_per_prompt": "candidates per prompt are 'resynthesis.gamma'",
    "output_type": "the engine needs PIL images back",
    "return_dict": "the engine needs the pipeline's output object back",
}


def engine_call_argument(key: str) -> str | None:
    """Why ``key`` cannot be a ``call`` argument (the engine sets it, or a config cannot express it), or None."""
    if key in _ENGINE_CALL_ARGUMENTS:
        return _ENGINE_CALL_ARGUMENTS[key]
    if key.startswith("callback"):
        return "callbacks are code, not configuration"
    if key.endswith(("_embeds", "_attention_mask")) or key.startswith("ip_adapter"):
        return "tensors and images cannot be given in a config"
    return None


def check_call(label: str, call: Any) -> dict[str, Any]:
    """Validate a generator's ``call`` table: identifier keys the engine does not set itself, TOML scalars or
    flat lists of them (lists become tuples: immutable, and what diffusers wants for sizes)."""
    if not isinstance(call, Mapping):
        raise ConfigError(f"{label}: 'call' must be a table of pipeline arguments, got {call!r}")
    for key in call:
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(f"{label}: call key {key!r} is not a Python argument name")
    out: dict[str, Any] = {}
    for key in sorted(call):
        value = call[key]
        where = f"{label}: call key {key!r}"
        reason = engine_call_argument(key)
        if reason is not None:
            raise ConfigError(f"{where} is set by the engine, not in 'call': {reason}")
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if not isinstance(item, str | bool | int | float) or (isinstance(item, float) and not math.isfinite(item)):
                raise ConfigError(
                    f"{where} must be a string, a finite number, true/false, or a list of them; got {value!r}"
                )
        if key.startswith("negative_prompt") and not isinstance(value, str):
            raise ConfigError(f"{where} must be one string (it applies to every image of a batch), got {value!r}")
        out[key] = tuple(value) if isinstance(value, list | tuple) else value
    return out


#: keys a ``[[generators.variants]]`` table may set (how the model is called; what it is stays the generator's)
VARIANT_KEYS = ("steps", "guidance", "height", "width", "scheduler", "call")
#: provenance keys that name the model itself, so a variant does not repeat them
_MODEL_IDENTITY_KEYS = ("aliases", "weight_hashes", "weights_file", "watermark")


def variant_tables(name: str, table: Mapping[str, Any], variants: Any, origin: str) -> list[dict[str, Any]]:
    """Generator ``name``'s variants as generator tables: its ``table`` with each variant's keys over it (``call``
    merged over its call), named ``NAME~1``, ``NAME~2``, ... and marked ``variant_of = NAME``."""
    where = f"generators.{name}.variants"
    if not isinstance(variants, list) or not all(isinstance(v, Mapping) for v in variants):
        raise ConfigError(f"{origin}: '{where}' must be a list of [[generators.variants]] tables")
    out = []
    for k, variant in enumerate(variants, start=1):
        unknown = sorted(set(variant) - set(VARIANT_KEYS))
        if unknown:
            raise ConfigError(f"{origin}: unknown key '{where}[{k}].{unknown[0]}' (a variant may set: "
                              f"{', '.join(VARIANT_KEYS)})")
        merged = {key: v for key, v in table.items() if key not in _MODEL_IDENTITY_KEYS}
        merged.update({key: v for key, v in variant.items() if key != "call"})
        merged["call"] = {**table.get("call", {}), **variant.get("call", {})}
        merged.update(name=f"{name}~{k}", variant_of=name)
        out.append(merged)
    return out


__all__ = ["VARIANT_KEYS", "check_call", "engine_call_argument", "variant_tables"]
