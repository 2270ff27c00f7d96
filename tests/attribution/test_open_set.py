"""Open set by default: the cache calibrates ``unknown`` on its own candidates (leave one generator out), and
every result says what decided it and by what margin."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from resynth_index import Attributor
from resynth_index.attribution.engine import PACKAGED_PROMPTS, read_prompt_file
from resynth_index.attribution.open_set import MIN_SAMPLES, calibrate_open_set, candidate_scores
from resynth_index.attribution.resynthesis import degraded_namespaces
from resynth_index.cli import main
from resynth_index.evaluation.samples import write_samples

GENERATORS = [{"name": "tiny-sd", "source": "zoo:tiny-sd"}, {"name": "tiny-sdxl", "source": "zoo:tiny-sdxl"}]
CONFIG = {"generators": GENERATORS, "scoring": {"open_set": True}}
PROMPTS = read_prompt_file(PACKAGED_PROMPTS)[:MIN_SAMPLES]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    index = tmp_path_factory.mktemp("index")
    samples = tmp_path_factory.mktemp("samples")
    with Attributor(CONFIG, index=index, device="cpu") as engine:
        engine.build(PROMPTS, progress=False)
        write_samples(engine, samples, per_generator=2)
    return index, samples


def test_calibration_holds_its_false_positive_rate_on_the_cache(index):
    idx, _ = index
    with Attributor(CONFIG, index=idx, device="cpu", readonly=True) as engine:
        cal = engine.open_set_calibration()
        copies = engine.config.resynthesis.copies
        rows = candidate_scores(engine.cache, engine.namespaces, engine.config.scoring,
                                degraded_namespaces(engine.config.resynthesis, engine.namespaces),
                                blocks=engine.embedding_blocks())
    # every candidate and (up to the sample size) its degraded copies are pseudo-queries: the threshold must
    # hold for both
    assert copies and cal.threshold is not None and cal.samples == len(rows) > 2 * MIN_SAMPLES
    assert cal.target_fpr == 0.05
    # no candidate is its own evidence: a self-match would score exactly 1 for its own generator
    assert all(scores[truth] < 0.99999 for truth, scores in rows)
    # the threshold holds the target FPR on the never-indexed case unless that would reject more than 1 - min_tpr
    # (1%) of the indexed generators' own candidates
    floor = engine.config.scoring.min_tpr
    assert floor == 0.99
    never = [max(s for g, s in scores.items() if g != t) for t, scores in rows]
    known = [max(scores.values()) for _, scores in rows]
    assert cal.fpr == pytest.approx(sum(v >= cal.threshold for v in never) / len(never))
    assert cal.tpr == pytest.approx(sum(v >= cal.threshold for v in known) / len(known)) and cal.tpr >= floor
    assert cal.fpr <= 0.05 or cal.tpr <= floor + 1 / len(known)


def test_results_say_what_decided_and_the_margin(index):
    idx, samples = index
    with Attributor(CONFIG, index=idx, device="cpu", readonly=True) as engine:
        results = engine.attribute([samples], resynthesize=False)
    for r in results:
        assert r.decided_by in ("resynthesis", "open_set")
        assert r.margin == pytest.approx(list(r.scores.values())[0] - list(r.scores.values())[1])
        assert set(r.open_set) == {"statistic", "threshold", "tpr", "fpr", "applied"} and r.open_set["applied"]
        assert (r.prediction == "unknown") == (r.open_set["statistic"] < r.open_set["threshold"])
        line = r.to_dict()
        assert line["decided_by"] == r.decided_by and "margin" in line and "open_set" in line


def test_explicit_threshold_wins_and_open_set_can_be_turned_off(index):
    idx, samples = index
    strict = {**CONFIG, "scoring": {"unknown_threshold": 2.0}}  # cosines never reach 2
    with Attributor(strict, index=idx, device="cpu", readonly=True) as engine:
        results = engine.attribute([samples], resynthesize=False)
    assert all(r.prediction == "unknown" and r.decided_by == "open_set" and r.open_set is None for r in results)
    off = {"generators": GENERATORS, "scoring": {"open_set": False}}  # calibrated and reported, never deciding
    with Attributor({"generators": GENERATORS}, index=idx, device="cpu", readonly=True) as engine:
        assert engine.config.scoring.open_set  # on by default
    with Attributor(off, index=idx, device="cpu", readonly=True) as engine:
        results = engine.attribute([samples], resynthesize=False)
        assert engine.open_set_calibration().threshold is not None
    assert all(r.prediction != "unknown" and r.decided_by == "resynthesis" for r in results)
    assert all(r.open_set["applied"] is False for r in results)


def test_the_open_set_reads_prototypes_shrunk_per_embedding_block(index):
    idx, _ = index
    with Attributor(CONFIG, index=idx, device="cpu", readonly=True) as engine:
        dims = {st["dim"] for st in engine.cache.namespaces().values()}
        # the semantic features, the texture statistics, the residual spectra, then the thumbnail, worked out from
        # the config alone
        blocks = (80, 24 + 24 * 25 // 2, 3 * 32 * 17, 3 * 32 * 32)
        assert engine.embedding_blocks() == blocks and dims == {sum(blocks)}
        attribution, open_set = engine.prototypes(), engine.open_set_prototypes()
        assert attribution.counts == open_set.counts and not np.allclose(attribution.whiten, open_set.whiten)
        # both fit every block but the thumbnail, which only a fine-tune family's second stage reads
        assert attribution.columns == open_set.columns == (0, sum(blocks[:-1]))


def test_a_small_cache_is_not_calibrated_and_says_why(tmp_path):
    with Attributor(CONFIG, index=tmp_path, device="cpu") as engine:
        engine.build(PROMPTS[:2], progress=False)
        cal = calibrate_open_set(engine.cache, engine.namespaces, engine.config.scoring)
    assert cal.threshold is None and "build more prompts" in cal.note


def test_info_reports_the_calibration(index, tmp_path):
    idx, _ = index
    cfg = tmp_path / "c.toml"
    cfg.write_text("".join(f'[[generators]]\nname = "{g["name"]}"\nsource = "{g["source"]}"\n' for g in GENERATORS))
    out = CliRunner().invoke(main, ["info", "--index", str(idx), "--config", str(cfg), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["open_set"]["threshold"] is not None and data["open_set"]["tpr"] >= 0.9


def test_restricted_scoring_has_nothing_to_calibrate_and_still_answers(index):
    idx, samples = index
    restricted = {"generators": GENERATORS, "scoring": {"mode": "restricted", "prototype_weight": 0.0}}
    with Attributor(restricted, index=idx, device="cpu", readonly=True) as engine:
        assert "nothing to calibrate" in engine.open_set_calibration().note
        results = engine.attribute([samples], resynthesize=False)
    assert all(r.ok and r.open_set is None for r in results)


def test_degraded_copies_are_cached_beside_the_candidates_and_fitted_into_the_prototypes(index):
    idx, _ = index
    with Attributor(CONFIG, index=idx, device="cpu", readonly=True) as engine:
        ns, copies = engine.namespaces, engine.config.resynthesis.copies
        degraded = degraded_namespaces(engine.config.resynthesis, ns)
        stats = engine.cache.namespaces()
        clean = sum(stats[ns[g]]["vectors"] for g in ns)
        assert all(stats[degraded[g]]["vectors"] == copies * stats[ns[g]]["vectors"] for g in ns)
        assert engine.prototypes().vectors == (1 + copies) * clean
    # The copies feed only the prototypes: turning them off keeps the candidates' namespaces (and the cache).
    without = {**CONFIG, "resynthesis": {"degraded_copies": 0, "colour_copies": 0}}
    with Attributor(without, index=idx, device="cpu", readonly=True) as engine:
        assert engine.namespaces == ns and degraded_namespaces(engine.config.resynthesis, ns) == {}
        assert engine.prototypes().vectors == clean


def test_a_small_query_is_compared_at_the_generators_output_size(index):
    idx, samples = index
    image = Image.open(next(samples.glob("*.png"))).convert("RGB")
    assert image.size == (64, 64)
    small = image.resize((32, 32), Image.BICUBIC)
    with Attributor(CONFIG, index=idx, device="cpu", readonly=True) as engine:
        assert engine.query_size() == (64, 64)
        enlarged = small.resize((64, 64), Image.BICUBIC)
        as_small, as_enlarged = (engine.attribute(im, resynthesize=False)[0] for im in (small, enlarged))
    assert as_small.scores == pytest.approx(as_enlarged.scores, abs=1e-6)
    without = {**CONFIG, "resynthesis": {"degraded_copies": 0}}
    with Attributor(without, index=idx, device="cpu", readonly=True) as engine:
        assert engine.query_size() is None
        unscaled = engine.attribute(small, resynthesize=False)[0]
    assert unscaled.scores != pytest.approx(as_small.scores, abs=1e-3)


def test_a_query_larger_than_any_output_is_reduced_to_it(index):
    # Instagram widens images narrower than 320 px: such a query was enlarged after it was made
    idx, samples = index
    image = Image.open(next(samples.glob("*.png"))).convert("RGB")
    widened = image.resize((320, 320), Image.LANCZOS)
    with Attributor(CONFIG, index=idx, device="cpu", readonly=True) as engine:
        assert engine.query_max_size() == (64, 64)
        reduced = widened.resize((64, 64), Image.BICUBIC)
        as_widened, as_reduced, original = (engine.attribute(im, resynthesize=False)[0]
                                            for im in (widened, reduced, image))
    assert as_widened.scores == pytest.approx(as_reduced.scores, abs=1e-6)
    assert as_widened.prediction == original.prediction != "unknown"
    without = {**CONFIG, "resynthesis": {"degraded_copies": 0}}
    with Attributor(without, index=idx, device="cpu", readonly=True) as engine:
        assert engine.query_max_size() is None
        unscaled = engine.attribute(widened, resynthesize=False)[0]
    assert unscaled.scores != pytest.approx(as_widened.scores, abs=1e-3)


def test_the_open_set_statistic_weighs_the_prototypes_at_its_own_weight(index):
    """Attribution may lean on the prototypes more than the unknown decision does: the statistic and the
    calibration follow ``open_set_prototype_weight`` alone, the scores ``prototype_weight`` alone."""
    idx, samples = index
    found = {}
    for weights in ((0.8, 0.5), (0.5, 0.5), (0.8, 0.8)):
        config = {**CONFIG, "scoring": {**CONFIG["scoring"], "prototype_weight": weights[0],
                                        "open_set_prototype_weight": weights[1]}}
        with Attributor(config, index=idx, device="cpu", readonly=True) as engine:
            threshold = engine.open_set_calibration().threshold
            results = engine.attribute([samples], resynthesize=False)
        found[weights] = threshold, [r.open_set["statistic"] for r in results], [r.scores for r in results]
    assert found[(0.8, 0.5)][:2] == found[(0.5, 0.5)][:2]
    assert found[(0.8, 0.5)][2] != found[(0.5, 0.5)][2] and found[(0.8, 0.5)][2] == found[(0.8, 0.8)][2]
    assert found[(0.8, 0.5)][1] != found[(0.8, 0.8)][1]
    # Without prototypes the statistic is the top score. With them it reads the open set's own prototypes
    # (shrunk per embedding block), so even at one weight for both it is not.
    none = {**CONFIG, "scoring": {**CONFIG["scoring"], "prototype_weight": 0.0}}
    with Attributor(none, index=idx, device="cpu", readonly=True) as engine:
        results = engine.attribute([samples], resynthesize=False)
    assert [r.open_set["statistic"] for r in results] == [pytest.approx(max(r.scores.values()), abs=1e-6)
                                                          for r in results]
    _, statistics, scores = found[(0.8, 0.8)]
    assert all(abs(st - max(s.values())) > 1e-5 for st, s in zip(statistics, scores))

