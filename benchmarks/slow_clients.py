"""Slow clients against a real ``rindex serve``: how long half-open connections are held, and whether other
clients are still served meanwhile (issue 13 measured 300 half-open connections held 50 s).

It starts ``rindex serve`` on loopback over a fresh empty index (queue policy: nothing is generated) with
``serve.client_timeout`` = ``--client-timeout``, opens ``--clients`` connections split evenly over four kinds,
and keeps each open until the server closes it or ``--hold`` seconds pass:

* ``silent``: connects and sends nothing;
* ``partial headers``: sends a request line and one header, never the blank line that ends the headers;
* ``partial body``: complete headers announcing a 100 kB body, then 10 bytes of it;
* ``idle keep-alive``: one complete request (answered), then nothing.

While they are held, one polite client sends ``GET /v1/health`` and a small image to ``POST /v1/attribute``
every 0.5 s; its answers and latencies are reported. Loopback only; every loop is bounded by ``--hold``.

Prints one table: per kind, connections, closed by the server within ``--hold``, the median and longest time
to close, and what the server sent before closing. Usage:
``python benchmarks/slow_clients.py [--clients 300] [--hold 30] [--client-timeout 5]``
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("silent", "partial headers", "partial body", "idle keep-alive")


def start_server(index: Path, client_timeout: float) -> tuple[subprocess.Popen, int]:
    config = index.parent / "serve.toml"
    config.write_text(f"[serve]\nclient_timeout = {client_timeout}\nrefresh_interval = 0\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "resynth_index.cli", "serve", "--index", str(index), "--config",
                             str(config), "--port", "0", "--host", "127.0.0.1"],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if m := re.search(r"serving http://127\.0\.0\.1:(\d+)", line):
            port = int(m.group(1))
            break
        if not line and proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
    else:
        proc.kill()
        raise SystemExit("the server did not start within 300 s")
    while time.monotonic() < deadline:  # ready once the models are loaded
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/v1/health")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not get ready")


def open_slow(kind: str, port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if kind == "partial headers":
        s.sendall(b"POST /v1/attribute HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    elif kind == "partial body":
        s.sendall(b"POST /v1/attribute HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000\r\n\r\n" + b'{"image": ')
    elif kind == "idle keep-alive":
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    s.setblocking(False)
    return s


def polite_request(port: int, image_body: bytes) -> tuple[list[int], float]:
    t0 = time.perf_counter()
    statuses = []
    for method, path, body in (("GET", "/v1/health", None), ("POST", "/v1/attribute", image_body)):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
            statuses.append(c.getresponse().status)
            c.close()
        except OSError:
            statuses.append(0)
    return statuses, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=300)
    ap.add_argument("--hold", type=float, default=30.0, help="seconds to keep a connection the server keeps")
    ap.add_argument("--client-timeout", type=float, default=5.0, help="the server's serve.client_timeout")
    args = ap.parse_args()

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 90, 160)).save(buf, "PNG")
    image_body = json.dumps({"image": base64.b64encode(buf.getvalue()).decode()}).encode()

    with tempfile.TemporaryDirectory() as tmp:
        from resynth_index.store.cache import CandidateCache

        index = Path(tmp) / "index"
        CandidateCache(index).close()
        proc, port = start_server(index, args.client_timeout)
        try:
            sel = selectors.DefaultSelector()
            opened: dict[socket.socket, tuple[str, float]] = {}
            for k in range(args.clients):
                kind = KINDS[k % len(KINDS)]
                s = open_slow(kind, port)
                opened[s] = (kind, time.monotonic())
                sel.register(s, selectors.EVENT_READ)
            closed: dict[str, list[float]] = {k: [] for k in KINDS}
            answers: dict[str, set[str]] = {k: set() for k in KINDS}
            polite: list[tuple[list[int], float]] = []
            start = time.monotonic()
            next_polite = start
            while opened and time.monotonic() - start < args.hold:
                if time.monotonic() >= next_polite:
                    polite.append(polite_request(port, image_body))
                    next_polite += 0.5
                for key, _ in sel.select(timeout=0.1):
                    s = key.fileobj
                    kind, t_open = opened[s]
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if data:
                        status = data.split(b"\r\n", 1)[0].decode(errors="replace")
                        if kind != "idle keep-alive" or "200" not in status:  # its own answer is expected
                            answers[kind].add(status)
                        continue
                    closed[kind].append(time.monotonic() - t_open)
                    sel.unregister(s)
                    s.close()
                    del opened[s]
            for s in opened:
                s.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()

    print(f"{args.clients} slow connections, serve.client_timeout {args.client_timeout:g} s, held up to "
          f"{args.hold:g} s")
    print(f"{'kind':<17} {'conns':>5} {'closed by server':>16} {'median s':>9} {'max s':>7}  server sent")
    for kind in KINDS:
        times = closed[kind]
        n = sum(1 for k in range(args.clients) if KINDS[k % len(KINDS)] == kind)
        med = f"{statistics.median(times):.1f}" if times else "-"
        mx = f"{max(times):.1f}" if times else "-"
        print(f"{kind:<17} {n:>5} {len(times):>16} {med:>9} {mx:>7}  {', '.join(sorted(answers[kind])) or '-'}")
    ok = sum(1 for st, _ in polite if st == [200, 200])
    lat = sorted(t for _, t in polite)
    print(f"polite client meanwhile: {ok}/{len(polite)} rounds fully answered (health + attribute), "
          f"median {statistics.median(lat):.3f} s, max {lat[-1]:.3f} s" if lat else "polite client: no rounds")


if __name__ == "__main__":
    main()
