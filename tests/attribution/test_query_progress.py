"""rindex query on misses: resynthesis runs build.batch_size prompts at a time, with progress on stderr."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image, PngImagePlugin

from resynth_index import Attributor

PROMPTS = ["a red kite over a beach", "a bowl of ramen on a wooden table", "an old bicycle against a wall"]


def _config(tmp_path, batch_size: int):
    path = tmp_path / f"rindex_{batch_size}.toml"
    path.write_text(
        "[cache]\nprompt_embedder = \"none\"\n"
        f"[build]\nbatch_size = {batch_size}\n"
        "[[generators]]\nname = \"pixart\"\nsource = \"zoo:tiny-pixart\"\n"
        "[[generators]]\nname = \"sd\"\nsource = \"zoo:tiny-sd\"\nsteps = 2\n"
    )
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three PNGs that carry three different prompts in A1111 ``parameters``: three misses on a fresh index."""
    folder = tmp_path_factory.mktemp("images")
    for i, prompt in enumerate(PROMPTS):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", f"{prompt}\nSteps: 20, Sampler: Euler a, Seed: {i}")
        Image.new("RGB", (64, 64), (40 * i, 90, 200 - 40 * i)).save(folder / f"img{i}.png", pnginfo=info)
    return folder


def _rindex(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "resynth_index.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def test_progress_on_stderr_when_asked_and_quiet_otherwise(tmp_path, images):
    cfg = _config(tmp_path, batch_size=2)
    shown = _rindex("query", images, "--index", tmp_path / "a", "--config", cfg, "--format", "jsonl", "--progress")
    assert shown.returncode == 0, shown.stderr
    assert "resynthesize" in shown.stderr and "3/3" in shown.stderr and "images=3/3" in shown.stderr
    assert [json.loads(line)["cache"] for line in shown.stdout.splitlines()] == ["miss"] * 3
    quiet = _rindex("query", images, "--index", tmp_path / "b", "--config", cfg, "--format", "jsonl")
    assert quiet.returncode == 0, quiet.stderr
    assert "resynthesize" not in quiet.stderr  # stderr is a pipe here, not a terminal
    assert quiet.stdout.count("\n") == 3


def test_resynthesis_in_groups_gives_the_same_answers(tmp_path, images):
    answers = []
    for batch_size in (1, 8):
        with Attributor(_config(tmp_path, batch_size), index=tmp_path / f"i{batch_size}", device="cpu") as engine:
            results = engine.attribute([images])
            assert engine.images_generated == len(PROMPTS) * 2
        answers.append([(r.prompt, r.cache, r.prediction, r.scores) for r in results])
    assert answers[0] == answers[1]
