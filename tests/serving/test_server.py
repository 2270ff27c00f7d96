"""`rindex serve` end to end: the real server (a `rindex serve` subprocess on loopback, ephemeral port) over a
tiny index; concurrent load with a snapshot swap by the builder; limits and 4xx; /metrics counters; --stream."""

import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

for _mod in ("fastapi", "uvicorn", "imagehash", "prometheus_client", "multipart"):
    pytest.importorskip(_mod)

from click.testing import CliRunner  # noqa: E402
from PIL import Image, PngImagePlugin  # noqa: E402

from resynth_index import Attributor  # noqa: E402
from resynth_index.attribution.engine import PACKAGED_PROMPTS, read_prompt_file  # noqa: E402
from resynth_index.cli import main  # noqa: E402
from resynth_index.serving.build_queue import BuildQueue, run_builder  # noqa: E402

PROMPTS = read_prompt_file(PACKAGED_PROMPTS)
BUILT = PROMPTS[:4]
NEW_PROMPT = PROMPTS[4]  # never built: a miss, queued for the builder
GENERATORS = {"tiny-sd", "tiny-sd-wide", "tiny-sdxl", "tiny-pixart"}
MAX_UPLOAD = 1_000_000


def _png(img: Image.Image, prompt: str | None = None) -> bytes:
    buf = io.BytesIO()
    info = None
    if prompt:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", f"{prompt}\nSteps: 10, Sampler: Euler, Seed: 1")
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _jpeg(data: bytes, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread while this module runs: the server subprocess computes beside the test process on a
    shared 2-core machine, and OpenMP spin-waits under oversubscription cost far more than a second thread gains."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_torch_thread):
    """A 4-prompt index, images carrying their prompt (3 built, 1 new), and a config for the server."""
    t0 = time.perf_counter()
    root = tmp_path_factory.mktemp("serve")
    index = root / "index"
    with Attributor(None, index=index, device="cpu") as engine:
        engine.build(BUILT, progress=False)
        gens = ["tiny-sd", "tiny-sdxl", "tiny-pixart"]
        images = {}
        for i, g in enumerate(gens):
            img = engine.generator(g).generate([BUILT[i]], [9_000_000 + i])[0]
            images[g] = _png(img, BUILT[i])
        images["new"] = _png(engine.generator("tiny-sd").generate([NEW_PROMPT], [9_000_100])[0], NEW_PROMPT)
        for k in (5, 6):  # for the inline-policy test
            images[f"p{k}"] = _png(engine.generator("tiny-sdxl").generate([PROMPTS[k]], [9_000_200 + k])[0], PROMPTS[k])
    print(f"[world fixture {time.perf_counter() - t0:.1f}s]")
    config = root / "rindex.toml"
    config.write_text(
        'device = "cpu"\n[serve]\nrefresh_interval = 0.3\nmax_upload_bytes = %d\nmax_wait_ms = 5.0\n' % MAX_UPLOAD
    )
    return {"index": index, "images": images, "config": config, "root": root}


@pytest.fixture(scope="module")
def server(world):
    log = world["root"] / "serve.log"
    # one torch thread: the server's work here is tiny and the test process runs the builder beside it
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "resynth_index.cli", "serve", "--index", str(world["index"]),
             "--config", str(world["config"]), "--port", "0"],
            stdout=fh, stderr=subprocess.STDOUT, env=env,
        )
    try:
        url, deadline = None, time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"serving (http://127\.0\.0\.1:\d+)", log.read_text())
            if m:
                url = m.group(1)
                try:
                    if _get(url + "/v1/health", timeout=60)[0] == 200:
                        break
                except OSError:
                    pass
            time.sleep(0.3)
        else:
            pytest.fail(f"server did not start:\n{log.read_text()}")
        print(f"[server up {time.monotonic() - deadline + 180:.1f}s]")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


# ----------------------------------------------------------------------------------------- HTTP helpers


def _request(req, timeout=60):
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _get(url, timeout=60):
    return _request(urllib.request.Request(url), timeout)


def _post_files(url, files, timeout=60):
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, data in files:
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                   f"Content-Type: application/octet-stream\r\n\r\n".encode())
        body.write(data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    req = urllib.request.Request(url + "/v1/attribute", data=body.getvalue(), method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    status, raw = _request(req, timeout)
    return status, json.loads(raw)


def _post_json(url, doc, timeout=60):
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    req = urllib.request.Request(url + "/v1/attribute", data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    status, raw = _request(req, timeout)
    return status, json.loads(raw)


def _metrics(url) -> dict[str, float]:
    status, raw = _get(url + "/metrics")
    assert status == 200
    out = {}
    for line in raw.decode().splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def _sum(metrics, prefix):
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


# ----------------------------------------------------------------------------------------- tests


def test_attribute_one_image_then_repost_and_reencode(server, world):
    img = world["images"]["tiny-sdxl"]
    status, body = _post_files(server, [("fox.png", img)])
    assert status == 200, body
    (r,) = body["results"]
    assert r["path"] == "fox.png" and r["prediction"] in GENERATORS and set(r["scores"]) == GENERATORS
    assert r["cache"] == "hit" and r["prompt_source"].startswith("metadata:")
    assert r["image_cache"] == "none" and r["queued"] is False
    assert {"decode", "image_cache", "queue_wait", "invert", "embed", "lookup", "score"} <= set(r["timings"])

    status, body = _post_files(server, [("repost.png", img)])
    assert status == 200 and body["results"][0]["image_cache"] == "exact"
    assert body["results"][0]["prediction"] == r["prediction"] and body["results"][0]["path"] == "repost.png"

    status, body = _post_files(server, [("reencoded.jpg", _jpeg(img, 85))])
    assert status == 200
    assert body["results"][0]["image_cache"] == "perceptual", body["results"][0]
    assert body["results"][0]["prediction"] == r["prediction"]


def test_json_base64_many_images(server, world):
    imgs = world["images"]
    doc = {"images": [{"data": base64.b64encode(imgs["tiny-sd"]).decode(), "name": "a.png"},
                      "data:image/png;base64," + base64.b64encode(imgs["tiny-pixart"]).decode()]}
    status, body = _post_json(server, doc)
    assert status == 200, body
    assert [r["path"] for r in body["results"]] == ["a.png", "<image 1>"]
    assert all(r["prediction"] in GENERATORS for r in body["results"])


def test_bad_images_and_bad_requests_get_clear_4xx(server, world):
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")  # 400 Mpixel in a few KB
    status, body = _post_files(server, [("bomb.png", bomb.getvalue())])
    assert status == 413 and "bomb" in body["error"] and body["detail"][0]["reason"] == "bomb"

    status, body = _post_files(server, [("notes.png", b"this is not an image at all\n")])
    assert status == 415 and "not a recognised image format" in body["error"]

    status, body = _post_files(server, [("cut.png", world["images"]["tiny-sd"][:200])])
    assert status == 422 and body["detail"][0]["name"] == "cut.png"

    # one bad image refuses the whole request and names it by index
    status, body = _post_files(server, [("ok.png", world["images"]["tiny-sd"]), ("bad.png", b"GIF89a-broken")])
    assert status in (415, 422) and [d["index"] for d in body["detail"]] == [1]

    assert _post_json(server, b"{not json")[0] == 400
    assert _post_json(server, {"images": []})[0] == 400
    assert _post_json(server, {"images": ["***"]})[0] == 400
    assert _post_json(server, {"something": 1})[0] == 400
    status, body = _post_files(server, [("big.png", b"\0" * (MAX_UPLOAD + 10))])
    assert status == 413 and "limit" in body["error"]
    req = urllib.request.Request(server + "/v1/attribute", data=b"x", method="POST",
                                 headers={"Content-Type": "text/plain"})
    assert _request(req)[0] == 415


def test_health_index_docs(server):
    status, raw = _get(server + "/v1/health")
    assert status == 200 and json.loads(raw)["status"] == "ok"
    status, raw = _get(server + "/v1/index")
    info = json.loads(raw)
    assert status == 200 and info["snapshot"]["id"] >= 1 and info["miss_policy"] == "queue"
    assert set(info["vectors_per_generator"]) == GENERATORS and info["prompts"] >= len(BUILT)
    status, raw = _get(server + "/openapi.json")
    paths = json.loads(raw)["paths"]
    assert {"/v1/attribute", "/v1/health", "/v1/index", "/metrics"} <= set(paths)
    assert _get(server + "/docs")[0] == 200


def test_metrics_counters_match_requests(server, world):
    imgs = world["images"]
    before = _metrics(server)
    sent = [[imgs["tiny-sd"]], [imgs["tiny-sd"], imgs["tiny-pixart"]], [_jpeg(imgs["tiny-pixart"], 70)],
            [imgs["tiny-sdxl"]]]
    for files in sent:
        assert _post_files(server, [(f"m{i}.png", f) for i, f in enumerate(files)])[0] == 200
    assert _post_files(server, [("junk.png", b"junk")])[0] == 415
    after = _metrics(server)
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    assert d['rindex_http_requests_total{code="200",endpoint="/v1/attribute"}'] == len(sent)
    assert d['rindex_http_requests_total{code="415",endpoint="/v1/attribute"}'] == 1
    n_images = sum(len(f) for f in sent)
    assert _sum(d, "rindex_images_total{") == n_images
    assert d['rindex_stage_seconds_count{stage="decode"}'] == n_images
    assert d['rindex_images_rejected_total{reason="not_image"}'] == 1
    assert d['rindex_http_request_seconds_count{endpoint="/v1/attribute"}'] == len(sent) + 1
    for name in ("rindex_queue_depth", "rindex_build_queue_prompts", "rindex_snapshot_id"):
        assert name in after
    assert 'rindex_stage_seconds_bucket{le="0.001",stage="image_cache"}' in after


def test_concurrent_load_with_snapshot_swap_loses_no_request(server, world):
    imgs = world["images"]
    # A miss: answered at once from cached evidence, its prompt queued for the builder.
    status, body = _post_files(server, [("new.png", imgs["new"])])
    assert status == 200
    r = body["results"][0]
    assert r["cache"] == "miss" and r["queued"] is True and r["prediction"] in GENERATORS
    assert "resynthesize" not in r["timings"]
    assert BuildQueue(world["index"]).pending() >= 1
    snap0 = json.loads(_get(server + "/v1/health")[1])["snapshot"]

    payloads = [[("a.png", imgs["tiny-sd"])], [("b.jpg", _jpeg(imgs["tiny-sd"], 80))],
                [("c.png", imgs["tiny-sdxl"]), ("d.png", imgs["tiny-pixart"])], [("e.png", imgs["new"])]]
    swapped = threading.Event()
    outcomes, lock = [], threading.Lock()

    def client(k):
        n = 0
        while n < 50 or not swapped.is_set():
            files = payloads[(k + n) % len(payloads)]
            try:
                status, body = _post_files(server, files, timeout=120)
                ok = status == 200 and len(body["results"]) == len(files)
                ok = ok and all(x.get("prediction") in GENERATORS for x in body["results"])
            except Exception as exc:  # noqa: BLE001
                status, ok = repr(exc), False
            with lock:
                outcomes.append((status, ok))
            n += 1
            if n >= 50:
                time.sleep(0.02)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    try:
        # the one builder (a writer; the server only reads) builds the queued prompt under that load
        assert run_builder(None, index=world["index"], device="cpu", once=True) == 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if json.loads(_get(server + "/v1/health")[1])["snapshot"] > snap0:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the server never swapped to the new snapshot")
        print(f"[built and swapped {time.perf_counter() - t0:.1f}s, {len(outcomes)} requests so far]")
        time.sleep(0.5)  # keep the load on across the swap
    finally:
        swapped.set()
        for t in threads:
            t.join(timeout=180)
    assert len(outcomes) >= 8 * 50
    bad = [o for o in outcomes if not o[1]]
    assert not bad, bad[:5]
    assert BuildQueue(world["index"]).pending() == 0

    # the swap dropped the provisional answer: the same image now hits the freshly built candidates
    status, body = _post_files(server, [("new-again.png", imgs["new"])])
    r = body["results"][0]
    assert r["cache"] == "hit" and r["queued"] is False
    m = _metrics(server)
    assert m["rindex_snapshot_swaps_total"] >= 1 and m["rindex_snapshot_id"] > snap0


def test_query_stream_cli(world, tmp_path):
    imgs = world["images"]
    path = tmp_path / "one.png"
    path.write_bytes(imgs["tiny-sd"])
    lines = [
        str(path),
        json.dumps({"path": str(path), "id": 7}),
        json.dumps({"image": base64.b64encode(imgs["tiny-pixart"]).decode(), "name": "inline.png", "id": "x"}),
        str(tmp_path / "missing.png"),
        "{not json",
    ]
    result = CliRunner().invoke(main, ["query", "--stream", "--index", str(world["index"]), "--device", "cpu",
                                       "--no-resynth"], input="\n".join(lines) + "\n")
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.exit_code == 1, result.output
    assert len(out) == 5
    assert out[0]["prediction"] in GENERATORS and out[0]["image_cache"] == "none"
    assert out[1]["id"] == 7 and out[1]["image_cache"] == "exact"
    assert out[2]["id"] == "x" and out[2]["path"] == "inline.png" and out[2]["prediction"] in GENERATORS
    assert "file not found" in out[3]["error"] and "error" in out[4]


def test_serve_config_is_validated():
    from resynth_index.config import load_config
    from resynth_index.errors import ConfigError
    from resynth_index.serving.service import AttributionService

    assert load_config(None).serve.host == "127.0.0.1"
    with pytest.raises(ConfigError, match="serve.miss_policy"):
        load_config({"serve": {"miss_policy": "later"}})
    with pytest.raises(ConfigError, match="phash_distance"):
        AttributionService({"serve": {"phash_distance": 40}})


def test_dynamic_batching_coalesces_concurrent_images(world):
    """In process (after the CLI tests: no writer is open here): 8 distinct uncached images submitted together
    are inverted and embedded as one batch."""
    from resynth_index.serving.service import AttributionService

    base = Image.open(io.BytesIO(world["images"]["tiny-sd"])).convert("RGB")
    svc = AttributionService(world["config"], index=world["index"], overrides={"max_wait_ms": 200.0,
                                                                                "phash_distance": -1})
    with svc:
        images = []
        for k in range(8):
            img = base.copy()
            img.putpixel((k, 0), (k, 255 - k, 7))  # distinct pixels, same picture
            images.append(svc.decode(_png(img, BUILT[0]), f"v{k}.png"))
        results = svc.attribute(images, [f"v{k}.png" for k in range(8)], timeout=120)
        assert [r["path"] for r in results] == [f"v{k}.png" for k in range(8)]
        assert all(r["cache"] == "hit" and r["image_cache"] == "none" for r in results)
        from prometheus_client import generate_latest

        text = generate_latest(svc.metrics.registry).decode()
        assert "rindex_batch_size_count 1.0" in text and "rindex_batch_size_sum 8.0" in text
        # the same pixels again: the image cache answers, nothing is batched
        again = svc.attribute(images[:2], ["a", "b"], timeout=60)
        assert [r["image_cache"] for r in again] == ["exact", "exact"]


def test_inline_policy_resynthesizes_within_budget_and_defers_the_rest(world):
    """miss_policy = inline: the server is the writer. The first miss runs (its cost is not known yet); with a
    zero budget the next one is answered at once, queued, and built by the idle worker."""
    from resynth_index.serving.service import AttributionService

    svc = AttributionService(world["config"], index=world["index"],
                             overrides={"miss_policy": "inline", "resynthesis_budget": 0.0})
    with svc:
        first = svc.attribute([svc.decode(world["images"]["p5"], "p5.png")], ["p5.png"], timeout=300)[0]
        assert first["cache"] == "miss" and "resynthesize" in first["timings"] and first["queued"] is False
        sid = svc.snapshot.id
        second = svc.attribute([svc.decode(world["images"]["p6"], "p6.png")], ["p6.png"], timeout=300)[0]
        assert second["cache"] == "miss" and "resynthesize" not in second["timings"] and second["queued"] is True
        deadline = time.monotonic() + 120
        while svc.snapshot.id == sid and time.monotonic() < deadline:
            time.sleep(0.2)
        assert svc.snapshot.id > sid, "the idle worker never built the deferred prompt"
        third = svc.attribute([svc.decode(world["images"]["p6"], "p6.png")], ["p6.png"], timeout=60)[0]
        assert third["cache"] == "hit" and third["image_cache"] == "none"
