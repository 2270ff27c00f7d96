import math

import numpy as np
import pytest

from resynth_index.config import ScoringConfig
from resynth_index.attribution.scoring import UNKNOWN, aggregate, combine, decide, evidence_scores, to_scores

SIMS = {"a": np.array([0.9, 0.1, 0.2]), "b": np.array([0.6, 0.5, 0.55])}


def test_max_and_mean_by_hand():
    assert aggregate(SIMS, ScoringConfig(aggregate="max")) == pytest.approx({"a": 0.9, "b": 0.6})
    assert aggregate(SIMS, ScoringConfig(aggregate="mean")) == pytest.approx({"a": 0.4, "b": 0.55})


def test_softmax_is_between_mean_and_max_and_tends_to_max():
    soft = aggregate(SIMS, ScoringConfig(aggregate="softmax", temperature=0.05))
    for g, s in SIMS.items():
        assert s.mean() < soft[g] <= s.max()
    sharp = aggregate(SIMS, ScoringConfig(aggregate="softmax", temperature=1e-4))
    assert sharp["a"] == pytest.approx(0.9, abs=1e-4)
    # By hand for b at T=0.05: weights exp((s-0.6)/0.05) = [1, e^-2, e^-1].
    w = np.array([1.0, math.exp(-2), math.exp(-1)])
    assert soft["b"] == pytest.approx(float((w * SIMS["b"]).sum() / w.sum()), rel=1e-5)


def test_knn_vote_counts_pooled_neighbours():
    # Top-3 pooled: a 0.9, b 0.6, b 0.55 -> b has 2/3 of the votes although a holds the single best.
    votes = aggregate(SIMS, ScoringConfig(aggregate="knn", knn_k=3))
    assert votes["b"] == pytest.approx(2 / 3, abs=2e-3)
    assert votes["a"] == pytest.approx(1 / 3, abs=2e-3)
    assert decide(votes, ScoringConfig()).prediction == "b"


def test_euclidean_is_negative_distance_and_keeps_order():
    e = to_scores(np.array([1.0, 0.5, 0.0]), "euclidean")
    assert e == pytest.approx([0.0, -1.0, -math.sqrt(2)], abs=1e-6)
    agg = aggregate(SIMS, ScoringConfig(aggregate="max", distance="euclidean"))
    assert agg["a"] > agg["b"]


def test_combine_modes():
    r, u = {"a": 0.8, "b": 0.4}, {"a": 0.2, "b": 0.6, "c": 0.9}
    assert combine(r, u, ScoringConfig(mode="restricted")) == r
    assert combine(r, u, ScoringConfig(mode="unrestricted")) == u
    both = combine(r, u, ScoringConfig(mode="both", unrestricted_weight=0.25))
    assert both == pytest.approx({"a": 0.65, "b": 0.45, "c": 0.9})


def test_decide_threshold_and_margin():
    scores = {"a": 0.7, "b": 0.65}
    assert decide(scores, ScoringConfig()).prediction == "a"
    assert decide(scores, ScoringConfig(unknown_threshold=0.8)).prediction == UNKNOWN
    d = decide(scores, ScoringConfig(unknown_margin=0.1))
    assert d.prediction == UNKNOWN and d.margin == pytest.approx(0.05)
    assert decide({}, ScoringConfig()).prediction == UNKNOWN


def test_siblings_are_ranked_by_their_prototypes_alone():
    cfg = ScoringConfig()  # both modes, prototypes at 0.8
    # the fine-tune's candidates happen to sit closer to the query, the prototypes favour the base
    restricted = {"base": np.array([0.50]), "fine-tune": np.array([0.53]), "other": np.array([0.40])}
    unrestricted = {"base": np.array([0.50]), "fine-tune": np.array([0.53]), "other": np.array([0.45])}
    prototype = {"base": 0.300, "fine-tune": 0.295, "other": 0.10}
    plain = evidence_scores(restricted, unrestricted, prototype, cfg)
    assert max(plain, key=plain.get) == "fine-tune"
    family = frozenset({"base", "fine-tune"})
    grouped = evidence_scores(restricted, unrestricted, prototype, cfg, siblings={"base": family, "fine-tune": family})
    assert max(grouped, key=grouped.get) == "base"
    assert grouped["base"] - grouped["fine-tune"] == pytest.approx(cfg.prototype_weight * 0.005)
    assert grouped["other"] == pytest.approx(plain["other"])  # a generator outside the group keeps its evidence
    # the open set's scores and a cache without prototypes are left as they were
    assert evidence_scores(restricted, unrestricted, prototype, cfg, open_set=True,
                           siblings={"base": family, "fine-tune": family}) == evidence_scores(
        restricted, unrestricted, prototype, cfg, open_set=True)
    assert evidence_scores(restricted, unrestricted, None, cfg, siblings={"base": family, "fine-tune": family}) == \
        evidence_scores(restricted, unrestricted, None, cfg)
