"""Real provenance artefacts made in the tests: a C2PA certificate chain and signed files, files edited after
signing, watermarked pictures, and PNGs carrying front-end claims."""

from __future__ import annotations

import datetime
import io
import json
import struct

import numpy as np
from PIL import Image, PngImagePlugin

AI = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
CAPTURE = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"


def certificate_chain() -> tuple[bytes, bytes, bytes]:
    """(signer chain PEM, signer private key PEM, root CA PEM): an ES256 root and an end-entity certificate
    with the key usages C2PA asks of a claim signer."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rindex tests")])

    def usage(**on):
        keys = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
                "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
        return x509.KeyUsage(**{k: on.get(k, False) for k in keys})

    ca_key, ee_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
    ca = (x509.CertificateBuilder().subject_name(name("rindex test root")).issuer_name(name("rindex test root"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    ee = (x509.CertificateBuilder().subject_name(name("rindex test signer")).issuer_name(ca.subject)
          .public_key(ee_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
          .add_extension(usage(digital_signature=True), critical=True)
          .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key = ee_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ee.public_bytes(pem) + ca.public_bytes(pem), key, ca.public_bytes(pem)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def sign(data: bytes, mime: str, chain: bytes, key: bytes, *, agent: str, source_type: str = AI) -> bytes:
    """``data`` with a C2PA manifest: a ``c2pa.created`` action by software agent ``agent``."""
    import c2pa

    manifest = {"claim_generator_info": [{"name": f"{agent}-service", "version": "1.0"}], "title": "image",
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [
                    {"action": "c2pa.created", "digitalSourceType": source_type,
                     "softwareAgent": {"name": agent, "version": "1.0"}}]}}]}
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain, key, None))
    settings = {"builder": {"thumbnail": {"enabled": False}}, "verify": {"verify_after_sign": False,
                                                                        "remote_manifest_fetch": False}}
    with c2pa.Context.from_dict(settings) as ctx, c2pa.Builder(json.dumps(manifest), ctx) as builder:
        out = io.BytesIO()
        builder.sign(signer, mime, io.BytesIO(data), out)
    return out.getvalue()


def _darken(img: Image.Image) -> Image.Image:
    arr = np.array(img.convert("RGB"))
    arr[: arr.shape[0] // 4, : arr.shape[1] // 4] //= 2
    return Image.fromarray(arr)


def edit_png(signed: bytes) -> bytes:
    """The signed PNG with its pixels changed and everything else (the manifest chunk too) kept."""
    def chunks(b):
        i, out = 8, []
        while i < len(b):
            (n,) = struct.unpack(">I", b[i : i + 4])
            out.append((b[i + 4 : i + 8], b[i : i + 12 + n]))
            i += 12 + n
        return out

    edited = chunks(encode(_darken(Image.open(io.BytesIO(signed))), "PNG"))
    idat = b"".join(c for t, c in edited if t == b"IDAT")
    out, done = signed[:8], False
    for t, c in chunks(signed):
        if t == b"IDAT":
            out += b"" if done else idat
            done = True
        else:
            out += c
    return out


def edit_jpeg(signed: bytes, quality: int) -> bytes:
    """The signed JPEG with its pixels changed: its headers (manifest segment included) before the scan, then
    the scan of the edited picture encoded with the same settings (so the same tables)."""
    edited = encode(_darken(Image.open(io.BytesIO(signed))), "JPEG", quality=quality)
    return signed[: signed.index(b"\xff\xda")] + edited[edited.index(b"\xff\xda") :]


def watermark(img: Image.Image, bits) -> Image.Image:
    """``img`` with ``bits`` embedded by invisible-watermark's dwtDct encoder (BGR in, as the library wants)."""
    from imwatermark import WatermarkEncoder

    enc = WatermarkEncoder()
    enc.set_watermark("bits", list(bits))
    bgr = np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1])
    return Image.fromarray(np.ascontiguousarray(enc.encode(bgr, "dwtDct")[:, :, ::-1]))


def png_with_text(img: Image.Image, **texts: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in texts.items():
        info.add_text(k, v)
    return encode(img, "PNG", pnginfo=info)


def comfy_graph(prompt: str, ckpt: str, *, seed: int = 7, steps: int = 10, cfg: float = 7.5,
                sampler: str = "euler", scheduler: str = "normal", size: int = 64) -> str:
    return json.dumps({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
    })
