"""CI must not pass by skipping: with ``CI`` set, a test skipped for a missing tool fails (tests/conftest.py)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

SKIP_IN_TEST = "import pytest\ndef test_needs_a_tool():\n    pytest.skip('chromium is not installed')\ndef test_runs():\n    pass\n"
SKIP_MODULE = "import pytest\npytest.importorskip('no_such_module_xyz')\n"


def _run(tmp_path: Path, source: str, ci: bool) -> subprocess.CompletedProcess:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_tool.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_a_skipped_test_fails_in_ci(tmp_path):
    out = _run(tmp_path, SKIP_IN_TEST, ci=True)
    assert out.returncode == 1, out.stdout
    assert "skipped in CI" in out.stdout and "chromium is not installed" in out.stdout
    assert "1 failed, 1 passed" in out.stdout


def test_a_skipped_module_fails_in_ci(tmp_path):
    out = _run(tmp_path, SKIP_MODULE, ci=True)
    assert out.returncode != 0, out.stdout
    assert "module skipped in CI" in out.stdout and "no_such_module_xyz" in out.stdout


def test_a_skip_is_a_skip_outside_ci(tmp_path):
    assert _run(tmp_path, SKIP_IN_TEST, ci=False).returncode == 0
    assert _run(tmp_path, SKIP_MODULE, ci=False).returncode == 5  # nothing ran, nothing failed
