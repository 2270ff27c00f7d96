"""The hostile-input suite (issue 13): ~200 generated files and ~60 hostile names (tests/hostile_cases.py)
through the HTTP service and the CLI (`rindex query DIR`, `--stream`, `rindex enroll NAME`), plus a bounded
Schemathesis run against the live app.

Every path runs with `--no-resynth` or the queue policy over an empty index (no generator loads), so the suite
measures isolation and limits, not generation. The promises: no traceback, no 5xx, every bad input refused with
an error naming it, every innocent input answered whatever its neighbours in a batch, server memory after the
suite within 1.5x of before. The CLI runs in this process (click's CliRunner: the same command, its exit code
and its output; an uncaught exception would be `result.exception`), so the models load once for the module
instead of once per subprocess; the HTTP tests come first, so that the memory check sees only the server.
"""

import base64
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

for _mod in ("fastapi", "pdqhash", "schemathesis"):
    pytest.importorskip(_mod)

from click.testing import CliRunner  # noqa: E402
from hostile_cases import hostile_cases, hostile_names, write_cases  # noqa: E402
from PIL import Image  # noqa: E402

from resynth_index.cli import main  # noqa: E402
from resynth_index.images.metadata import MAX_PROMPT_CHARS  # noqa: E402
from resynth_index.store.cache import CandidateCache  # noqa: E402

CASES = hostile_cases()
BY_NAME = {c.name: c for c in CASES}
NAMES = hostile_names()


def _cli(args, **kw):
    """``rindex ARGS`` in this process; never an uncaught exception (a traceback in a real process)."""
    result = CliRunner().invoke(main, args, **kw)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    CandidateCache(base / "index").close()  # an empty, initialised index: the writer creates it, no model loads
    write_cases(base / "cases", CASES)
    return base


def _check_rows(rows, *, name_of=lambda r: os.path.basename(r["path"])):
    """Each row against its case: expected errors present and naming the input, expected answers present."""
    seen = set()
    for r in rows:
        name = name_of(r)
        case = BY_NAME[name]
        seen.add(name)
        if "error" in r:
            assert case.expect != "ok", f"{name!r} should have been answered: {r['error']}"
            assert name in r["error"] or r["path"] in r["error"], r
            assert "Traceback" not in r["error"]
        else:
            assert case.expect != "error", f"{name!r} should have been refused, got {r.get('prediction')}"
            assert r["prediction"] is not None and len(r.get("prompt") or "") <= MAX_PROMPT_CHARS
    return seen


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def service(world):
    from resynth_index.serving.service import AttributionService

    svc = AttributionService({"serve": {"max_images": 8, "refresh_interval": 0}}, index=world / "index")
    svc.start()
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service):
    from fastapi.testclient import TestClient

    from resynth_index.serving.http import create_app

    with TestClient(create_app(service=service), raise_server_exceptions=False) as c:
        yield c


def _post(client, files):
    return client.post("/v1/attribute", files=[("image", (name, data, "application/octet-stream"))
                                               for name, data in files])


def test_http_every_case_alone_and_poisoned_batches_hurt_no_one(client):
    innocent = [(f"innocent_{k}.png", c.data) for k, c in enumerate(x for x in CASES if x.group == "valid")][:6]
    _post(client, innocent[:2])  # warm-up: models loaded, first batch compiled
    before = _rss_mb()
    statuses = {}

    def alone(case):
        r = _post(client, [(case.name, case.data)])
        return case, r.status_code, r.json()

    with ThreadPoolExecutor(4) as pool:
        for case, status, body in pool.map(alone, CASES):
            statuses[case.name] = status
            assert status < 500, (case.name, status, body)
            if case.expect == "ok":
                assert status == 200 and "error" not in body["results"][0], (case.name, body)
                assert len(body["results"][0]["pdq"]) == 64
            elif case.expect == "error":
                assert status in (413, 415, 422) and case.name in body["error"], (case.name, body)
        # poisoned images (answered but hostile) beside innocent ones, concurrently
        poisoned = [(c.name, c.data) for c in CASES if c.group == "metadata" and c.expect == "ok"]
        batches = [poisoned[k:k + 3] + innocent[k % 4:k % 4 + 2] for k in range(0, len(poisoned), 3)]
        for r in pool.map(lambda b: _post(client, b), batches):
            assert r.status_code == 200 and all("error" not in x for x in r.json()["results"]), r.text[:500]
    after = _rss_mb()
    assert after <= 1.5 * before, (before, after)
    assert sum(s >= 500 for s in statuses.values()) == 0


def test_http_hostile_names_are_echoed_never_a_server_error(client):
    """No endpoint enrols (the server is read-only), so a hostile name reaches HTTP as an image's name: in a
    JSON body (any string, lone surrogates included) and as a multipart file name. It is echoed as the result's
    `path` (the JSON answer escapes it) or refused with a 4xx, never a 5xx."""
    png = BY_NAME["valid_0.png"].data
    data = base64.b64encode(png).decode()
    body = json.dumps({"images": [{"data": data, "name": name} for name, _, _ in NAMES[:8]]})
    r = client.post("/v1/attribute", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text[:500]
    for name, _, why in NAMES:
        r = client.post("/v1/attribute", content=json.dumps({"images": [{"data": data, "name": name}]}),
                        headers={"content-type": "application/json"})
        assert r.status_code < 500, (why, r.status_code, r.text[:300])
        if "\udcff" in name:  # cannot be echoed: JSON answers are UTF-8
            assert r.status_code == 400 and "not valid Unicode" in r.json()["error"], (why, r.text[:300])
        elif name.strip():  # an empty name falls back to "<image 0>"
            assert r.status_code == 200 and r.json()["results"][0]["path"] == name, (why, r.text[:300])
        try:
            r = _post(client, [(name, png)])
        except (UnicodeError, ValueError):  # the client itself cannot send this file name
            continue
        assert r.status_code < 500, (why, r.status_code, r.text[:300])


def test_http_request_pixel_budget_and_nested_json(client, service, monkeypatch):
    import dataclasses

    from fastapi.testclient import TestClient

    from resynth_index.serving.http import create_app

    # The budget scaled down 25x (the default 100 Mpixel would need 60+ Mpixel decoded to reach it).
    monkeypatch.setattr(service, "serve", dataclasses.replace(service.serve, max_request_pixels=4_000_000))
    big = io.BytesIO()
    Image.new("RGB", (1200, 1200), (9, 9, 9)).save(big, "PNG")  # 1.44 Mpixel, under max_pixels alone
    with TestClient(create_app(service=service), raise_server_exceptions=False) as budgeted:
        r = _post(budgeted, [(f"big{k}.png", big.getvalue()) for k in range(3)])  # 4.32 Mpixel: over the budget
        assert r.status_code == 413 and "big2.png" in r.text and "may total 4,000,000" in r.text
        assert _post(budgeted, [(f"big{k}.png", big.getvalue()) for k in range(2)]).status_code == 200
    monkeypatch.undo()
    r = client.post("/v1/attribute", content="[" * 200_000 + "]" * 200_000,
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    info = client.get("/v1/index").json()
    assert not any(isinstance(v, str) and v.startswith("/") for v in info.values())
    assert client.get("/v1/health").json()["status"] == "ok"


def test_api_key_protects_everything_but_health(service, monkeypatch):
    from fastapi.testclient import TestClient

    from resynth_index.serving.http import API_KEY_ENV, create_app, is_loopback

    monkeypatch.setenv(API_KEY_ENV, "s3cret")
    with TestClient(create_app(service=service)) as c:
        assert c.get("/v1/health").status_code == 200
        for method, path in (("get", "/v1/index"), ("post", "/v1/index/refresh"), ("get", "/metrics"),
                             ("post", "/v1/attribute"), ("get", "/openapi.json")):
            assert getattr(c, method)(path).status_code == 401
            assert getattr(c, method)(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/index", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/metrics", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")


def test_slow_clients_are_dropped_after_client_timeout(service, monkeypatch):
    """A real uvicorn server as `rindex serve` runs it, with serve.client_timeout 1 s: a connection that sends
    nothing, half a request line or half a body is closed within about that (half a body gets a 408 with
    `Connection: close`), while another client is answered meanwhile. benchmarks/slow_clients.py measures it at
    scale."""
    import dataclasses
    import socket
    import threading
    import time

    import uvicorn

    from resynth_index.serving.http import (
        bind_socket,
        create_app,
        header_timeout_protocol,
    )

    monkeypatch.setattr(service, "serve", dataclasses.replace(service.serve, client_timeout=1.0))
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service=service), log_level="warning", timeout_keep_alive=1,
                                           http=header_timeout_protocol(1.0)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        sends = {"silent": b"", "partial headers": b"POST /v1/attribute HTTP/1.1\r\nHost: x\r\n",
                 "partial body": b"POST /v1/attribute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 1000\r\n\r\n{\"image\": "}
        t0 = time.monotonic()
        slow = {}
        for kind, data in sends.items():
            slow[kind] = socket.create_connection(("127.0.0.1", port), timeout=5)
            slow[kind].sendall(data)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as polite:
            polite.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert polite.recv(100).startswith(b"HTTP/1.1 200")
        for kind, conn in slow.items():
            received = b""
            while chunk := conn.recv(65536):  # b"" once the server closed it; a 5 s timeout raises
                received += chunk
            held = time.monotonic() - t0
            conn.close()
            assert held < 3.5, (kind, held)
            if kind == "partial body":
                assert received.startswith(b"HTTP/1.1 408") and b"connection: close" in received.lower(), received
            else:
                assert received == b"", (kind, received)
    finally:
        server.should_exit = True
        thread.join(10)
        monkeypatch.undo()


def test_full_build_queue_answers_unqueued_and_health_says_so(client, service, monkeypatch):
    service.build_queue.max_bytes = 10  # nothing fits: the builder "is not keeping up"
    service._queued_prompts.clear()
    service.image_cache.clear()
    try:
        r = _post(client, [("q.png", BY_NAME["valid_1.png"].data)])
        assert r.status_code == 200 and r.json()["results"][0]["queued"] is False
        h = client.get("/v1/health")
        assert h.status_code == 503 and "build queue" in h.json()["error"]
    finally:
        service.build_queue.max_bytes = service.serve.max_queue_bytes
        service.queue_problem = None


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(client):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    failures = []
    for op in schema.get_all_operations():
        operation = op.ok()

        @settings(max_examples=15, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case, operation=operation):
            try:
                # Schema-valid bytes are not necessarily an image: refusing them (400/415/422) is correct, so the
                # check that every schema-valid request is accepted does not apply to an image upload.
                case.call_and_validate(excluded_checks=[positive_data_acceptance])
            except Exception as exc:  # noqa: BLE001 - collected and reported together
                failures.append(f"{operation.label}: {exc}"[:800])
                raise

        try:
            run()
        except Exception:  # noqa: BLE001
            pass
    assert not failures, "\n".join(failures[:5])


def test_every_case_through_query_dir(world):
    """One `rindex query DIR` over every case: one line each, no traceback, exit 1 (some inputs failed)."""
    def files():
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in (world / "index").rglob("*") if p.is_file()}

    before = files()
    result = _cli(["query", str(world / "cases"), "--index", str(world / "index"), "--no-resynth",
                   "--format", "jsonl", "--no-progress"])
    assert result.exit_code == 1, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(CASES) >= 200
    assert _check_rows(rows) == set(BY_NAME)
    # the index was opened read-only: no file of it was created or changed (LMDB's lock.mdb aside: readers
    # register in it)
    assert {p: v for p, v in files().items() if p.name != "lock.mdb"} == \
        {p: v for p, v in before.items() if p.name != "lock.mdb"}


def test_table_output_strips_control_characters(capsys):
    """A prompt or a file name from an adversary must not drive the terminal: `--format table` shows `?`."""
    from resynth_index.attribution.results import Attribution
    from resynth_index.cli import _write_results

    rows = [Attribution(path="ansi_\x1b[31mred.png", prediction="tiny-sd", scores={"tiny-sd": 0.5},
                        prompt="a cat \x1b[2J\x1b[31m in red \r\x07 bell"),
            Attribution(path="bad\x1b]0;title\x07.png", error="bad\x1b]0;title\x07.png: not an image")]
    _write_results(rows, "table", None)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "a cat ?[2J?[31m in red ?? bell" in out and "ansi_?[31mred.png" in out


def test_stream_survives_every_case_and_bad_lines(world):
    """`--stream` over base64 lines of a slice of the cases and hostile lines; a result line per input."""
    picked = [c for c in CASES if c.group != "bitflip"][:90] + [c for c in CASES if c.group == "bitflip"][:10]
    lines = [json.dumps({"image": base64.b64encode(c.data).decode(), "name": c.name, "id": k})
             for k, c in enumerate(picked)]
    hostile_lines = ['{"image": "***", "id": "b64"}', "[" * 100_000 + "]" * 100_000,
                     '{"image": "", "id": {"nested": 1}}', '{"path": 5}', "{not json", '"just a string"',
                     str(world / "cases" / "strip_2x200000.png"), "/nonexistent/\x1b[2Jfile.png"]
    result = _cli(["query", "--stream", "--index", str(world / "index"), "--no-resynth"],
                  input="\n".join(lines + hostile_lines) + "\n")
    assert result.exit_code == 1, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(lines) + len(hostile_lines)
    _check_rows(rows[: len(lines)], name_of=lambda r: r["path"])
    assert [r["id"] for r in rows[: len(lines)]] == list(range(len(lines)))
    tail = rows[len(lines):]
    assert all("error" in r for r in tail)
    assert "id" not in tail[0] and "not valid base64" in tail[0]["error"]
    assert "nested too deeply" in tail[1]["error"] or "error" in tail[1]


def test_enroll_refuses_every_hostile_name_naming_it(world, tmp_path):
    """`rindex enroll NAME`: a refused name exits 2 with `rindex: error:` naming it (escaped), before any model
    loads or any index is created; an unusual but acceptable name is enrolled under exactly that name."""
    image = world / "cases" / "valid_0.png"
    index = tmp_path / "index"
    for name, expect, why in NAMES:
        if expect != "refused":
            continue
        result = _cli(["enroll", name, str(image), "--index", str(index), "--no-progress"])
        assert result.exit_code == 2, (why, result.output[-500:])
        assert "rindex: error: gallery name " + repr(name)[:60] in result.stderr, (why, result.stderr[-500:])
        assert result.stderr.rstrip("\n").isprintable(), (why, result.stderr[-500:])  # no escape reaches a terminal
        assert not index.exists(), why
    accepted = [name for name, _, why in NAMES if why in ("inner space", "Japanese", "64 characters")]
    for name in accepted:
        result = _cli(["enroll", name, str(image), "--index", str(index), "--no-progress"])
        assert result.exit_code == 0 and f"enrolled 1 image(s) for {name!r}" in result.stderr, result.stderr[-500:]
    from resynth_index.gallery.references import Gallery

    with Gallery(index, readonly=True) as gallery:
        assert set(gallery.generators()) == set(accepted)
