"""C2PA manifests, read and validated with ``c2pa-python`` (the Content Authenticity Initiative's SDK).

The SDK validates as it reads: the claim signature, the hashes binding the manifest to the file's bytes, and the
signer's certificate chain against its trust list plus any anchors we add. We report the active manifest's
claim generator, the ``digitalSourceType`` and ``softwareAgent`` of its ``c2pa.actions`` assertions, the signer,
and what held: ``trusted`` (chain to a trust anchor), ``valid`` (signature and hashes hold, signer unknown: anyone
can make such a certificate), ``invalid`` with its failure codes (``assertion.dataHash.mismatch``: the pixels or
other bytes were edited after signing). Remote manifests and OCSP are never fetched: reading stays offline.
"""

from __future__ import annotations

import io
import json
from functools import lru_cache
from pathlib import Path

from ..errors import ConfigError
from .claims import source_type_code
from .evidence import ManifestEvidence

#: Pillow format name -> MIME type the SDK reads
MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "TIFF": "image/tiff", "GIF": "image/gif",
        "AVIF": "image/avif", "HEIF": "image/heif"}
_MARKER = b"c2pa"  # the label of a manifest store's JUMBF box: no store without it


@lru_cache(maxsize=8)
def _anchors(path: str) -> str:
    if not path:
        return ""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"provenance.c2pa_trust_anchors: cannot read {path}: {exc.strerror or exc}") from None
    if "BEGIN CERTIFICATE" not in text:
        raise ConfigError(f"provenance.c2pa_trust_anchors: {path} holds no PEM certificate")
    return text


def _settings(trust_anchors: str) -> dict:
    settings: dict = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    anchors = _anchors(trust_anchors)
    if anchors:
        settings["trust"] = {"user_anchors": anchors}
    return settings


def _name(info) -> str | None:
    """A tool's name (its version left out, so that it can be matched to a generator's name or aliases)."""
    if isinstance(info, dict):
        info = info.get("name")
    return info.strip() if isinstance(info, str) and info.strip() else None


def read_manifest(data: bytes | None, fmt: str | None, *, trust_anchors: str = "") -> ManifestEvidence | None:
    """The active manifest of the file ``data`` (Pillow format ``fmt``), validated; None when there is none.

    ``trust_anchors`` is a PEM file of root certificates trusted beside the SDK's list. A store the SDK
    cannot parse gives ``state = "unreadable"`` (a forged or truncated manifest is evidence too)."""
    if not data or _MARKER not in data:
        return None
    import c2pa

    settings = _settings(trust_anchors)
    try:
        with c2pa.Context.from_dict(settings) as ctx:
            reader = c2pa.Reader.try_create(MIME.get(fmt or ""), io.BytesIO(data), None, ctx)
            if reader is None:
                return None
            with reader:
                store = json.loads(reader.json())
    except c2pa.C2paError as exc:
        return ManifestEvidence(state="unreadable", note=f"{type(exc).__name__}: {exc}"[:300])
    active = store.get("manifests", {}).get(store.get("active_manifest") or "", {})
    results = (store.get("validation_results") or {}).get("activeManifest") or {}
    success = {s.get("code") for s in results.get("success", []) if isinstance(s, dict)}
    failures = tuple(sorted({f.get("code") for f in results.get("failure", []) if isinstance(f, dict)} - {None}))
    state = str(store.get("validation_state") or "invalid").lower()

    source_type, agents = None, []
    for assertion in active.get("assertions", []):
        if not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        for action in (assertion.get("data") or {}).get("actions", []):
            if not isinstance(action, dict):
                continue
            if action.get("digitalSourceType") and (source_type is None or action.get("action") == "c2pa.created"):
                source_type = source_type_code(str(action["digitalSourceType"]))
            agent = _name(action.get("softwareAgent"))
            if agent and agent not in agents:
                agents.append(agent)
    generator_info = active.get("claim_generator_info")
    claim_generator = _name(generator_info[0]) if isinstance(generator_info, list) and generator_info else None
    claim_generator = claim_generator or active.get("claim_generator")
    sig = active.get("signature_info") or {}
    signer = " / ".join(str(sig[k]) for k in ("common_name", "issuer") if sig.get(k)) or None
    edited = any(code.endswith(".mismatch") for code in failures)
    note = ("signed by a trusted signer" if state == "trusted" else
            "signature and hashes hold, but the signer is not trusted: anyone can make such a certificate"
            if state == "valid" else
            "the file was changed after signing (hash mismatch)" if edited else "validation failed")
    return ManifestEvidence(
        state=state, claim_generator=claim_generator, software_agents=tuple(agents),
        digital_source_type=source_type, signer=signer,
        signature_valid="claimSignature.validated" in success and not any(
            f.startswith("claimSignature.") for f in failures),
        trusted=state == "trusted", hashes_match=not edited and bool(active), failures=failures, note=note,
    )
