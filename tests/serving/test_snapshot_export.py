"""`rindex snapshot export`: a compact, consistent copy with a manifest that a replica serves exactly as the
source index answers, and a replica pointed at a set of snapshots swaps to the newest complete one."""

import io
import json
import shutil

import pytest

for _mod in ("fastapi", "imagehash", "prometheus_client"):
    pytest.importorskip(_mod)

from click.testing import CliRunner
from PIL import PngImagePlugin

from resynth_index import Attributor
from resynth_index.attribution.engine import PACKAGED_PROMPTS, read_prompt_file
from resynth_index.cli import main
from resynth_index.images.decode import decode_image
from resynth_index.serving.service import AttributionService
from resynth_index.serving.snapshots import (
    complete_snapshots,
    newest_snapshot,
    snapshot_id,
)
from resynth_index.store.export import MANIFEST, read_manifest, verify_files

PROMPTS = read_prompt_file(PACKAGED_PROMPTS)
BUILT, LATER = PROMPTS[:3], PROMPTS[3]
CONFIG = {
    "build": {"batch_size": 2},
    "generators": [
        {"name": "sd", "source": "zoo:tiny-sd", "steps": 2},
        {"name": "sdxl", "source": "zoo:tiny-sdxl", "steps": 2},
    ],
}
# Answer one image per batch, so that the replica's query embeddings are computed exactly as the source's.
SERVE = {"max_batch": 1, "refresh_interval": 0.0}
COMPARED = ("prediction", "scores", "evidence", "prompt", "prompt_source", "cache", "matched_prompt",
            "prompt_similarity", "gallery")


def _png(img, prompt):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"{prompt}\nSteps: 2, Seed: 1")
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("snapshots")
    index, snapshots = root / "index", root / "snapshots"
    with Attributor(CONFIG, index=index, device="cpu") as engine:
        engine.build(BUILT, progress=False)
        images = {}
        for i, prompt in enumerate(BUILT[:2] + [LATER]):
            gen = ("sd", "sdxl")[i % 2]
            images[f"q{i}-{gen}"] = _png(engine.generator(gen).generate([prompt], [7_000_000 + i])[0], prompt)
    return root, index, snapshots, images


def _source_answers(index, images):
    with Attributor(CONFIG, index=index, device="cpu", readonly=True) as engine:
        return {name: {k: v for k, v in engine.attribute_decoded([decode_image(data)], names=[name],
                                                                 resynthesize=False)[0].to_dict().items()
                       if k in COMPARED}
                for name, data in images.items()}


def _served_answers(service, images):
    out = {}
    for name, data in images.items():
        res = service.attribute([decode_image(data)], [name])[0]
        out[name] = {k: v for k, v in res.items() if k in COMPARED}
    return out


def _export(index, snapshots):
    result = CliRunner().invoke(main, ["snapshot", "export", str(snapshots), "--index", str(index)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return newest_snapshot(snapshots)


def test_export_is_compact_consistent_and_checksummed(world):
    _, index, snapshots, _ = world
    path = _export(index, snapshots)
    manifest = read_manifest(path)
    with Attributor(CONFIG, index=index, device="cpu", readonly=True) as source:
        assert manifest["snapshot_id"] == snapshot_id(source) > 0
        assert manifest["namespaces"] == source.cache.namespaces()
        stored = {ns: st["records"] for ns, st in source.cache.namespaces().items()}
    assert sorted(stored.values()) == [len(BUILT)] * 4  # two generators' candidates and their degraded copies
    assert "data.mdb" in manifest["files"] and any(f.startswith("faiss/vec-") for f in manifest["files"])
    assert not (path / "lock.mdb").exists() and not (path / "writer.lock").exists()
    assert verify_files(path) == []
    result = CliRunner().invoke(main, ["snapshot", "verify", str(path)])
    assert result.exit_code == 0 and "intact" in result.output
    # Compact: LMDB's copy holds no free pages (the source's map has grown with every commit).
    assert (path / "data.mdb").stat().st_size <= (index / "data.mdb").stat().st_size

    tampered = path.parent / "tampered"
    shutil.copytree(path, tampered)
    with open(tampered / "data.mdb", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff")
    assert verify_files(tampered) == ["data.mdb: checksum or size differs"]
    result = CliRunner().invoke(main, ["snapshot", "verify", str(tampered)])
    assert result.exit_code == 1 and "data.mdb" in result.output
    shutil.rmtree(tampered)


def test_replica_answers_as_the_source_and_swaps_to_the_newest_snapshot(world):
    _, index, snapshots, images = world
    if not complete_snapshots(snapshots):
        _export(index, snapshots)
    first = newest_snapshot(snapshots)
    # A snapshot being written (no manifest yet) sorts after it, and is never served.
    (snapshots / "99999999999999999999-r999").mkdir()
    expected = _source_answers(index, images)
    with AttributionService(CONFIG, index=snapshots, device="cpu", overrides=SERVE) as service:
        assert service.snapshot.engine.index_dir == first
        served = _served_answers(service, images)
        assert served == expected
        assert served["q2-sd"]["cache"] == "miss"  # LATER was never built: answered from cached evidence

        # The writer builds more and exports again; the replica swaps on its next refresh.
        with Attributor(CONFIG, index=index, device="cpu") as engine:
            engine.build([LATER], progress=False)
        second = _export(index, snapshots)
        assert second != first and read_manifest(second)["snapshot_id"] > read_manifest(first)["snapshot_id"]
        assert service.refresh() == read_manifest(second)["snapshot_id"]
        assert service.snapshot.engine.index_dir == second
        # The provisional answer of the miss was dropped at the swap: the repost is answered by the new snapshot.
        after = _served_answers(service, {"q2-sd": images["q2-sd"]})
    expected_after = _source_answers(index, {"q2-sd": images["q2-sd"]})
    assert expected_after["q2-sd"]["cache"] == "hit"
    assert after == expected_after
    queued = [json.loads(line)["prompt"] for line in (snapshots / "build-queue.jsonl").read_text().splitlines()]
    assert queued == [LATER]  # the miss was queued beside the set, not inside a snapshot
    assert all((s / MANIFEST).is_file() for s in complete_snapshots(snapshots))
