"""rindex eval: metrics against hand-computed cases, the 17 transforms, and a tiny benchmark end to end."""

import json
import os
import re
import shutil
import subprocess
import sys
from itertools import product

import numpy as np
import pytest
from PIL import Image

from resynth_index.errors import ConfigError
from resynth_index.evaluation.baselines import BASELINES, canonical_baselines, regeneration_config, resynthesis_config
from resynth_index.evaluation.metrics import (
    accuracy,
    binary_auroc,
    condition_metrics,
    confusion_matrix,
    macro_roc_auc,
    open_set_metrics,
    per_class_accuracy,
    rate_interval,
    topk_accuracy,
    tpr_at_fpr,
)
from resynth_index.store.keys import normalize_prompt
from resynth_index.evaluation.transforms import TRANSFORMS, parse_transforms

# ------------------------------------------------------------------------------------------ metrics by hand
# Four known queries (truth a, a, b, b) and two from a held-out generator (truth z).
RECORDS = [
    {"truth": "a", "prediction": "a", "scores": {"a": 0.9, "b": 0.1}},
    {"truth": "a", "prediction": "b", "scores": {"a": 0.4, "b": 0.6}},
    {"truth": "b", "prediction": "b", "scores": {"a": 0.2, "b": 0.8}},
    {"truth": "b", "prediction": "unknown", "scores": {"a": 0.5, "b": 0.45}},  # e.g. rejected by a margin
    {"truth": "z", "prediction": "a", "scores": {"a": 0.7, "b": 0.2}},
    {"truth": "z", "prediction": "b", "scores": {"a": 0.1, "b": 0.3}},
]
KNOWN = RECORDS[:4]


def test_topk_accuracy_confusion_and_per_class_by_hand():
    truths = [r["truth"] for r in KNOWN]
    preds = [r["prediction"] for r in KNOWN]
    scores = [r["scores"] for r in KNOWN]
    assert accuracy(truths, preds) == 0.5
    assert topk_accuracy(truths, scores, 1) == 0.5  # q4 ranks a above its true b
    assert topk_accuracy(truths, scores, 2) == 1.0
    assert per_class_accuracy(truths, preds, ["a", "b"]) == {"a": 0.5, "b": 0.5}
    cm = confusion_matrix(truths, preds, ["a", "b"])
    assert cm["columns"] == ["a", "b", "unknown"]
    assert cm["matrix"] == [[1, 1, 0], [0, 1, 1]]


def test_macro_roc_auc_by_hand():
    # class a: positives 0.9, 0.4 vs negatives 0.2, 0.5 -> 3 of 4 pairs ordered = 0.75; class b likewise 0.75
    truths = [r["truth"] for r in KNOWN]
    assert macro_roc_auc(truths, [r["scores"] for r in KNOWN], ["a", "b"]) == pytest.approx(0.75)
    assert binary_auroc([1.0], [1.0]) == 0.5  # a tie counts half
    assert binary_auroc([1.0], []) is None


def test_open_set_auroc_and_tpr_at_fpr_by_hand():
    known = [0.9, 0.6, 0.8, 0.5]  # top scores of the known queries
    unknown = [0.7, 0.3]  # of the held-out ones
    m = open_set_metrics(known, unknown)
    assert m["auroc"] == pytest.approx(6 / 8)  # pairs (known > unknown): 2 + 1 + 2 + 1
    assert m["tpr_at_5fpr"] == pytest.approx(0.5)  # no held-out accepted: threshold above 0.7 keeps 0.9, 0.8
    assert m["threshold_at_5fpr"] == pytest.approx(0.8)  # the lowest cut-off that still rejects 0.7
    assert tpr_at_fpr(known, unknown, 0.5) == pytest.approx(1.0)  # one held-out accepted: all known above 0.3
    assert (m["n_known"], m["n_unknown"]) == (4, 2)


def test_intervals_of_a_rate_and_of_an_auroc():
    # Wilson by hand for 114 of 120: centre (p + z^2/2n) / (1 + z^2/n), half-width
    # z sqrt(p(1 - p)/n + z^2/4n^2) / (1 + z^2/n) with p = 0.95, z = 1.96
    z, n, p = 1.959964, 120, 0.95
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert rate_interval(114, 120) == pytest.approx([centre - half, centre + half], abs=1e-6)
    assert rate_interval(0, 72)[0] == 0.0 and rate_interval(0, 0) is None
    # the bootstrap interval holds the AUROC, narrows with more queries, is reproducible, and is a point when
    # the classes are apart
    rng = np.random.default_rng(0)
    known, unknown = rng.normal(1, 1, 120), rng.normal(-1, 1, 24)
    m = open_set_metrics(known, unknown)
    lo, hi = m["auroc_interval"]
    assert lo < m["auroc"] < hi and hi - lo > 0.02
    assert open_set_metrics(known, unknown)["auroc_interval"] == [lo, hi]
    more = open_set_metrics(rng.normal(1, 1, 1200), rng.normal(-1, 1, 240))["auroc_interval"]
    assert more[1] - more[0] < (hi - lo) / 2
    assert open_set_metrics([2.0, 3.0, 4.0], [0.0, 1.0])["auroc_interval"] == [1.0, 1.0]
    assert open_set_metrics([2.0], [0.0])["auroc_interval"] is None


def test_condition_metrics_combines_them():
    m = condition_metrics(RECORDS, ["a", "b"])
    assert (m["n"], m["n_known"], m["errors"]) == (6, 4, 0)
    assert m["top1"] == 0.5 and m["top3"] == 1.0
    assert m["open_set"]["auroc"] == pytest.approx(0.75)
    assert m["macro_roc_auc"] == pytest.approx(0.75)
    with_errors = condition_metrics(RECORDS + [{"truth": "a", "error": "broken"}], ["a", "b"])
    assert with_errors["errors"] == 1 and with_errors["top1"] == 0.5


def test_open_set_figures_read_the_engines_statistic_when_every_query_has_one():
    # the statistic orders the queries differently from the top score: every known above every held-out one
    statistics = [0.9, 0.7, 0.8, 0.6, 0.5, 0.2]
    with_statistic = [{**r, "open_set_statistic": s} for r, s in zip(RECORDS, statistics)]
    m = condition_metrics(with_statistic, ["a", "b"])["open_set"]
    assert m["confidence"] == "open-set statistic" and m["auroc"] == 1.0 and m["tpr_at_5fpr"] == 1.0
    assert m["top_score"]["confidence"] == "top score" and m["top_score"]["auroc"] == pytest.approx(0.75)
    # one query without a statistic (no calibration applied to it): the top score, for every query
    partial = condition_metrics(with_statistic[:-1] + RECORDS[-1:], ["a", "b"])["open_set"]
    assert partial["confidence"] == "top score" and partial["auroc"] == pytest.approx(0.75) and "top_score" not in partial


# ------------------------------------------------------------------------------------------ transforms
def _image(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def test_seventeen_transforms_deterministic_rgb_and_parameterised():
    assert len(TRANSFORMS) == 17
    im = _image()
    for t in parse_transforms("all"):
        a, b = t(im, seed=3), t(im, seed=3)
        assert a.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b)), t.label
        if t.name not in ("resize", "crop", "instagram"):
            assert a.size == im.size, t.label
        assert not np.array_equal(np.asarray(a.resize(im.size)), np.asarray(im)), f"{t.label} changed nothing"
    noisy = parse_transforms("white_noise:sigma=0.1")[0]
    assert not np.array_equal(np.asarray(noisy(im, seed=1)), np.asarray(noisy(im, seed=2)))
    assert parse_transforms("resize:factor=0.4")[0](im).size == (26, 26)
    assert parse_transforms("crop:fraction=0.5")[0](im).size == (32, 32)
    labels = [t.label for t in parse_transforms("jpeg:quality=50,print_scan:noise=0.05,gamma=1.2,greyscale")]
    assert labels[0] == "jpeg(quality=50)" and "noise=0.05" in labels[1] and "gamma=1.2" in labels[1]
    assert labels[2] == "greyscale()"
    assert parse_transforms("none") == []


@pytest.mark.parametrize("spec", ["nope", "jpeg:q=5", "jpeg:quality=high", "quality=5"])
def test_bad_transform_specs_are_named(spec):
    with pytest.raises(ConfigError):
        parse_transforms(spec)


# ------------------------------------------------------------------------------------------ end to end
TINY_CONFIG = """
[[generators]]
name = "tiny-pixart"
source = "zoo:tiny-pixart"
steps = 2

[[generators]]
name = "tiny-sd-wide"
source = "zoo:tiny-sd-wide"
steps = 2

[[generators]]
name = "tiny-sd"
source = "zoo:tiny-sd"
steps = 2
"""
KNOWN_GENERATORS = ["tiny-pixart", "tiny-sd-wide"]  # "auto" holds out the last of three


def rindex(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # 1 thread: fast on a shared CPU
    return subprocess.run([sys.executable, "-m", "resynth_index.cli", *args], capture_output=True, text=True,
                          env=env, **kw)


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    (root / "tiny.toml").write_text(TINY_CONFIG)
    out = root / "report"
    run = rindex("eval", "--suite", "zoo", "--config", str(root / "tiny.toml"), "--out", str(out), "--per-generator", "2",
                 "--transforms", "jpeg:quality=50,greyscale", "--gammas", "1,2", "--build-limit", "2",
                 "--shots", "1,2", "--device", "cpu", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, run, json.loads((out / "report.json").read_text())


def test_eval_writes_the_report(tiny_eval):
    out, run, report = tiny_eval
    for name in ("report.json", "report.md", "index.html", "benchmark/manifest.csv", "plots/confusion.png",
                 "plots/accuracy_per_transform.png", "plots/accuracy_time_vs_gamma.png", "plots/accuracy_vs_shots.png"):
        assert (out / name).is_file(), name
    assert report["benchmark"]["queries"] == 6
    assert report["benchmark"]["indexed"] == KNOWN_GENERATORS and report["benchmark"]["held_out"] == ["tiny-sd"]
    assert report["conditions"] == ["clean", "jpeg(quality=50)", "greyscale()"]
    assert set(report["variants"]) == {"ours", "regeneration", "resynthesis", "fewshot-1", "fewshot-2"}
    assert [g["gamma"] for g in report["gamma_sweep"]] == [1, 2]
    # the sweep carries the open-set figures (and, on the hard benchmark, the sibling confusion) of each γ
    g1, g2 = report["gamma_sweep"]
    assert g1["open_set_auroc"] == report["variants"]["ours"]["conditions"]["clean"]["open_set"]["auroc"]
    assert 0.0 <= g2["open_set_auroc"] <= 1.0 and g2["sibling_confusion"] is None  # the zoo has no siblings
    assert report["variants"]["regeneration"]["config"]["aggregate"] == "mean"
    assert report["variants"]["resynthesis"]["config"]["distance"] == "euclidean"
    md = (out / "report.md").read_text()
    assert "| clean |" in md and "resynthesis, Bongini et al." in md and "1-shot NN" in md
    assert "| γ | top-1 | top-3 | sibling confusion | open-set AUROC |" in md
    rt = report["retrieval"]
    methods = {r["method"] for r in rt["rows"]}
    assert {"gallery: spectrum", "gallery: bit planes (LIDA)", "resynthesis (ours)"} <= methods
    assert any(m.startswith("fused") for m in methods) and any(m.startswith("gallery: embedder") for m in methods)
    assert {r["shots"] for r in rt["rows"]} == {1, 2} and len(rt["rows"]) == 5 * 2
    for r in rt["rows"]:
        assert 0 <= r["rank1"] <= 1 and 0 < r["map"] <= 1 and r["map"] >= r["rank1"] - 1e-9
    # two known generators: a ranking's AP is 1 when right, 1/2 when wrong, so mAP = (1 + Rank-1) / 2
    for r in rt["rows"]:
        if r["method"].startswith(("resynthesis", "fused")):
            assert r["map"] == pytest.approx((1 + r["rank1"]) / 2)
    assert [o["shots"] for o in rt["open_set"]] == [1, 2] and rt["open_set"][1]["held_out_unknown"] is not None
    assert "Retrieval (LIDA, Wang et al.)" in md and "bit planes (LIDA)" in md
    assert "| clean |" in run.stdout  # the accuracy table also goes to stdout
    html = (out / "index.html").read_text()
    assert html.count("class='q'") == 6 and "data:image/png;base64," in html
    assert not re.findall(r"(?:src|href)=['\"](?!data:)", html)  # every image is embedded: nothing to fetch
    for png in (out / "plots").iterdir():
        with Image.open(png) as im:
            assert im.size[0] > 100


def _pairs_auroc(pos, neg):
    return sum((p > n) + 0.5 * (p == n) for p, n in product(pos, neg)) / (len(pos) * len(neg))


def test_eval_numbers_match_a_hand_computation_from_the_records(tiny_eval):
    _, _, report = tiny_eval
    for name, variant in report["variants"].items():
        gamma = variant["config"].get("gamma", 1)
        for cond, m in variant["conditions"].items():
            recs = m["records"]
            assert len(recs) == 6 and not any(r.get("error") for r in recs)
            known = [r for r in recs if r["truth"] in KNOWN_GENERATORS]
            unknown = [r for r in recs if r["truth"] not in KNOWN_GENERATORS]
            assert len(known) == 4 and len(unknown) == 2
            assert m["top1"] == pytest.approx(sum(r["prediction"] == r["truth"] for r in known) / 4)
            assert m["top3"] == 1.0  # two known generators: the truth is always in the top 3
            rows = m["confusion"]["matrix"]
            for i, g in enumerate(KNOWN_GENERATORS):
                assert rows[i][i] == sum(r["truth"] == g and r["prediction"] == g for r in known)
                assert sum(rows[i]) == 2
            top = lambda r: max(r["scores"].values())  # noqa: E731
            assert m["open_set"]["auroc"] == pytest.approx(_pairs_auroc([top(r) for r in known], [top(r) for r in unknown]))
            # with 2 held-out queries, 5% FPR accepts none of them: TPR = known scoring above both
            assert m["open_set"]["tpr_at_5fpr"] == pytest.approx(sum(top(r) > max(top(u) for u in unknown) for r in known) / 4)
            if "cache" in m:  # engine variants: generations = distinct missed prompts x generators x gamma
                misses = {normalize_prompt(r["prompt"]) for r in recs if r["cache"] == "miss"}
                assert m["generations_per_query"] == pytest.approx(len(misses) * 2 * gamma / 6), (name, cond)
                assert m["cache"]["hit_rate"] == pytest.approx(sum(r["cache"] != "miss" for r in recs) / 6)
            else:
                assert m["generations_per_query"] == 0


def test_eval_usage_errors_exit_2(tmp_path):
    bad = rindex("eval", "--out", str(tmp_path / "o"), "--transforms", "nope")
    assert bad.returncode == 2 and "unknown transform 'nope'" in bad.stderr
    bad = rindex("eval", "--out", str(tmp_path / "o"), "--held-out", "no-such-generator")
    assert bad.returncode == 2 and "no-such-generator" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "o" / "hard-benchmark").exists()  # options are checked before anything is built
    # only the unknown baseline is named
    bad = rindex("eval", "--out", str(tmp_path / "o"), "--baselines", "regeneration,resynthesis,fewshot,bogus")
    assert bad.returncode == 2 and "unknown baseline(s) bogus;" in bad.stderr and "Traceback" not in bad.stderr


def test_baseline_names_are_checked_and_each_runs_once():
    assert canonical_baselines(["regeneration", "resynthesis", "fewshot"]) == BASELINES
    assert canonical_baselines(["resynthesis", "resynthesis"]) == ("resynthesis",)
    with pytest.raises(ConfigError, match="nonsense"):
        canonical_baselines(["nonsense"])


def test_the_paper_configurations_embed_with_the_network_alone():
    from resynth_index.config import load_config
    from resynth_index.models.embedders import embedder_from_config

    for paper in (regeneration_config(load_config(None)), resynthesis_config(load_config(None))):
        # the final layer, without the default's texture statistics, spectrum and thumbnail
        assert embedder_from_config(paper.embedder, "cpu").id == "efficientnet-lite0:imagenet:pool"


# ------------------------------------------------------------------------------------------ headless Chromium
def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_page_renders_in_headless_chromium(tiny_eval, tmp_path):
    out, _, _ = tiny_eval
    shot = tmp_path / "page.png"
    run = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1200,1400", (out / "index.html").resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.is_file(), run.stderr[-2000:]
    with Image.open(shot) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert arr.shape[:2] == (1400, 1200)
    assert arr.std() > 10  # not blank: tables, plots and images drew
    assert (arr.reshape(-1, 3).std(axis=1) > 30).mean() > 0.01  # coloured pixels: plots and generated images
