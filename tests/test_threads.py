"""The thread policy (README "Threads"): explicit counts, OMP_NUM_THREADS, CPU affinity, and the pools it reaches.

Each case runs in a fresh process, so that the environment and the affinity are set before torch loads and the
test process's own thread settings are untouched.
"""

import json
import os
import subprocess
import sys

import pytest

from resynth_index.config import ConfigError, load_config
from resynth_index.devices import automatic_threads, resolve_threads

CHILD = r"""
import json, os, sys
args = json.loads(sys.argv[1])
if args["affinity"] is not None:
    os.sched_setaffinity(0, set(args["affinity"]))
import faiss, torch
from threadpoolctl import threadpool_info
import threading
from resynth_index.devices import apply_thread_policy, ensure_thread_policy, thread_report
if args["engine"]:
    from resynth_index import Attributor
    engine = Attributor(index=args["engine"], threads=args["threads"])
    count = engine.threads
    reopened = engine.reopen()
    assert reopened.config.threads == engine.config.threads
else:
    count = apply_thread_policy(args["threads"])
blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
worker = {}
def work():
    worker["before"] = faiss.omp_get_max_threads()
    ensure_thread_policy()
    worker["after"] = (faiss.omp_get_max_threads(), torch.get_num_threads())
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(json.dumps({"count": count, "report": thread_report(), "torch": torch.get_num_threads(),
                  "faiss": faiss.omp_get_max_threads(), "blas": blas, "worker": worker}))
"""


def run_child(threads=0, *, omp=None, affinity=None, engine=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    args = json.dumps({"threads": threads, "affinity": affinity, "engine": engine})
    proc = subprocess.run([sys.executable, "-c", CHILD, args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_applied(out: dict, count: int) -> None:
    assert out["count"] == out["report"]["count"] == count
    assert out["torch"] == out["report"]["torch"] == count
    assert out["faiss"] == count
    assert out["blas"] and all(n == count for n in out["blas"])
    assert out["worker"]["after"] == [count, count]  # carried over to another thread


def test_automatic_count_follows_the_affinity_mask():
    first = min(os.sched_getaffinity(0))
    out = run_child(0, affinity=[first])
    assert out["report"]["source"] == "automatic"
    assert out["report"]["cpus_available"] == 1
    assert_applied(out, 1)

    mine = sorted(os.sched_getaffinity(0))
    out = run_child(0, affinity=mine)
    assert out["report"]["cpus_available"] == resolve_threads(0).cpus <= len(mine)
    assert_applied(out, automatic_threads(out["report"]["cpus_available"]))


def test_omp_num_threads_is_respected_and_an_explicit_value_wins():
    out = run_child(0, omp="3")
    assert out["report"]["source"] == "OMP_NUM_THREADS"
    assert_applied(out, 3)

    out = run_child(2, omp="3")
    assert out["report"]["source"] == "explicit"
    assert_applied(out, 2)


def test_a_malformed_omp_num_threads_is_ignored():
    out = run_child(0, omp="many")
    assert out["report"]["source"] == "automatic"
    assert_applied(out, automatic_threads(out["report"]["cpus_available"]))


def test_the_engine_applies_its_threads_and_reopen_keeps_them(tmp_path):
    out = run_child(1, omp="2", engine=str(tmp_path / "index"))
    assert out["report"]["source"] == "explicit"
    assert_applied(out, 1)
    # FAISS's count is per OS thread: a new thread starts at the OpenMP default until the policy is carried over
    assert out["worker"]["before"] == 2


@pytest.mark.parametrize("value", [-1, 1.5, "2", True, 5000])
def test_a_wrong_value_is_a_config_error_naming_the_key(value):
    with pytest.raises(ConfigError, match="'threads'"):
        load_config({"threads": value})
    with pytest.raises(ConfigError, match="'threads'"):
        resolve_threads(value)


def test_cli_threads_reach_torch(tmp_path):
    from resynth_index.store.cache import CandidateCache

    index = tmp_path / "index"
    CandidateCache(index).close()
    config = tmp_path / "rindex.toml"
    config.write_text("threads = 2\n")
    env = {**os.environ, "OMP_NUM_THREADS": "3"}

    def info(*extra):
        proc = subprocess.run([sys.executable, "-m", "resynth_index.cli", "info", "--index", str(index), "--json",
                               *extra], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout)["threads"]

    flag = info("--config", str(config), "--threads", "1")  # the flag beats the config key and the environment
    assert (flag["count"], flag["source"], flag["torch"], flag["faiss"]) == (1, "explicit", 1, 1)
    key = info("--config", str(config))
    assert (key["count"], key["source"], key["torch"]) == (2, "explicit", 2)

    proc = subprocess.run([sys.executable, "-m", "resynth_index.cli", "info", "--index", str(index), "--threads", "x"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--threads" in proc.stderr
