"""The one batcher behind `rindex serve` and `rindex query --stream`, over a fake engine (no models): coalescing,
image-cache answers, pixel dedupe, one cached value type, policy settlements, deadlines, failures; the stream's
output format; HTTP status by error type."""

import concurrent.futures as cf
import io
import json
import threading
import time

import pytest
from PIL import Image

from resynth_index.config import load_config
from resynth_index.errors import (
    CorruptImage,
    ImageError,
    ImageTooLarge,
    ImageUnreadable,
    NotAnImage,
)
from resynth_index.images.decode import decode_image
from resynth_index.serving import batcher as batcher_module
from resynth_index.serving.batcher import (
    Answer,
    Batcher,
    FixedEngine,
    Settlement,
    TimedImage,
)
from resynth_index.serving.errors import Overloaded, ServiceClosed, classify_image_error
from resynth_index.serving.image_cache import ImageCache
from resynth_index.serving.stream import run_stream


class FakeResult:
    def __init__(self, name: str, cache: str = "hit"):
        self.path, self.prompt, self.cache = name, f"prompt of {name}", cache
        self.timings = {"invert": 0.25, "embed": 0.125}
        self.error = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return {"path": self.path, "prediction": "tiny-sd", "cache": self.cache,
                "timings": {k: round(v, 6) for k, v in self.timings.items()}}


class FakeEngine:
    """Records each batch; ``gate`` (when set) holds a batch until released; ``fail`` raises instead."""

    def __init__(self):
        self.config = load_config(None)
        self.calls: list[list[str]] = []
        self.gate: threading.Event | None = None
        self.fail: Exception | None = None

    def attribute_decoded(self, images, *, names=None, resynthesize=True, resynthesis_budget=None, top_k=3):
        self.calls.append(list(names))
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        return [FakeResult(n, "hit" if resynthesize else "miss") for n in names]


def _image(k: int) -> TimedImage:
    img = Image.new("RGB", (16, 16), (k, 255 - k, 7))
    return TimedImage(decode_image(img, name=f"i{k}.png"), decode_seconds=0.5)


def _batcher(engine, *, policy=None, max_wait_ms=200.0, **kw) -> Batcher:
    return Batcher(policy or FixedEngine(engine), ImageCache(100, -1), max_batch=16, max_wait_ms=max_wait_ms, **kw)


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _answers(futures) -> list[Answer]:
    return [f.result(timeout=10) for f in futures]


def test_images_submitted_together_share_one_batch():
    engine = FakeEngine()
    with _batcher(engine) as b:
        answers = _answers(b.submit([_image(k) for k in range(5)], [f"n{k}" for k in range(5)]))
    assert engine.calls == [["n0", "n1", "n2", "n3", "n4"]]
    assert [a.name for a in answers] == [f"n{k}" for k in range(5)]
    a = answers[0]
    assert a.image_cache == "none" and a.distance is None and not a.shared
    assert set(a.timings) == {"decode", "image_cache", "queue_wait", "invert", "embed"} and a.timings["decode"] == 0.5


def test_identical_pixels_are_computed_once_and_reposts_come_from_the_cache():
    engine = FakeEngine()
    with _batcher(engine) as b:
        first, twin = _answers(b.submit([_image(1), _image(1)], ["a", "b"]))
        assert engine.calls == [["a"]]
        assert not first.shared and twin.shared and twin.image_cache == "none"
        assert twin.result == first.result and twin.result is not first.result
        (again,) = _answers(b.submit([_image(1)], ["c"]))
        assert engine.calls == [["a"]]
        assert (again.image_cache, again.distance, again.shared) == ("exact", 0, False)
        assert set(again.timings) == {"decode", "image_cache"}
        # the cache holds one value type: the answer as compact JSON
        cached = b.image_cache.get(_image(1).image.pixel_sha256)
        own = {k: v for k, v in first.result.items() if k not in ("pdq", "pdq_quality")}  # each image's own
        assert isinstance(cached.value, str) and json.loads(cached.value) == own


def test_policy_settlements_are_added_and_provisional_answers_marked():
    class Queueing(FixedEngine):
        def lease(self):
            import contextlib

            @contextlib.contextmanager
            def held():
                yield self.engine, 41

            return held()

        def settle(self, results, snapshot):
            return [Settlement({"queued": True, "snapshot": snapshot}, provisional=True) for _ in results]

    engine = FakeEngine()
    with _batcher(engine, policy=Queueing(engine)) as b:
        (a,) = _answers(b.submit([_image(2)], ["p"]))
        assert a.result["queued"] is True and a.result["snapshot"] == 41
        hit = b.image_cache.get(_image(2).image.pixel_sha256)
        assert hit.provisional and hit.snapshot == 41


def test_present_formats_what_futures_resolve_to():
    engine = FakeEngine()
    with _batcher(engine, present=lambda a: (a.name, a.image_cache)) as b:
        assert [f.result(timeout=10) for f in b.submit([_image(3)], ["x"])] == [("x", "none")]


def test_past_deadline_and_cancelled_images_are_not_computed():
    engine = FakeEngine()
    engine.gate = threading.Event()
    with _batcher(engine, max_wait_ms=0.0) as b:
        (blocker,) = b.submit([_image(10)], ["blocker"])
        _wait_for(lambda: engine.calls)  # the worker is inside the first batch
        deadline = time.monotonic() + 0.05
        late, gone = b.submit([_image(11), _image(12)], ["late", "gone"], deadline=deadline)
        gone.cancel()
        time.sleep(0.1)
        engine.gate.set()
        blocker.result(timeout=10)
        with pytest.raises(TimeoutError):
            late.result(timeout=10)
    assert engine.calls == [["blocker"]]


def test_too_many_waiting_images_are_refused():
    engine = FakeEngine()
    engine.gate = threading.Event()
    with _batcher(engine, max_wait_ms=0.0, max_pending=2) as b:
        b.submit([_image(20)], ["running"])
        _wait_for(lambda: engine.calls)  # the worker holds it: nothing waits
        b.submit([_image(21), _image(22)], ["w1", "w2"])
        with pytest.raises(Overloaded):
            b.submit([_image(23)], ["one too many"])
        engine.gate.set()


def test_a_failed_batch_fails_its_images_and_the_worker_goes_on():
    engine = FakeEngine()
    engine.fail = RuntimeError("engine broke")
    with _batcher(engine, max_wait_ms=0.0) as b:
        (f,) = b.submit([_image(30)], ["bad"])
        with pytest.raises(RuntimeError, match="engine broke"):
            f.result(timeout=10)
        engine.fail = None
        assert _answers(b.submit([_image(31)], ["good"]))[0].name == "good"
    with pytest.raises(ServiceClosed):
        b.submit([_image(32)], ["after close"])


def test_idle_worker_calls_the_policy(monkeypatch):
    monkeypatch.setattr(batcher_module, "IDLE_SECONDS", 0.02)
    idle = threading.Event()

    class Idle(FixedEngine):
        def idle(self):
            idle.set()

    with _batcher(FakeEngine(), policy=Idle(FakeEngine())):
        assert idle.wait(5)


def test_stream_output_format(tmp_path):
    """Ids echoed, input order kept, identical pixels `exact` with only their decode time, errors per line."""
    engine = FakeEngine()
    path = tmp_path / "one.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(path)
    lines = [str(path), json.dumps({"path": str(path), "id": 7}), str(tmp_path / "missing.png"), "{not json",
             json.dumps({"image": "***", "id": "z"})]
    out = io.StringIO()
    failed = run_stream(engine, io.StringIO("\n".join(lines) + "\n"), out, resynthesize=False)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert failed == 3 and len(rows) == 5
    assert list(rows[0]) == ["path", "prediction", "cache", "timings", "pdq", "pdq_quality", "image_cache"]
    assert len(rows[0]["pdq"]) == 64 and rows[0]["pdq_quality"] == 0  # a flat image: quality 0
    assert rows[0]["image_cache"] == "none" and rows[0]["cache"] == "miss"
    assert list(rows[0]["timings"]) == ["decode", "invert", "embed"]
    assert rows[1]["id"] == 7 and rows[1]["image_cache"] == "exact" and list(rows[1]["timings"]) == ["decode"]
    assert next(iter(rows[1])) == "id" and rows[1]["path"] == str(path)
    assert rows[2] == {"path": str(tmp_path / "missing.png"), "error": f"{tmp_path / 'missing.png'}: file not found"}
    assert rows[3]["path"] == "<line 4>" and rows[3]["error"].startswith("<line 4>: ")
    assert rows[4] == {"path": "<line 5>", "error": "<line 5>: 'image' is not valid base64"}
    assert engine.calls == [[str(path)]]


def test_an_engine_failure_fails_its_lines_not_the_stream():
    """A batch whose engine raises answers its lines with errors naming them; the stream goes on."""
    engine = FakeEngine()
    engine.fail = RuntimeError("engine broke")
    img = io.BytesIO()
    Image.new("RGB", (8, 8)).save(img, "PNG")
    import base64

    line = json.dumps({"image": base64.b64encode(img.getvalue()).decode(), "name": "x.png", "id": 3})
    out = io.StringIO()
    failed = run_stream(engine, io.StringIO(line + "\n" + "{not json\n"), out)
    rows = [json.loads(r) for r in out.getvalue().splitlines()]
    assert failed == 2 and rows[0] == {"id": 3, "path": "x.png", "error": "x.png: RuntimeError: engine broke"}
    assert rows[1]["path"] == "<line 2>" and "error" in rows[1]


def test_http_status_is_chosen_by_error_type_not_message():
    assert classify_image_error(ImageTooLarge("x")) == (413, "bomb")
    assert classify_image_error(NotAnImage("x")) == (415, "not_image")
    for exc in (CorruptImage("not a recognised image format"), ImageUnreadable("decompression bomb"),
                ImageError("empty file")):
        assert classify_image_error(exc) == (422, "bad_image")


def test_futures_are_plain_concurrent_futures():
    engine = FakeEngine()
    with _batcher(engine) as b:
        futures = b.submit([_image(40)], ["f"])
        assert all(isinstance(f, cf.Future) for f in futures)
        cf.wait(futures, timeout=10)
