"""Reference galleries: enrolment, persistence, gallery-only attribution, fusion, open set, real gate."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resynth_index import Attributor
from resynth_index.attribution.engine import PACKAGED_PROMPTS, read_prompt_file
from resynth_index.errors import ConfigError, RindexError, UsageError
from resynth_index.models.fingerprints import select_patches
from resynth_index.gallery.matching import GallerySpace, calibrate, threshold_at_fpr
from resynth_index.gallery.references import DEFAULT_REAL_PHOTOS, Gallery, Reference

ENROLLED = ("tiny-sd", "tiny-sd-wide", "tiny-sdxl")
NEVER_ENROLLED = "tiny-pixart"
REFS, QUERIES = 8, 4
GALLERY_ONLY = {"generators": [{"name": n} for n in ENROLLED]}


@pytest.fixture(scope="module")
def zoo_pngs(tmp_path_factory):
    """Per zoo generator: REFS reference and QUERIES query PNGs (distinct prompts and seeds)."""
    root = tmp_path_factory.mktemp("zoo")
    prompts = read_prompt_file(PACKAGED_PROMPTS)
    out = {}
    with Attributor(None, index=root / "unused", device="cpu") as engine:
        for gi, name in enumerate(ENROLLED + (NEVER_ENROLLED,)):
            n = REFS + QUERIES
            chosen = [prompts[(gi * 13 + 3 * k) % len(prompts)] for k in range(n)]
            images = engine.generator(name).generate(chosen, [7_000_000 + gi * 100 + k for k in range(n)])
            paths = []
            for k, im in enumerate(images):
                path = root / name / ("ref" if k < REFS else "query") / f"{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                im.save(path)
                paths.append(path)
            out[name] = {"refs": paths[:REFS], "queries": paths[REFS:]}
    return out


@pytest.fixture(scope="module")
def gallery_index(tmp_path_factory, zoo_pngs):
    """An index whose gallery holds REFS references of each ENROLLED generator, enrolled by another process."""
    index = tmp_path_factory.mktemp("gallery-index")
    for name in ENROLLED:
        proc = subprocess.run(
            [sys.executable, "-m", "resynth_index.cli", "enroll", name, str(zoo_pngs[name]["refs"][0].parent),
             "--index", str(index)],
            capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert f"enrolled {REFS} image(s) for '{name}'" in proc.stderr
    return index


def test_enrolment_persists_across_processes(gallery_index):
    with Gallery(gallery_index, readonly=True) as gallery:
        assert gallery.generators() == {n: REFS for n in ENROLLED}
        refs = gallery.references("tiny-sd")
        assert all(Path(r.path).is_absolute() and r.width == 64 for r in refs)
        # the stored bytes decode to the enrolled pixels
        with Image.open(refs[0].path) as original:
            assert np.array_equal(np.asarray(gallery.image(refs[0].id)), np.asarray(original.convert("RGB")))


def test_gallery_only_generators_are_attributed(gallery_index, zoo_pngs):
    config = {**GALLERY_ONLY, "gallery": {"open_set": False}}
    with Attributor(config, index=gallery_index, device="cpu", readonly=True) as engine:
        assert engine.runnable == [] and engine.namespaces == {}
        queries = [p for n in ENROLLED for p in zoo_pngs[n]["queries"]]
        truths = [n for n in ENROLLED for _ in range(QUERIES)]
        results = engine.attribute(queries)
    assert all(r.ok for r in results)
    assert [r.prediction for r in results] == truths
    r = results[0]
    assert r.cache is None and r.prompt is None  # nothing to invert or look up
    kinds = {e.kind for e in r.evidence["tiny-sd"]}
    assert kinds == {"gallery", "fingerprint"}
    assert all(e.reference.startswith(str(zoo_pngs["tiny-sd"]["refs"][0].parent)) for e in r.evidence["tiny-sd"])
    line = r.to_dict()
    assert line["gallery"]["decided_by"] == "scores" and set(line["gallery"]["fingerprint"]) == set(ENROLLED)
    json.dumps(line)


def test_never_enrolled_generator_comes_out_unknown(gallery_index, zoo_pngs):
    with Attributor(GALLERY_ONLY, index=gallery_index, device="cpu", readonly=True) as engine:
        cal = engine.gallery_view().calibration
        unseen = engine.attribute(zoo_pngs[NEVER_ENROLLED]["refs"] + zoo_pngs[NEVER_ENROLLED]["queries"])
        known = engine.attribute([p for n in ENROLLED for p in zoo_pngs[n]["queries"]])
    assert cal.unknown_threshold is not None and cal.unknown_fpr <= 0.05
    unknown_rate = np.mean([r.prediction == "unknown" for r in unseen])
    known_correct = np.mean([r.prediction == t for r, t in zip(known, [n for n in ENROLLED for _ in range(QUERIES)])])
    print(f"never-enrolled -> unknown {unknown_rate:.0%}; enrolled -> correct {known_correct:.0%}; "
          f"calibrated TPR {cal.unknown_tpr:.0%} at FPR {cal.unknown_fpr:.0%}")
    assert unknown_rate >= 0.8
    assert all(r.gallery["decided_by"] == "open_set" for r in unseen if r.prediction == "unknown")
    assert not any(r.prediction in ENROLLED and r.prediction != t for r, t in
                   zip(known, [n for n in ENROLLED for _ in range(QUERIES)]))  # unknown, never another generator


def test_gallery_only_generator_fused_with_resynthesis(tmp_path, zoo_pngs):
    """Three runnable zoo generators plus one known only from references: its images go to it."""
    config = {"generators": [{"name": n, "source": f"zoo:{n}"} for n in ENROLLED] + [{"name": "mystery"}]}
    with Attributor(config, index=tmp_path, device="cpu") as engine:
        assert engine.runnable == list(ENROLLED)
        report = engine.enroll("mystery", zoo_pngs[NEVER_ENROLLED]["refs"])
        assert report.added == REFS and not report.errors
        results = engine.attribute(zoo_pngs[NEVER_ENROLLED]["queries"][:2] + zoo_pngs["tiny-sdxl"]["queries"][:1])
    assert [r.prediction for r in results] == ["mystery", "mystery", "tiny-sdxl"]
    assert results[0].cache == "miss" and set(results[0].scores) == {*ENROLLED, "mystery"}
    assert results[0].gallery["covers_all_generators"] is False  # the gallery cannot vouch for the others


def test_enrolled_name_not_in_config_is_a_candidate(tmp_path, zoo_pngs):
    with Attributor(GALLERY_ONLY, index=tmp_path, device="cpu") as engine:
        engine.enroll("vendor-x", zoo_pngs[NEVER_ENROLLED]["refs"][:3])
        assert engine.candidates() == [*ENROLLED, "vendor-x"]


def test_corrupt_reference_is_rejected_naming_it_and_the_rest_enrolled(tmp_path, zoo_pngs):
    broken = tmp_path / "refs" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(zoo_pngs["tiny-sd"]["refs"][0].read_bytes()[:200])  # truncated PNG
    good = zoo_pngs["tiny-sd"]["refs"][1]
    (tmp_path / "refs" / "good.png").write_bytes(good.read_bytes())
    proc = subprocess.run(
        [sys.executable, "-m", "resynth_index.cli", "enroll", "tiny-sd", str(tmp_path / "refs"),
         "--index", str(tmp_path / "index")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert f"{broken}: cannot decode image" in proc.stderr
    assert "enrolled 1 image(s) for 'tiny-sd' (0 already there, 1 failed)" in proc.stderr
    with Gallery(tmp_path / "index") as gallery:
        assert [Path(r.path).name for r in gallery.references()] == ["good.png"]
        again = gallery.enroll("tiny-sd", [good])
        assert (again.added, again.duplicates) == (0, 1)
        assert gallery.remove("tiny-sd") == 1 and gallery.generators() == {}


def test_reserved_and_invalid_names_are_refused(tmp_path):
    with Gallery(tmp_path) as gallery:
        for bad in ("unknown", "", "a\nb"):
            with pytest.raises(UsageError, match="gallery name"):
                gallery.enroll(bad, [])
    with pytest.raises(ConfigError, match="reserved"):
        Attributor({"generators": [{"name": "real", "source": "zoo:tiny-sd"}]}, index=tmp_path)


def test_readonly_gallery_that_does_not_exist_reads_empty(tmp_path):
    with Gallery(tmp_path / "none", readonly=True) as gallery:
        assert gallery.generators() == {} and gallery.version() == 0
        with pytest.raises(RindexError, match="read-only"):
            gallery.enroll("x", [_png(Image.new("RGB", (32, 32)))])


def test_readonly_gallery_opens_lmdb_readonly_and_writes_nothing(tmp_path, monkeypatch):
    """A read-only gallery never creates its directory and never writes (LMDB itself is opened read-only)."""
    import lmdb

    # an index without a gallery: empty, and no gallery/ directory appears
    (tmp_path / "bare").mkdir()
    with Gallery(tmp_path / "bare", readonly=True) as gallery:
        assert gallery.generators() == {} and gallery.references() == [] and gallery.version() == 0
    assert list((tmp_path / "bare").iterdir()) == []

    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with Gallery(tmp_path) as gallery:
        assert gallery.enroll("g", [_png(Image.fromarray(pixels))]).added == 1
    files = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "gallery").iterdir() if p.name != "lock.mdb"}
    data_bytes = (tmp_path / "gallery" / "data.mdb").read_bytes()

    opened = []
    real_open = lmdb.open
    monkeypatch.setattr(lmdb, "open", lambda *a, **kw: opened.append(kw) or real_open(*a, **kw))
    calls = []

    def feature(images):
        calls.append(len(images))
        return np.ones((len(images), 4), np.float32)

    for _ in range(2):
        with Gallery(tmp_path, readonly=True) as gallery:
            assert gallery.generators() == {"g": 1}
            refs, vecs = gallery.vectors("test-feature", feature)  # computed on first use, kept in memory only
            assert len(refs) == 1 and vecs.shape == (1, 4)
            with pytest.raises(RindexError, match="read-only"):
                gallery.remove("g")
            with pytest.raises(lmdb.ReadonlyError):
                gallery._env.env.begin(write=True)
    assert [kw["readonly"] for kw in opened] == [True, True]
    assert calls == [1, 1]  # the second reader computed it again: nothing was stored
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "gallery").iterdir() if p.name != "lock.mdb"} == files
    assert (tmp_path / "gallery" / "data.mdb").read_bytes() == data_bytes


def _skimage_crops(names, per_photo):
    import importlib.util

    data = Path(list(importlib.util.find_spec("skimage").submodule_search_locations)[0]) / "data"
    out = []
    for name in names:
        with Image.open(data / name) as im:
            pixels = np.asarray(im.convert("RGB"))
        out += [Image.fromarray(np.ascontiguousarray(c)) for c in select_patches(pixels, 128, per_photo)]
    return out


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_real_photos_pass_the_gate_calibrated_on_user_photos(tmp_path, zoo_pngs):
    """The user's real photos (6 photos) calibrate the gate; crops of 3 other photos come out "real"."""
    enrol = _skimage_crops(DEFAULT_REAL_PHOTOS[:3] + DEFAULT_REAL_PHOTOS[9:12], 3)
    held_out = _skimage_crops((DEFAULT_REAL_PHOTOS[5], DEFAULT_REAL_PHOTOS[3], DEFAULT_REAL_PHOTOS[13]), 2)
    with Attributor(GALLERY_ONLY, index=tmp_path, device="cpu") as engine:
        for name in ENROLLED:
            engine.enroll(name, zoo_pngs[name]["refs"])
        engine.enroll("real", [_png(im) for im in enrol])
        cal = engine.gallery_view().calibration
        assert cal.real_source == "enrolled" and cal.real_fpr <= 0.05 and cal.real_tpr >= 0.9
        real = engine.attribute([_png(im) for im in held_out])
        fake = engine.attribute([p for n in ENROLLED for p in zoo_pngs[n]["queries"]])
    real_rate = np.mean([r.prediction == "real" for r in real])
    print(f"held-out real photos -> real {real_rate:.0%}")
    assert real_rate >= 0.5
    assert not any(r.prediction == "real" for r in fake)


def test_threshold_at_fpr_exact():
    negatives = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    t = threshold_at_fpr(negatives, 0.1)
    assert 0.9 < t <= np.nextafter(0.9, 1) and np.mean(np.array(negatives) >= t) == 0.1
    assert threshold_at_fpr(negatives, 0.0) > 1.0
    assert threshold_at_fpr(negatives, 1.0) == float("-inf")


def test_calibration_on_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:3] * 4
    labels = [g for g in "abc" for _ in range(5)]
    vecs = np.concatenate([c + 0.1 * rng.standard_normal((5, 8)) for c in centres])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    real = -np.eye(8)[:4] + 0.1 * rng.standard_normal((4, 8))
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    refs = [Reference(i, g, None, str(i), 8, 8, 0.0) for i, g in enumerate(labels)]
    space = GallerySpace("test", refs, vecs.astype(np.float32), real.astype(np.float32), list("wxyz"), "enrolled",
                         np.zeros(8, np.float32))
    cal = calibrate(space, 0.05)
    assert cal.unknown_tpr == 1.0 and cal.unknown_fpr == 0.0 and cal.real_tpr == 1.0
    assert set(cal.typical) == set("abc") and all(0.9 < v <= 1 for v in cal.typical.values())
