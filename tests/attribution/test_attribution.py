"""End to end on the embedded offline default: build, samples, query (miss, hit, near), bad inputs, CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from resynth_index import Attributor
from resynth_index.attribution.engine import PACKAGED_PROMPTS, read_prompt_file
from resynth_index.config import load_config
from resynth_index.store.keys import normalize_prompt
from resynth_index.evaluation.samples import SAMPLE_PROMPTS, read_manifest, write_samples

BUILD_PROMPTS = read_prompt_file(PACKAGED_PROMPTS)[:6]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small default index (6 prompts) and 5 held-out samples per zoo generator."""
    index = tmp_path_factory.mktemp("index")
    samples = tmp_path_factory.mktemp("samples")
    with Attributor(None, index=index, device="cpu") as engine:
        report = engine.build(BUILD_PROMPTS, progress=False)
        assert report.built == len(BUILD_PROMPTS) and report.skipped == 0
        write_samples(engine, samples, per_generator=5)
    return index, samples


def test_build_is_resumable_and_skips_cached_prompts(built):
    index, _ = built
    with Attributor(None, index=index, device="cpu") as engine:
        report = engine.build(BUILD_PROMPTS[:4] + ["a brand new prompt about a blue whale"], progress=False)
        assert (report.skipped, report.built) == (4, 1)
        assert report.images == len(engine.config.generators) * engine.config.resynthesis.gamma


def test_generators_side_by_side_store_the_same_vectors_as_one_at_a_time(tmp_path):
    from resynth_index.attribution.prototypes import stored_candidates
    from resynth_index.attribution.resynthesis import build_workers, degraded_namespaces

    vectors = {}
    for workers in (1, 2):
        with Attributor({"build": {"workers": workers}}, index=tmp_path / f"w{workers}", device="cpu") as engine:
            assert build_workers(engine.config.build.workers, engine.device) == workers
            engine.build(BUILD_PROMPTS[:2], progress=False)
            ns = engine.namespaces
            stored = stored_candidates(engine.cache, ns, degraded_namespaces(engine.config.resynthesis, ns))
            vectors[workers] = {(g, kind, c.prompt, c.position): c.vector
                                for g, pair in stored.items() for kind, found in zip("cd", pair) for c in found}
    copies = engine.config.resynthesis.copies
    assert vectors[1].keys() == vectors[2].keys() and len(vectors[1]) == 4 * 2 * (1 + copies)
    for key, vector in vectors[1].items():
        np.testing.assert_array_equal(vector, vectors[2][key], err_msg=str(key))


def test_accuracy_on_held_out_samples(built):
    index, samples = built
    truth = read_manifest(samples / "manifest.csv")
    held_out = {normalize_prompt(p) for p in read_prompt_file(SAMPLE_PROMPTS)}
    assert not held_out & {normalize_prompt(p) for p in read_prompt_file(PACKAGED_PROMPTS)}
    with Attributor(None, index=index, device="cpu") as engine:
        results = engine.attribute([samples])
    assert len(results) == len(truth) == 20
    assert all(r.ok for r in results)
    correct = sum(r.prediction == truth[Path(r.path).name] for r in results)
    assert correct / len(results) >= 0.9, [(Path(r.path).name, r.prediction, r.scores) for r in results]
    assert any(r.cache == "miss" for r in results)  # label prompts were never built: resynthesis ran
    for r in results:
        assert r.prompt_source.startswith("label:")
        assert set(r.scores) == {"tiny-sd", "tiny-sd-wide", "tiny-sdxl", "tiny-pixart"}
        assert r.evidence[r.prediction] and all(e.kind in ("restricted", "unrestricted") for e in r.evidence[r.prediction])
        assert {"decode", "invert", "embed", "lookup", "score"} <= set(r.timings)


def test_repeated_query_hits_and_paraphrase_is_near(built, tmp_path):
    index, samples = built
    first = sorted(samples.glob("sample_*.png"))[0]
    # A paraphrase of a built prompt, carried in the file's metadata as A1111-style front ends write it.
    img = Image.open(first).convert("RGB")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "photo of a red fox that is standing in the fresh snow\nSteps: 10, Seed: 7")
    para = tmp_path / "paraphrase.png"
    img.save(para, pnginfo=info)
    with Attributor(None, index=index, device="cpu") as engine:
        engine.attribute([first])
        again = engine.attribute([first])[0]
        near = engine.attribute([para])[0]
    assert again.cache == "hit" and again.prompt_similarity == pytest.approx(1.0)
    assert near.prompt_source == "metadata:parameters"
    assert near.cache == "near", near
    assert near.matched_prompt == BUILD_PROMPTS[0]
    assert 0 < near.prompt_similarity < 1


def test_no_resynth_answers_from_cache_without_writing(built, tmp_path):
    index, samples = built
    with Attributor(None, index=index, device="cpu") as engine:
        before = engine.info()["prompts"]
        noise = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
        r = engine.attribute([noise], resynthesize=False)[0]
        assert r.ok and r.prediction is not None
        assert engine.info()["prompts"] == before
        assert r.cache in ("miss", "hit", "near")


def _bad_inputs(d: Path) -> dict[str, bool]:
    """File name -> whether it must fail. The others must attribute."""
    (d / "empty.png").write_bytes(b"")
    good = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    good.save(d / "full.png")
    (d / "truncated.png").write_bytes((d / "full.png").read_bytes()[:200])
    (d / "full.png").unlink()
    (d / "text.png").write_text("this is not an image\n")
    Image.new("1", (20000, 20000)).save(d / "bomb.png")
    good.convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray((np.random.default_rng(1).integers(0, 65535, (64, 64))).astype(np.uint16)).save(d / "deep16.png")
    good.convert("RGBA").save(d / "rgba.png")
    frames = [good, good.rotate(90)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return {"empty.png": True, "truncated.png": True, "text.png": True, "bomb.png": True,
            "cmyk.jpg": False, "deep16.png": False, "rgba.png": False, "anim.gif": False}


def test_cli_bad_inputs_each_get_a_line_and_exit_1(built, tmp_path):
    index, _ = built
    expected = _bad_inputs(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "resynth_index.cli", "query", str(tmp_path), "--index", str(index),
         "--format", "jsonl", "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 1, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    by_name = {Path(d["path"]).name: d for d in lines}
    assert set(by_name) == set(expected)
    for name, must_fail in expected.items():
        d = by_name[name]
        if must_fail:
            assert "error" in d and name in d["error"], d
        else:
            # decodable odd files are attributed (hand-made pictures, so the open set may call them unknown)
            assert "error" not in d and d["prediction"] in ("tiny-sd", "tiny-sd-wide", "tiny-sdxl", "tiny-pixart",
                                                             "unknown"), d
            assert d["cache"] in ("hit", "near", "miss") and d["prompt"]


def test_cli_table_with_manifest_and_info(built):
    index, samples = built
    out = subprocess.run(
        [sys.executable, "-m", "resynth_index.cli", "query", str(samples), "--index", str(index),
         "--manifest", str(samples / "manifest.csv"), "--no-resynth", "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    header = out.stdout.splitlines()[0].split()
    assert header[:3] == ["PATH", "TRUE", "PREDICTION"]
    assert "accuracy:" in out.stderr
    info = subprocess.run(
        [sys.executable, "-m", "resynth_index.cli", "info", "--index", str(index), "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["prompts"] >= len(BUILD_PROMPTS)
    assert set(data["config_namespaces"]) == {"tiny-sd", "tiny-sd-wide", "tiny-sdxl", "tiny-pixart"}
    assert set(data["degraded_namespaces"]) == set(data["config_namespaces"]) and data["query_size"] == [64, 64]
    assert data["query_max_size"] == [64, 64]
    # the degraded copies were built beside the candidates: the configured number per candidate
    copies = load_config(None).resynthesis.copies
    assert copies > 0
    stored = {ns: st["vectors"] for ns, st in data["namespaces"].items()}
    assert all(stored[data["degraded_namespaces"][g]] == copies * stored[ns] for g, ns in data["config_namespaces"].items())
    assert data["degraded_copies_per_generator"] == {g: copies * n for g, n in data["vectors_per_generator"].items()}
    assert data["vectors"] == sum(data["vectors_per_generator"].values())  # the copies are counted apart


def test_cli_usage_errors_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[scoring]\naggregat = 'max'\n")
    out = subprocess.run([sys.executable, "-m", "resynth_index.cli", "info", "--config", str(bad), "--index",
                          str(tmp_path / "idx")], capture_output=True, text=True)
    assert out.returncode == 2 and "scoring.aggregat" in out.stderr
    out = subprocess.run([sys.executable, "-m", "resynth_index.cli", "query"], capture_output=True, text=True)
    assert out.returncode == 2
