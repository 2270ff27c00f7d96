"""Every provenance signal through ``rindex query`` (the CLI) and the HTTP service, on artefacts made here:
C2PA-signed PNG and JPEG (and one edited after signing, and a signed camera picture), a watermarked picture
re-encoded as JPEG 75, A1111 and ComfyUI PNGs with model claims, and zoo samples with full parameters replayed."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.request
import uuid

import numpy as np
import pytest
from _provenance_artefacts import (
    CAPTURE,
    certificate_chain,
    comfy_graph,
    edit_png,
    encode,
    png_with_text,
    sign,
    watermark,
)
from click.testing import CliRunner
from PIL import Image
from skimage import data as skdata

from resynth_index import Attributor
from resynth_index.cli import main
from resynth_index.evaluation.samples import read_benchmark, write_samples
from resynth_index.provenance import weight_hashes
from resynth_index.provenance.watermark import MESSAGES

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("provenance")
    chain, key, ca = certificate_chain()
    (root / "ca.pem").write_bytes(ca)
    from safetensors.numpy import save_file

    save_file({"w": np.arange(300_000, dtype=np.float32)}, str(root / "fine-tune.safetensors"))
    config = root / "rindex.toml"
    config.write_text(f"""device = "cpu"
[provenance]
c2pa_trust_anchors = "{root / 'ca.pem'}"
[[generators]]
name = "tiny-sd"
source = "zoo:tiny-sd"
aliases = ["sd-one-five"]
weights_file = "{root / 'fine-tune.safetensors'}"
[[generators]]
name = "tiny-sdxl"
source = "zoo:tiny-sdxl"
watermark = "sdxl"
""")
    index = root / "index"
    files = root / "files"
    files.mkdir()
    with Attributor(config, index=index) as engine:
        engine.build(limit=1, progress=False)
        manifest = write_samples(engine, root / "samples", per_generator=1, with_parameters=True)
        xl = engine.generator("tiny-sdxl").generate(["a red barn in a field"], [5])[0]
        sd = engine.generator("tiny-sd").generate(["a red barn in a field"], [6])[0]
    photo = Image.fromarray(skdata.coffee()[:256, :384])
    signed_png = sign(encode(xl, "PNG"), "image/png", chain, key, agent="tiny-sdxl")
    made = {
        "signed.png": signed_png,
        "signed.jpg": sign(encode(xl, "JPEG", quality=95), "image/jpeg", chain, key, agent="tiny-sdxl"),
        "edited.png": edit_png(signed_png),
        "camera.jpg": sign(encode(photo, "JPEG", quality=90), "image/jpeg", chain, key, agent="Camera OS",
                           source_type=CAPTURE),
        "watermarked.jpg": encode(watermark(photo, MESSAGES["sdxl"]), "JPEG", quality=75, subsampling=0),
        "a1111.png": png_with_text(xl, parameters="a red barn in a field\nSteps: 10, Model: sd-one-five"),
        "hash.png": png_with_text(sd, parameters="a red barn in a field\nSteps: 10, Model hash: "
                                  f"{weight_hashes(root / 'fine-tune.safetensors')[0]}, Model: renamed"),
        "comfy.png": png_with_text(sd, prompt=comfy_graph("a red barn in a field", "checkpoints/tiny-sd.safetensors")),
    }
    for name, blob in made.items():
        (files / name).write_bytes(blob)
    return {"root": root, "config": config, "index": index, "files": files, "made": made,
            "samples": root / "samples", "truth": {b.file: b.generator for b in read_benchmark(manifest)},
            "xl_png": encode(xl, "PNG")}


def _query(world, *paths, resynth=True) -> dict[str, dict]:
    args = ["query", *map(str, paths), "--index", str(world["index"]), "--config", str(world["config"]),
            "--format", "jsonl", "--top-k", "1"] + ([] if resynth else ["--no-resynth"])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {r["path"].rsplit("/", 1)[-1]: r for r in rows}


def _check_file_signals(out: dict[str, dict]) -> None:
    """What every front end must answer for the artefacts that need no replay."""
    for name in ("signed.png", "signed.jpg"):
        r = out[name]
        m = r["provenance"]["manifest"]
        assert (r["prediction"], r["decided_by"]) == ("tiny-sdxl", "c2pa"), r
        assert (m["state"], m["trusted"], m["hashes_match"], m["generator"]) == ("trusted", True, True, "tiny-sdxl")
        assert m["digital_source_type"] == "trainedAlgorithmicMedia"
    edited = out["edited.png"]
    assert edited["decided_by"] in ("resynthesis", "open_set") and edited["provenance"]["manifest"]["state"] == "invalid"
    assert "changed after signing" in edited["provenance"]["manifest"]["note"]
    assert (out["camera.jpg"]["prediction"], out["camera.jpg"]["decided_by"]) == ("real", "c2pa")
    wm = out["watermarked.jpg"]
    assert (wm["prediction"], wm["decided_by"]) == ("tiny-sdxl", "watermark"), wm
    assert wm["provenance"]["watermark"]["message"] == "sdxl" and wm["provenance"]["watermark"]["agreeing"] >= 36
    a1111 = out["a1111.png"]
    (claim,) = a1111["provenance"]["claims"]
    assert (claim["source"], claim["generator"], claim["matched_by"]) == ("a1111", "tiny-sd", "alias")
    assert a1111["decided_by"] == "resynthesis" and a1111["prediction"] == "tiny-sdxl"  # the pixels are tiny-sdxl's
    assert any("a1111 claims model 'sd-one-five' (tiny-sd)" in d for d in a1111["provenance"]["disagreements"])
    (hashed,) = out["hash.png"]["provenance"]["claims"]
    assert (hashed["generator"], hashed["matched_by"]) == ("tiny-sd", "hash")
    (comfy,) = out["comfy.png"]["provenance"]["claims"]
    assert (comfy["source"], comfy["generator"], comfy["matched_by"]) == ("comfyui", "tiny-sd", "name")


def test_cli_file_signals(world):
    out = _query(world, world["files"], resynth=False)
    _check_file_signals(out)
    assert out["comfy.png"]["provenance"]["parameters"]["sampler"] == "euler normal"
    assert out["comfy.png"]["provenance"]["replay"] is None  # --no-resynth: nothing is generated, no replay


def test_cli_replays_samples_with_full_parameters(world):
    out = _query(world, world["samples"])
    assert set(out) == set(world["truth"])
    for name, r in out.items():
        replay = r["provenance"]["replay"]
        truth = world["truth"][name]
        assert (r["prediction"], r["decided_by"], replay["generator"]) == (truth, "replay", truth), r
        others = [d for g, d in replay["distances"].items() if g != truth]
        assert replay["distances"][truth] == 0.0 and min(others) > 0.1  # far below the others
        assert "resynthesize" not in r["timings"] and r["timings"]["replay"] > 0  # decided: nothing resynthesized


def test_http_service_reports_every_signal(world):
    import uvicorn

    from resynth_index.serving.http import bind_socket, create_app

    app = create_app(world["config"], index=world["index"], overrides={"miss_policy": "inline", "request_timeout": 600.0})
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        deadline = time.monotonic() + 120
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.1)
        sample = min(world["truth"])
        files = [(n, b) for n, b in world["made"].items()] + [(sample, (world["samples"] / sample).read_bytes())]
        out = {r["path"]: r for r in _post(url, files)["results"]}
        _check_file_signals(out)
        assert (out[sample]["decided_by"], out[sample]["prediction"]) == ("replay", world["truth"][sample])
        # the signed picture's pixels again, without the manifest: not answered from the signed file's answer
        (plain,) = _post(url, [("plain.png", world["xl_png"])])["results"]
        assert plain["decided_by"] != "c2pa" and plain["provenance"] is None
        (again,) = _post(url, [("again.png", world["made"]["signed.png"])])["results"]
        assert again["image_cache"] == "exact" and again["decided_by"] == "c2pa"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def _post(url: str, files) -> dict:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, blob in files:
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                   "Content-Type: application/octet-stream\r\n\r\n".encode() + blob + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    req = urllib.request.Request(url + "/v1/attribute", data=body.getvalue(), method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        assert resp.status == 200
        return json.loads(resp.read())
