"""`rindex build --ray` on a local Ray instance (started once for the module): the same vectors and records as a
local build, a worker killed mid-run costs only its unit, ingest is idempotent, and a shard of another namespace
or a broken shard is refused by name."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("pyarrow")

import psutil  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from resynth_index import Attributor  # noqa: E402
from resynth_index.attribution.engine import PACKAGED_PROMPTS, read_prompt_file  # noqa: E402
from resynth_index.attribution.resynthesis import degraded_namespaces, generate_candidates  # noqa: E402
from resynth_index.cli import main  # noqa: E402
from resynth_index.store.shards import list_shards, read_header, read_shard, write_shard  # noqa: E402

PROMPTS = read_prompt_file(PACKAGED_PROMPTS)[:4]
# Tiny on purpose (CI has 2 cores): 4 batches of 1 prompt x 2 generators = 8 units of one 32-px image each.
CONFIG_TOML = """
[build]
batch_size = 1

[cache]
prompt_embedder = "none"

[[generators]]
name = "sd"
source = "zoo:tiny-sd"
steps = 2
height = 32
width = 32

[[generators]]
name = "sdxl"
source = "zoo:tiny-sdxl"
steps = 2
height = 32
width = 32
"""


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    config = root / "rindex.toml"
    config.write_text(CONFIG_TOML)
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    local = root / "local"
    with Attributor(config, index=local, device="cpu") as engine:
        engine.build(PROMPTS, progress=False)
    return root, config, prompts, local


def _records(index, config):
    """(prompt, generator) -> (record id, seeds, stored vectors) of every prompt, as the index serves them."""
    out = {}
    with Attributor(config, index=index, device="cpu", readonly=True) as engine:
        ns = engine.namespaces
        degraded = degraded_namespaces(engine.config.resynthesis, ns)
        assert degraded.keys() == ns.keys()
        for p in PROMPTS:
            for kind, namespaces in (("candidates", ns), ("degraded", degraded)):
                look = engine.cache.lookup(p, namespaces)
                assert look.status == "hit", (p, kind, look.status)
                for g, c in look.candidates.items():
                    out[p, g, kind] = (c.record_id, c.seeds, c.vectors)
    return out


def _same(a, b):
    return a.keys() == b.keys() and all(
        a[k][0] == b[k][0] and a[k][1] == b[k][1] and np.array_equal(a[k][2], b[k][2]) for k in a
    )


def _kill_first_writer(staging, killed):
    """SIGKILL the worker process that wrote the first shard, while it computes its next unit."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        shards = list_shards(staging) if staging.is_dir() else []
        if shards:
            pid = int(read_header(shards[0]).writer.rsplit(":", 1)[1])
            ours = {p.pid for p in psutil.Process().children(recursive=True)}
            assert pid in ours  # a worker of this test's Ray instance, never anyone else's process
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


def test_ray_build_matches_local_build_and_survives_a_killed_worker(local_ray, world):
    root, config, prompts, local = world
    index, staging = root / "ray", root / "staging"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_first_writer, args=(staging, killed), daemon=True)
    killer.start()
    result = CliRunner().invoke(main, ["build", "--ray", "--workers", "2", "--index", str(index), "--config",
                                       str(config), "--prompts", str(prompts), "--staging", str(staging)],
                                catch_exceptions=False)
    killer.join(timeout=5)
    assert result.exit_code == 0, result.output
    assert killed, "no shard appeared"
    shards = [read_header(p) for p in list_shards(staging)]
    assert len(shards) == 8  # 4 batches x 2 generators
    writers = {h.writer.rsplit(":", 1)[1] for h in shards}
    assert str(killed[0]) in writers and len(writers) >= 3  # the killed worker, its restart, the other worker
    assert "8 (prompt, generator) candidate set(s) added" in result.output
    # Bit-identical vectors, the same seeds and even the same record ids as the local build.
    assert _same(_records(index, config), _records(local, config))
    # The shards hold the embedder's float32 output: the same as the local build's code computes in this process.
    with Attributor(config, index=local, device="cpu", readonly=True) as engine:
        first = read_shard(next(p for p in list_shards(staging) if "-b0000000-sd" in p.name))
        got = generate_candidates("sd", first.prompts, settings=engine.config.resynthesis,
                                  generator=engine.generator, embedder=engine.embedder)
        assert first.prompts == PROMPTS[:1] and first.seeds == got.seeds
        assert np.array_equal(first.vectors, got.vectors) and np.array_equal(first.degraded, got.degraded)
        assert first.header.copies == engine.config.resynthesis.copies > 0

    # Ingest again: nothing added, nothing changed.
    before = _records(index, config)
    again = CliRunner().invoke(main, ["ingest", str(staging), "--index", str(index), "--config", str(config)])
    assert again.exit_code == 0, again.output
    assert "0 (prompt, generator) candidate set(s) added, 8 already present" in again.output
    assert _same(_records(index, config), before)

    # Rerun against the same staging directory into a new index without ingesting: every pair is staged already,
    # so no unit is computed (an interrupted build resumes the same way).
    rerun = CliRunner().invoke(main, ["build", "--ray", "--no-ingest", "--index", str(root / "other"), "--config",
                                      str(config), "--prompts", str(prompts), "--staging", str(staging)])
    assert rerun.exit_code == 0, rerun.output
    assert "8 (prompt, generator) pair(s) were already staged" in rerun.output and "0 unit(s)" in rerun.output


def test_ingest_refuses_foreign_and_broken_shards(world):
    root, config, _, local = world
    staging = root / "foreign"
    other = root / "other.toml"
    other.write_text(CONFIG_TOML.replace("steps = 2", "steps = 3"))
    with Attributor(other, index=root / "unused", device="cpu") as engine:
        foreign_ns = engine.namespaces["sd"]
    with Attributor(config, index=local, device="cpu", readonly=True) as engine:
        ns, embedder = engine.namespaces, engine.embedder.id
        look = {p: engine.cache.lookup(p, ns).candidates for p in PROMPTS[:2]}
    assert foreign_ns != ns["sd"]

    def shard(batch, generator, namespace):
        return write_shard(staging, generator=generator, namespace=namespace, embedder=embedder, build="t", batch=batch,
                           prompts=PROMPTS[:2], seeds=[look[p]["sd"].seeds for p in PROMPTS[:2]],
                           vectors=np.stack([look[p]["sd"].vectors for p in PROMPTS[:2]]))

    good = shard(0, "sd", ns["sd"])
    foreign = shard(1, "sd", foreign_ns)
    unknown = shard(2, "vendor-x", ns["sd"])
    broken = staging / "t-b0000003-sd.parquet"
    broken.write_bytes(good.read_bytes()[:200])
    index = root / "fresh"
    result = CliRunner().invoke(main, ["ingest", str(staging), "--index", str(index), "--config", str(config)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("rindex: refused shard")]
    assert len(lines) == 3, result.output
    assert any(foreign.name in line and "is not this configuration's" in line and "other generator settings" in line
               for line in lines)
    assert any(unknown.name in line and "'vendor-x' is not in this configuration" in line for line in lines)
    assert any(broken.name in line and "not a readable Parquet shard" in line for line in lines)
    assert "2 (prompt, generator) candidate set(s) added" in result.output  # the good shard went in
    with Attributor(config, index=index, device="cpu", readonly=True) as engine:
        assert all(engine.cache.contains(p, {"sd": ns["sd"]}) for p in PROMPTS[:2])
        assert not engine.cache.contains(PROMPTS[0], {"sd": foreign_ns})


def test_a_shard_carries_the_degraded_copies_checked_against_its_candidates(tmp_path):
    from resynth_index.store.shards import ShardError

    rng = np.random.default_rng(0)
    vectors, copies = rng.standard_normal((2, 1, 8)), rng.standard_normal((2, 3, 8))
    common = dict(generator="sd", namespace="a" * 64, embedder="e", build="t", prompts=["p", "q"], seeds=[[1], [2]],
                  vectors=vectors)
    path = write_shard(tmp_path, batch=0, degraded=copies, degraded_namespace="b" * 64, **common)
    shard = read_shard(path)
    assert shard.header.copies == 3 and shard.header.degraded_namespace == "b" * 64
    assert np.array_equal(shard.degraded, copies.astype(np.float32))
    assert read_shard(write_shard(tmp_path, batch=1, **common)).degraded is None  # copies are optional
    with pytest.raises(ShardError, match="degraded copies"):
        write_shard(tmp_path, batch=2, degraded=copies[:1], degraded_namespace="b" * 64, **common)
    with pytest.raises(ShardError, match="degraded copies"):
        write_shard(tmp_path, batch=3, degraded=copies, degraded_namespace="not a digest", **common)


def test_ray_option_says_how_to_install_ray_when_it_is_missing(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from resynth_index.cli import main\n"
            f"main(['build', '--ray', '--index', {str(tmp_path / 'i')!r}])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 2
    assert "pip install -e '.[scale]'" in proc.stderr
    assert not (tmp_path / "i").exists()  # refused before opening anything
