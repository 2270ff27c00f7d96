"""Contention benchmark: the default build on idle cores and beside a CPU-bound competitor, per thread policy.

Each run is ``rindex build --limit N`` in a fresh temporary index, as a subprocess (model loading included: that
is what a user waits for). "busy" runs start one CPU-bound Python busy loop per CPU this process may use (the
competitor shares the cores: same affinity), and stop them after the run. Variants:

* ``torch default``: ``--threads`` set to the count torch picks by itself (what every build did before the
  thread policy);
* ``automatic``: no ``--threads`` and no ``OMP_NUM_THREADS``: the policy's automatic count
  (:func:`resynth_index.devices.automatic_threads`);
* ``1 thread``: ``--threads 1``;
* ``one generator at a time``: the automatic thread count with ``--workers 1``, the build before generators ran
  side by side (``build.workers``; the automatic count runs as many as there are CPUs per thread).

It prints one table: seconds idle and busy per variant and the busy/idle factor (target: the default build
within 3x its idle time), for the whole command and for the build's own seconds after the models loaded. A run that passes ``--timeout`` is stopped and shown as ``>T``. Runs are interleaved
(idle and busy of each variant back to back) so that drift of a shared machine hits every variant alike.

Usage: python benchmarks/contention.py [--limit 16] [--timeout 600] [--variants default,auto,1,serial]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUSY_LOOP = "while True:\n    pass\n"


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def torch_default_threads() -> int:
    """The count torch picks by itself in a fresh process (no OMP_NUM_THREADS): today's behaviour."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         env=child_env(), capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def policy_threads() -> int:
    """The automatic count of the thread policy in a fresh process (no OMP_NUM_THREADS)."""
    code = "from resynth_index.devices import resolve_threads; print(resolve_threads(0).count)"
    out = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


Run = tuple[float, float] | None  # (wall seconds, the build's own seconds: generation, embedding, commits)


def run_build(limit: int, extra: list[str], timeout: float) -> Run:
    """Seconds of one ``rindex build --limit N`` in a fresh index: wall (model loading included) and the
    build's own report (after loading); None past ``timeout``."""
    index = Path(tempfile.mkdtemp(prefix="rindex-contention-"))
    cmd = [sys.executable, "-m", "resynth_index.cli", "build", "--index", str(index), "--limit", str(limit),
           "--no-progress", *extra]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        shutil.rmtree(index, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    wall = time.perf_counter() - t0
    found = re.search(r"generated in ([0-9.]+)s", proc.stderr)
    return wall, float(found.group(1)) if found else float("nan")


class Competitor:
    """One busy-loop process per CPU, on the same CPUs as the build (inherited affinity)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Competitor":
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(self.n)]
        time.sleep(0.5)  # let them get going
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def fmt(run: Run, timeout: float, part: int = 0) -> str:
    if run is None:
        return f">{timeout:.0f}" if part == 0 else "-"
    return f"{run[part]:.1f}"


def ratio(idle: Run, busy: Run, timeout: float, part: int = 0) -> str:
    if idle is None:
        return "-"
    if busy is None:
        return f">{timeout / idle[0]:.1f}x" if part == 0 else "-"
    return f"{busy[part] / idle[part]:.2f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=16, help="prompts per build (4 zoo generators each)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before a build is stopped")
    ap.add_argument("--variants", default="default,auto,1",
                    help="comma list of: default (torch's own count), auto (the policy), N (--threads N), "
                         "serial (the policy, one generator at a time)")
    args = ap.parse_args()

    n_cpus = cpus()
    load_before = os.getloadavg()[0]
    variants: list[tuple[str, list[str], int]] = []
    for v in (x.strip() for x in args.variants.split(",") if x.strip()):
        if v == "default":
            n = torch_default_threads()
            variants.append((f"torch default ({n})", ["--threads", str(n)], n))
        elif v == "auto":
            variants.append(("automatic", [], policy_threads()))
        elif v == "serial":
            variants.append(("one generator at a time", ["--workers", "1"], policy_threads()))
        else:
            variants.append((f"{int(v)} thread{'s' if int(v) > 1 else ''}", ["--threads", str(int(v))], int(v)))

    rows = []
    for label, extra, n in variants:
        idle = run_build(args.limit, extra, args.timeout)
        with Competitor(n_cpus):
            busy = run_build(args.limit, extra, args.timeout)
        rows.append((label, n, idle, busy))
        print(f"  {label}: idle {fmt(idle, args.timeout)} s, busy {fmt(busy, args.timeout)} s", file=sys.stderr,
              flush=True)

    print(f"rindex build --limit {args.limit} (fresh index, model loading included), {n_cpus} CPU(s); busy = "
          f"{n_cpus} busy-loop process(es) on the same CPUs; 1-min load average before: {load_before:.2f}")
    print("wall: the whole command, model loading included; build: the build's own seconds after loading")
    print(f"{'variant':<24} {'threads':>7} {'idle wall':>10} {'busy wall':>10} {'busy/idle':>10} "
          f"{'idle build':>11} {'busy build':>11} {'busy/idle':>10}")
    for label, n, idle, busy in rows:
        t = args.timeout
        print(f"{label:<24} {n:>7} {fmt(idle, t):>10} {fmt(busy, t):>10} {ratio(idle, busy, t):>10} "
              f"{fmt(idle, t, 1):>11} {fmt(busy, t, 1):>11} {ratio(idle, busy, t, 1):>10}")


if __name__ == "__main__":
    main()
