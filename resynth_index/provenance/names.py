"""Which configured generator a claim names: by name, by ``aliases``, or by a weight hash.

Front ends name checkpoints by file name (``v1-5-pruned-emaonly.safetensors [6ce0161689]``, ``sdxl\\base.ckpt``),
manifests by product name; both are compared after :func:`normalize_name`. Weight hashes are A1111's: the
"AutoV2" hash is the first 10 hex digits of the checkpoint file's SHA-256, the older "AutoV1" hash the first 8 of
the SHA-256 of the 64 KiB at offset 1 MiB. :func:`weight_hashes` computes all three forms of a local file
(``weights_file`` in a generator's settings), so a user need not type them.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import GeneratorSettings
from .evidence import Claim

_EXTENSIONS = re.compile(r"\.(safetensors|ckpt|pt|pth|bin|gguf|sft)$", re.IGNORECASE)
_HASH = re.compile(r"^[0-9a-f]{8,64}$")
_LOCK = threading.Lock()
_FILE_HASHES: dict[tuple[str, int, int], tuple[str, str, str]] = {}


def normalize_name(name: str) -> str:
    """``"models/SDXL\\\\sd_xl_base_1.0.safetensors [31e35c80fc]"`` -> ``"sd-xl-base-1-0"``."""
    text = re.sub(r"\s*\[[0-9a-fA-F]{8,64}\]\s*$", "", name.strip())
    text = re.split(r"[\\/]", text)[-1]
    text = _EXTENSIONS.sub("", text)
    return re.sub(r"[^0-9a-z]+", "-", text.lower()).strip("-")


def weight_hashes(path: str | os.PathLike) -> tuple[str, str, str]:
    """(AutoV2, AutoV1, full SHA-256) of a checkpoint file; computed once per (path, size, mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _LOCK:
        if key in _FILE_HASHES:
            return _FILE_HASHES[key]
    full = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            full.update(block)
        fh.seek(0x100000)
        old = hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]
    digest = full.hexdigest()
    found = (digest[:10], old, digest)
    with _LOCK:
        _FILE_HASHES[key] = found
    return found


@dataclass
class GeneratorNames:
    """The configured generators' names, aliases and weight hashes, for matching claims."""

    generators: Sequence[GeneratorSettings]

    def __post_init__(self) -> None:
        self._names: dict[str, set[tuple[str, str]]] = {}
        for g in self.generators:
            self._names.setdefault(normalize_name(g.name), set()).add((g.name, "name"))
            for alias in g.aliases:
                self._names.setdefault(normalize_name(alias), set()).add((g.name, "alias"))
        self._hashes: dict[str, tuple[str, ...]] | None = None

    def by_name(self, name: str) -> tuple[str, str] | None:
        """(generator, "name" | "alias") for the one generator ``name`` denotes; None for none or several."""
        found = {g for g, _ in self._names.get(normalize_name(name), set())}
        if len(found) != 1:
            return None
        g = found.pop()
        how = "name" if (g, "name") in self._names[normalize_name(name)] else "alias"
        return g, how

    def by_hash(self, value: str) -> str | None:
        """The one generator whose configured or computed weight hashes include ``value`` (a prefix of 8+ hex
        digits of a full SHA-256 also matches, as A1111's 10-digit hashes are)."""
        value = value.strip().lower()
        if not _HASH.match(value):
            return None
        if self._hashes is None:
            self._hashes = {}
            for g in self.generators:
                known = [h.strip().lower() for h in g.weight_hashes]
                if g.weights_file:
                    try:
                        known.extend(weight_hashes(os.path.expanduser(g.weights_file)))
                    except OSError:
                        pass  # a missing file matches nothing; the name still can
                self._hashes[g.name] = tuple(known)
        found = {g for g, known in self._hashes.items()
                 if any(h == value or (len(h) == 64 and h.startswith(value) and len(value) >= 10) for h in known)}
        return found.pop() if len(found) == 1 else None

    def match(self, claim: Claim) -> Claim:
        """``claim`` with its generator and how it was matched (a hash wins over a name)."""
        from dataclasses import replace

        if claim.kind == "digital_source_type":
            return claim
        if claim.model_hash:
            g = self.by_hash(claim.model_hash)
            if g is not None:
                return replace(claim, generator=g, matched_by="hash")
        found = self.by_name(claim.value)
        if found is not None:
            return replace(claim, generator=found[0], matched_by=found[1])
        return claim

    def watermarks(self) -> dict[str, tuple[str, ...]]:
        """Watermark message -> the generators whose pipelines embed it."""
        out: dict[str, tuple[str, ...]] = {}
        for g in self.generators:
            if g.watermark:
                out[g.watermark] = out.get(g.watermark, ()) + (g.name,)
        return out
