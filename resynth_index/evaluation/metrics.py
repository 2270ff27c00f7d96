"""The metrics of ``rindex eval``: plain functions of (truth, prediction, scores) lists.

Kept free of models and I/O so that every number in the report can be checked against a hand-computed case
(``tests/evaluation``). Closed-set metrics use only queries whose true generator is indexed; the open-set
metrics score known queries against held-out ones by their top score.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..attribution.scoring import UNKNOWN


def ranked(scores: Mapping[str, float]) -> list[str]:
    """Generators by decreasing score (ties: by name, for determinism)."""
    return [g for g, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]


def topk_accuracy(truths: Sequence[str], scores: Sequence[Mapping[str, float]], k: int) -> float | None:
    """Fraction of queries whose true generator is among the ``k`` best-scored ones."""
    if not truths:
        return None
    return sum(t in ranked(s)[:k] for t, s in zip(truths, scores)) / len(truths)


def accuracy(truths: Sequence[str], predictions: Sequence[str]) -> float | None:
    """Fraction of predictions equal to the truth (an ``unknown`` prediction is wrong for a known query)."""
    if not truths:
        return None
    return sum(t == p for t, p in zip(truths, predictions)) / len(truths)


def per_class_accuracy(truths: Sequence[str], predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float | None]:
    out = {}
    for g in labels:
        idx = [i for i, t in enumerate(truths) if t == g]
        out[g] = sum(predictions[i] == g for i in idx) / len(idx) if idx else None
    return out


def confusion_matrix(truths: Sequence[str], predictions: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Rows = true generator (``labels``), columns = predicted (``labels`` + ``unknown`` for anything else)."""
    columns = list(labels) + [UNKNOWN]
    matrix = np.zeros((len(labels), len(columns)), dtype=int)
    for t, p in zip(truths, predictions):
        if t in labels:
            matrix[labels.index(t), columns.index(p) if p in labels else len(labels)] += 1
    return {"rows": list(labels), "columns": columns, "matrix": matrix.tolist()}


def binary_auroc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """ROC-AUC of scores where ``positive`` should score higher (ties count half); None without both classes."""
    if not len(positive) or not len(negative):
        return None
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    return float(roc_auc_score(y, np.r_[np.asarray(positive, float), np.asarray(negative, float)]))


def rate_interval(successes: int, n: int) -> list[float] | None:
    """The 95% Wilson score interval of a rate of ``successes`` in ``n`` (None for n = 0): with 120 queries one
    query is 0.8 points, so a figure near a target is read with its interval."""
    if n <= 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def auroc_interval(positive: Sequence[float], negative: Sequence[float], resamples: int = 2000) -> list[float] | None:
    """A 95% percentile-bootstrap interval of :func:`binary_auroc`, resampling each class apart (fixed seed, so a
    report is reproducible); None without two of each class."""
    if len(positive) < 2 or len(negative) < 2:
        return None
    from scipy.stats import bootstrap

    def auroc(pos, neg, axis=-1):  # Mann-Whitney: the share of (positive, negative) pairs ordered right, ties half
        pos, neg = np.moveaxis(pos, axis, -1)[..., :, None], np.moveaxis(neg, axis, -1)[..., None, :]
        return (pos > neg).mean(axis=(-2, -1)) + 0.5 * (pos == neg).mean(axis=(-2, -1))

    res = bootstrap((np.asarray(positive, float), np.asarray(negative, float)), auroc, n_resamples=resamples,
                    vectorized=True, paired=False, method="percentile", random_state=np.random.default_rng(0))
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def macro_roc_auc(truths: Sequence[str], scores: Sequence[Mapping[str, float]], labels: Sequence[str]) -> float | None:
    """Mean over ``labels`` of the one-vs-rest ROC-AUC of that generator's score (classes lacking positives or
    negatives are skipped). A query without a score for a generator counts as -inf for it."""
    aucs = []
    for g in labels:
        s = [float(sc.get(g, -np.inf)) for sc in scores]
        s = np.nan_to_num(np.asarray(s, float), neginf=-1e30)
        pos = [v for v, t in zip(s, truths) if t == g]
        neg = [v for v, t in zip(s, truths) if t != g]
        a = binary_auroc(pos, neg)
        if a is not None:
            aucs.append(a)
    return float(np.mean(aucs)) if aucs else None


def _operating_point(positive, negative, max_fpr: float) -> tuple[float, float] | None:
    """(best TPR, its threshold) over thresholds whose false-positive rate is at most ``max_fpr``
    (accept = score >= threshold); None without both classes."""
    if not len(positive) or not len(negative):
        return None
    from sklearn.metrics import roc_curve

    y = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    fpr, tpr, thr = roc_curve(y, np.r_[np.asarray(positive, float), np.asarray(negative, float)], drop_intermediate=False)
    ok = np.flatnonzero(fpr <= max_fpr + 1e-12)  # roc_curve always starts at fpr 0 (threshold +inf)
    best = ok[np.argmax(tpr[ok])]
    return float(tpr[best]), float(thr[best])


def tpr_at_fpr(positive: Sequence[float], negative: Sequence[float], max_fpr: float = 0.05) -> float | None:
    """The best true-positive rate over thresholds whose false-positive rate is at most ``max_fpr``
    (accept = score >= threshold)."""
    point = _operating_point(positive, negative, max_fpr)
    return None if point is None else point[0]


def open_set_metrics(known_conf: Sequence[float], unknown_conf: Sequence[float], max_fpr: float = 0.05,
                     confidence: str = "top score") -> dict[str, Any]:
    """Known (indexed) queries vs held-out ones, each scored by its ``confidence``. ``threshold_at_{N}fpr`` is
    the cut-off of that operating point (for the top score: a ``scoring.unknown_threshold`` saying "unknown"
    there)."""
    point = _operating_point(known_conf, unknown_conf, max_fpr)
    pct = round(max_fpr * 100)
    return {
        "auroc": binary_auroc(known_conf, unknown_conf),
        "auroc_interval": auroc_interval(known_conf, unknown_conf),
        f"tpr_at_{pct}fpr": None if point is None else point[0],
        f"threshold_at_{pct}fpr": None if point is None else point[1],
        "n_known": len(known_conf),
        "n_unknown": len(unknown_conf),
        "confidence": confidence,
    }


def open_set_figures(known: Sequence[Mapping[str, Any]], unknown: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Open-set metrics on what the engine decides ``unknown`` by: each record's ``open_set_statistic`` when
    every record has one (the calibrated rule; the top score alone is kept beside it as ``top_score``), else
    the top score."""
    top = lambda rs: [max(r["scores"].values()) if r["scores"] else -1e30 for r in rs]  # noqa: E731
    by_top = open_set_metrics(top(known), top(unknown))
    if not known or not unknown or not all("open_set_statistic" in r for r in [*known, *unknown]):
        return by_top
    stat = lambda rs: [r["open_set_statistic"] for r in rs]  # noqa: E731
    return {**open_set_metrics(stat(known), stat(unknown), confidence="open-set statistic"), "top_score": by_top}


def condition_metrics(records: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    """Every metric of one (variant, condition) from its per-query records.

    A record has ``truth``, ``prediction``, ``scores`` (generator -> score), and optionally ``cache``
    (hit|near|miss), ``error``. ``labels`` are the indexed (known) generators. Timings and generation counts are
    added by the caller.
    """
    ok = [r for r in records if not r.get("error")]
    known = [r for r in ok if r["truth"] in labels]
    unknown = [r for r in ok if r["truth"] not in labels]
    truths = [r["truth"] for r in known]
    preds = [r["prediction"] for r in known]
    scores = [r["scores"] for r in known]
    caches = [r.get("cache") for r in ok if r.get("cache")]
    out = {
        "n": len(records),
        "n_known": len(known),
        "errors": len(records) - len(ok),
        "top1": accuracy(truths, preds),
        "top3": topk_accuracy(truths, scores, 3),
        "per_generator": per_class_accuracy(truths, preds, labels),
        "confusion": confusion_matrix(truths, preds, list(labels)),
        "macro_roc_auc": macro_roc_auc(truths, scores, labels),
        "open_set": open_set_figures(known, unknown),
    }
    if caches:
        counts = {s: caches.count(s) for s in ("hit", "near", "miss")}
        out["cache"] = {**counts, "hit_rate": (counts["hit"] + counts["near"]) / len(caches)}
    return out


def retrieval_metrics(sims: np.ndarray, truths: Sequence[str], ref_labels: Sequence[str]) -> dict[str, float]:
    """The retrieval view of LIDA (Wang, Cheng, Han, Gui, "Attribution as Retrieval"): Rank-1 = the nearest
    reference's generator is right; mAP = the mean over queries of the average precision of the ranked
    references (relevant: the query's generator)."""
    from sklearn.metrics import average_precision_score

    ref_labels = np.asarray(ref_labels)
    rank1 = [ref_labels[int(np.argmax(row))] == t for row, t in zip(sims, truths)]
    aps = [average_precision_score(ref_labels == t, row) for row, t in zip(sims, truths)]
    return {"rank1": float(np.mean(rank1)), "map": float(np.mean(aps))}


def generator_ranking_metrics(scores: Sequence[Mapping[str, float]], truths: Sequence[str]) -> dict[str, float]:
    """Rank-1 and mAP of a per-generator score ranking (one relevant generator: AP = 1 / its rank)."""
    rank1, aps = [], []
    for s, t in zip(scores, truths):
        order = ranked(s)
        rank1.append(bool(order) and order[0] == t)
        aps.append(1.0 / (order.index(t) + 1) if t in order else 0.0)
    return {"rank1": float(np.mean(rank1)), "map": float(np.mean(aps))}


def with_costs(metrics: dict, records, seconds: float, generations: int, extra: Mapping[str, Any] | None = None) -> dict:
    """Add the per-query costs (seconds, generations) and the records themselves to one condition's metrics."""
    n = max(1, len(records))
    metrics["seconds_per_query"] = seconds / n
    metrics["generations_per_query"] = generations / n
    metrics.update(extra or {})
    metrics["records"] = records
    return metrics


def pct(v) -> str:
    """A rate as a percentage for progress lines; ``n/a`` for a metric that could not be computed."""
    return "n/a" if v is None else f"{100 * v:.1f}%"
