"""The shared LMDB environment layer: registry by real path, read-only opens, map growth, fork."""

import os

import lmdb
import pytest

from resynth_index.errors import RindexError
from resynth_index.store.environment import Environment, EnvironmentMissing

NAMES = ("a", "b")


def test_readonly_open_of_missing_environment_creates_nothing(tmp_path):
    with pytest.raises(EnvironmentMissing) as info:
        Environment.open(tmp_path / "none", NAMES, readonly=True, map_size=1 << 20)
    assert not info.value.exists and not (tmp_path / "none").exists()
    # data.mdb without the sub-databases (a writer never got to its first commit)
    lmdb.open(str(tmp_path / "bare"), max_dbs=4).close()
    with pytest.raises(EnvironmentMissing) as info:
        Environment.open(tmp_path / "bare", NAMES, readonly=True, map_size=1 << 20)
    assert info.value.exists


def test_one_environment_per_real_path_and_readers_never_write(tmp_path):
    inits = []
    w = Environment.open(tmp_path / "env", NAMES, readonly=False, map_size=1 << 20,
                         init=lambda txn, dbs: inits.append(txn.put(b"k", b"v", db=dbs["a"])))
    os.symlink(tmp_path / "env", tmp_path / "link")
    r = Environment.open(tmp_path / "link", NAMES, readonly=True, map_size=1 << 20)
    assert r.env is w.env and inits == [True]  # shared; init ran once, in the creating transaction
    with r.read() as txn:
        assert txn.get(b"k", db=r.dbs["a"]) == b"v"
    with pytest.raises(RindexError, match="read-only"):
        r.write(lambda txn: None)
    w.close()
    with r.read() as txn:  # the environment lives until its last handle closes
        assert txn.get(b"k", db=r.dbs["a"]) == b"v"
    r.close()
    r.close()  # idempotent
    with pytest.raises(RindexError, match="closed"):
        r.read()

    # a reader opened first: LMDB itself is read-only, and a writer in this process is refused until it closes
    r = Environment.open(tmp_path / "env", NAMES, readonly=True, map_size=1 << 20)
    assert r.env.flags()["readonly"]
    with pytest.raises(lmdb.ReadonlyError):
        r.env.begin(write=True)
    with pytest.raises(RindexError, match="read-only in this process"):
        Environment.open(tmp_path / "env", NAMES, readonly=False, map_size=1 << 20)
    r.close()
    Environment.open(tmp_path / "env", NAMES, readonly=False, map_size=1 << 20).close()


def test_write_grows_a_full_map_and_reruns_the_transaction(tmp_path):
    env = Environment.open(tmp_path / "env", NAMES, readonly=False, map_size=1 << 20)
    runs = []

    def fill(txn):
        runs.append(1)
        for i in range(64):
            txn.put(i.to_bytes(8, "big"), os.urandom(64 << 10), db=env.dbs["b"])
        return "done"

    assert env.write(fill) == "done"
    assert len(runs) >= 2 and env.env.info()["map_size"] > 1 << 20
    with env.read() as txn:
        assert txn.stat(env.dbs["b"])["entries"] == 64
    env.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_handle_does_not_cross_fork(tmp_path):
    env = Environment.open(tmp_path / "env", NAMES, readonly=False, map_size=1 << 20)
    env.write(lambda txn: txn.put(b"k", b"v", db=env.dbs["a"]))
    reader = env.read()  # a reader slot of the parent, which the child must leave alone
    pid = os.fork()
    if pid == 0:  # the child: the inherited handle refuses, and says to open after forking
        code = 1
        try:
            try:
                env.read()
            except RindexError as exc:
                code = 2 if "fork" in str(exc) else 3
            try:
                Environment.open(tmp_path / "env", NAMES, readonly=True, map_size=1 << 20)
            except RindexError as exc:
                code = code - 2 if "after forking" in str(exc) else 4
            env.close()  # only forgets the handle
            other = Environment.open(tmp_path / "other", NAMES, readonly=False, map_size=1 << 20)
            other.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert reader.get(b"k", db=env.dbs["a"]) == b"v"
    reader.abort()
    env.write(lambda txn: txn.put(b"k2", b"v2", db=env.dbs["a"]))  # the parent's environment is untouched
    with env.read() as txn:
        assert txn.get(b"k2", db=env.dbs["a"]) == b"v2"
    env.close()
