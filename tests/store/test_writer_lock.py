"""The single-writer lock of a cache directory."""

import os

import pytest

from resynth_index.store.writer_lock import CacheLockedError, WriterLock


def test_a_second_writer_is_refused_until_the_first_releases(tmp_path):
    first = WriterLock(str(tmp_path))
    first.acquire(0)
    with pytest.raises(CacheLockedError, match="already has a writer"):
        WriterLock(str(tmp_path)).acquire(0)
    first.release()
    second = WriterLock(str(tmp_path))
    second.acquire(0)
    second.release()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_releasing_its_copy_keeps_the_parents_lock(tmp_path):
    lock = WriterLock(str(tmp_path))
    lock.acquire(0)
    pid = os.fork()
    if pid == 0:  # the child closes what it inherited, as a CandidateCache closed in a child would
        lock.release()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with pytest.raises(CacheLockedError):
        WriterLock(str(tmp_path)).acquire(0)
    lock.release()
