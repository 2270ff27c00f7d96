"""Device selection shared by every model (``auto`` picks a GPU when one is present), and the CPU thread policy."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import MAX_THREADS
from .errors import ConfigError


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a :class:`torch.device`, checking it exists."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but no CUDA GPU is available (use 'auto' or 'cpu')")
        index = int(spec.split(":", 1)[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device("cuda", index)
    raise ConfigError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision to autocast to on this device (bf16 where supported, else fp16), None on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# ------------------------------------------------------------------------------------------------ threads
#
# The thread policy (README "Threads"): how many CPU threads torch, FAISS and the BLAS libraries use.
# ``threads = 0`` (the default) is automatic; a positive value is used as given.

THREADS_KEY = "threads"  # the config key, named in errors


@dataclass(frozen=True)
class ThreadPolicy:
    """The thread count in effect and why: ``source`` is ``"explicit"`` (the ``threads`` key or ``--threads``),
    ``"OMP_NUM_THREADS"`` or ``"automatic"``; ``cpus`` is how many CPUs this process may use."""

    count: int
    source: str
    cpus: int

    def to_dict(self) -> dict:
        return {"count": self.count, "source": self.source, "cpus_available": self.cpus}


_applied: ThreadPolicy | None = None
_interop_done = False
_blas_threads: int | None = None
_apply_lock = threading.Lock()
_this_thread = threading.local()  # .count: what FAISS's per-thread OpenMP setting was last set to in this thread


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask (``taskset``, cgroup cpusets), capped by a cgroup CPU
    quota (``docker --cpus``) when one is set; at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, int(quota)))
    return max(1, count)


def _cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time the cgroup may use per period (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_*``), None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def _omp_num_threads() -> int | None:
    """``OMP_NUM_THREADS`` when set to a positive integer (the first level of a nested list), else None."""
    raw = os.environ.get("OMP_NUM_THREADS", "").strip()
    try:
        value = int(raw.split(",", 1)[0])
    except ValueError:
        return None
    return value if value > 0 else None


def automatic_threads(cpus: int) -> int:
    """The automatic thread count for a process that may use ``cpus`` CPUs: one.

    Chosen by ``benchmarks/contention.py``. torch's (and FAISS's) OpenMP teams spin-wait at the barrier that
    ends every parallel region, so a team of N > 1 threads that shares its cores with other busy processes
    waits, at each of the thousands of small operators of a diffusion step, for a member the kernel has
    descheduled: on 2 CPUs beside one busy process per CPU the default build ran about 10x slower with 2
    threads than with 1, while with the cores idle 2 threads gained only about 1.25x on these models. One
    thread cannot be left waiting for another; it just gets its fair share of the cores. On a dedicated machine
    set ``threads`` (or ``OMP_NUM_THREADS``) to the CPU count for large models on CPU; ``cpus`` (affinity and
    cgroup quota, :func:`available_cpus`) bounds nothing else here but is reported by ``rindex info``.
    """
    return 1


def resolve_threads(threads: int = 0) -> ThreadPolicy:
    """The thread count the policy gives for the ``threads`` setting, without applying it.

    A positive ``threads`` is used as given; 0 means automatic: ``OMP_NUM_THREADS`` when the user set it, else
    :func:`automatic_threads` of the CPUs this process may use (affinity and cgroup quota).
    Raises :class:`ConfigError` naming the ``threads`` key for anything but an integer in 0..4096.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= MAX_THREADS:
        raise ConfigError(
            f"key '{THREADS_KEY}' must be an integer between 0 (automatic) and {MAX_THREADS}, got {threads!r}"
        )
    cpus = available_cpus()
    if threads > 0:
        return ThreadPolicy(threads, "explicit", cpus)
    omp = _omp_num_threads()
    if omp is not None:
        return ThreadPolicy(omp, "OMP_NUM_THREADS", cpus)
    return ThreadPolicy(automatic_threads(cpus), "automatic", cpus)


def apply_thread_policy(threads: int = 0) -> int:
    """Resolve the ``threads`` setting (see :func:`resolve_threads`) and apply it to every thread pool the
    models and indexes use: torch's intra-op (OpenMP/MKL/oneDNN) and inter-op pools, FAISS's OpenMP, and the
    BLAS libraries numpy and FAISS load (through threadpoolctl). Returns the count.

    Process-wide and idempotent: the :class:`~resynth_index.attribution.engine.Attributor` and the CLI call
    it with the config's ``threads``. FAISS's OpenMP count is per OS thread (torch carries its own over to new
    threads), so code that may run FAISS on another thread calls :func:`ensure_thread_policy` there.
    """
    global _applied, _interop_done, _blas_threads
    policy = resolve_threads(threads)
    n = policy.count
    with _apply_lock:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        if not _interop_done:
            _interop_done = True
            try:  # only possible before the first inter-op work; it matters little for inference
                torch.set_num_interop_threads(n)
            except RuntimeError:
                pass
        _set_faiss_threads(n)
        if _blas_threads != n:  # process-wide pools (OpenBLAS, MKL): once per change
            _blas_threads = n
            try:
                from threadpoolctl import threadpool_limits

                threadpool_limits(limits=n, user_api="blas")
            except ImportError:  # pragma: no cover - threadpoolctl is a dependency
                pass
        _applied = policy
    return n


def ensure_thread_policy() -> None:
    """Carry the applied policy over to the calling thread (FAISS's OpenMP count is per OS thread); a no-op
    when it already holds there or before any policy was applied. Cheap: call it before thread-pool work."""
    policy = _applied
    if policy is not None and getattr(_this_thread, "count", None) != policy.count:
        _set_faiss_threads(policy.count)


def _set_faiss_threads(n: int) -> None:
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss is a dependency
        return
    faiss.omp_set_num_threads(n)
    _this_thread.count = n


def thread_policy() -> ThreadPolicy | None:
    """The policy last applied by :func:`apply_thread_policy` in this process (None before the first call)."""
    return _applied


def thread_report() -> dict:
    """What ``rindex info`` shows: the policy last applied (count, source, CPUs available) and the counts torch
    and FAISS (in the calling thread) actually use."""
    out = _applied.to_dict() if _applied is not None else {"count": None, "source": "not applied"}
    out["torch"] = torch.get_num_threads()
    try:
        import faiss

        out["faiss"] = faiss.omp_get_max_threads()
    except ImportError:  # pragma: no cover - faiss is a dependency
        pass
    return out
