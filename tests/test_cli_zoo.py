import subprocess
import sys

from resynth_index.models.zoo import zoo_names


def rindex(*args, **kw):
    return subprocess.run([sys.executable, "-m", "resynth_index.cli", *args], capture_output=True, text=True, **kw)


def test_zoo_list_prints_one_name_per_line_first_column():
    out = rindex("zoo", "list")
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    assert names == zoo_names()
    assert len(names) >= 4


def test_zoo_export_writes_a_directory_diffusers_loads(tmp_path):
    out = rindex("zoo", "export", "tiny-sd", str(tmp_path / "sd"))
    assert out.returncode == 0, out.stderr
    code = (
        "import resynth_index\n"
        "from diffusers import DiffusionPipeline\n"
        f"p = DiffusionPipeline.from_pretrained({str(tmp_path / 'sd')!r})\n"
        "print(type(p).__name__)\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "StableDiffusionPipeline"


def test_zoo_export_unknown_name_is_a_usage_error(tmp_path):
    out = rindex("zoo", "export", "no-such-model", str(tmp_path / "x"))
    assert out.returncode == 2
    assert "no-such-model" in out.stderr and "Traceback" not in out.stderr
