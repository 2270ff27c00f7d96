"""``rindex eval``: measure attribution accuracy the way the papers do, on a labelled held-out benchmark.

The flow (the stages live in sibling modules; this one runs them and gathers the results)::

    benchmark   N images per configured generator, held-out prompts and seeds (samples.build_benchmark),
                manifest.csv (file, generator, prompt, seed); some generators may be *held out* of the index
                to test open-set rejection
    conditions  clean + each of the 17 query transforms of the Resynthesis paper (Bongini et al.,
                transforms.py), applied to the queries only
    variants    ours (the config as given) and the baselines (baselines.py), each with its own index directory:
                  regeneration  Li, Qian, Zhang: γ regenerations, final-layer embedding, cosine, mean,
                                restricted to the prompt's candidates
                  resynthesis   Bongini et al.: one resynthesis, euclidean argmin (max of negative distance),
                                restricted
                  fewshot       k-shot nearest neighbour on the embedder, gallery = k reference images per generator
                ours is also run clean at every gamma of the gamma sweep (its own index per gamma)
    queries     one at a time per engine variant (a stream: later queries may hit what earlier ones wrote
                through); every model is loaded before timing starts; few-shot embeds a condition in one batch
    retrieval   the reference-gallery features alone (embedder, spectrum, LIDA's low bit planes), resynthesis
                alone, and both fused, by Rank-1 and mAP (run_retrieval)
    metrics     metrics.py: top-1/top-3, per-generator accuracy, confusion matrix, macro one-vs-rest ROC-AUC over
                the known generators, open-set AUROC and TPR at 5% FPR (known vs held-out, confidence = the
                engine's open-set statistic where it reports one, else the top score), generations per query,
                cache hit rate, seconds per query
    report      report.py: report.json, report.md, PNG plots, index.html

Example::

    from resynth_index.evaluation.benchmark import EvalOptions, run_evaluation
    result = run_evaluation(None, "eval-out", EvalOptions(per_generator=4, transforms="jpeg,blur"))
    print(result["variants"]["ours"]["conditions"]["clean"]["top1"])
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from ..config import Config, load_config
from ..errors import ConfigError
from .baselines import (
    BASELINES,
    canonical_baselines,
    gallery_images,
    regeneration_config,
    restrict_generators,
    resynthesis_config,
    run_fewshot,
    with_gamma,
)
from .metrics import condition_metrics, generator_ranking_metrics, pct, retrieval_metrics, with_costs
from .hard import HELD_OUT, PER_GENERATOR, build_hard_benchmark, hard_config, hard_metrics, read_query_flags
from .samples import build_benchmark, read_benchmark
from .transforms import Transform, parse_transforms

CLEAN = "clean"
#: the easy zoo benchmark's images per generator (it reads 100% anyway: more would only take longer)
ZOO_PER_GENERATOR = 24


@dataclass
class EvalOptions:
    """What ``rindex eval`` measures. The defaults run everything (the hard benchmark, all 17 transforms, the γ
    sweep and every baseline), which takes long on a CPU: fewer transforms and baselines make a quick run."""

    per_generator: int | None = None  # None: the suite's own (hard.PER_GENERATOR, ZOO_PER_GENERATOR)
    transforms: str | Sequence[Transform] | None = "all"
    gammas: Sequence[int] = (1, 2, 4)
    held_out: Sequence[str] | str | None = "auto"  # "auto": the last generator when 3 or more are configured
    build_limit: int = 0  # build-list prompts precomputed into every index that reads the whole index; 0 = build.limit
    shots: Sequence[int] = (1, 5, 10)
    baselines: Sequence[str] = BASELINES  # names from baselines.BASELINES (or their old aliases)
    regeneration_gamma: int = 4
    html: bool = True
    benchmark: str | Path | None = None  # an existing manifest.csv (its images beside it) instead of building
    suite: str = "hard"  # without a benchmark: "hard" (evaluation/hard.py, its own generators) or "zoo"
    progress: bool = True


def _log(opts: EvalOptions, msg: str) -> None:
    if opts.progress:
        print(f"[eval] {msg}", file=sys.stderr, flush=True)


def resolve_held_out(config: Config, held_out: Sequence[str] | str | None) -> list[str]:
    names = config.attribution_names
    if held_out in (None, "none", ""):
        return []
    if held_out == "auto":
        return [names[-1]] if len(names) >= 3 else []
    chosen = [h.strip() for h in (held_out.split(",") if isinstance(held_out, str) else held_out) if h.strip()]
    for h in chosen:
        if h not in names:
            raise ConfigError(f"held-out generator {h!r} is not configured (configured: {', '.join(names)})")
    if len(chosen) >= len(names):
        raise ConfigError("at least one generator must stay indexed")
    return chosen


def _warm(engine) -> None:
    """Load every model before anything is timed (load time is reported separately)."""
    engine.embedder.embed([Image.new("RGB", (64, 64))])
    engine.inverter
    engine.cache
    for g in engine.config.generators:
        engine.generator(g.name)


def _engine_records(engine, images: Sequence[Image.Image], truths: Sequence[str], files: Sequence[str]):
    """Attribute the queries one at a time, as a moderation stream would: each query sees the cache its
    predecessors wrote through, so hit rate and seconds per query are per-request figures."""
    generated_before = engine.images_generated
    t0 = time.perf_counter()
    results = [r for im in images for r in engine.attribute(im, resynthesize=True, top_k=1)]
    seconds = time.perf_counter() - t0
    records = []
    for r, truth, f in zip(results, truths, files):
        rec = {"file": f, "truth": truth, "prediction": r.prediction, "scores": dict(r.scores), "cache": r.cache,
               "prompt": r.prompt}
        if r.open_set:
            rec["open_set_statistic"] = r.open_set["statistic"]
        if r.error:
            rec["error"] = r.error
        records.append(rec)
    return records, results, seconds, engine.images_generated - generated_before


def _transformed(images: Sequence[Image.Image], t: Transform) -> list[Image.Image]:
    return [t(im, seed=i) for i, im in enumerate(images)]


def run_engine_variant(
    name: str,
    config: Config,
    index_dir: Path,
    conditions: Mapping[str, Sequence[Image.Image]],
    truths: Sequence[str],
    files: Sequence[str],
    *,
    device: str | None,
    build_prompts: Sequence[str],
    share_from=None,
    opts: EvalOptions,
    keep_results: bool = False,
    query_flags: Mapping[str, Mapping[str, Any]] | None = None,
):
    """Build (when the scoring reads the whole index) and query every condition with one engine variant.
    ``query_flags`` (the hard benchmark's per-query metadata and call flags) adds its figures per condition."""
    from ..attribution.engine import Attributor

    labels = config.attribution_names
    out: dict[str, Any] = {"config": _config_summary(config), "index": str(index_dir), "conditions": {}}
    engine = Attributor(config, index=index_dir, device=device)
    if share_from is not None:
        engine.share_models_from(share_from)
    kept = None
    try:
        t0 = time.perf_counter()
        _warm(engine)
        out["load_seconds"] = time.perf_counter() - t0
        build_seconds, build_images, built = 0.0, 0, 0
        if config.scoring.mode != "restricted" and build_prompts:
            _log(opts, f"{name}: building {len(build_prompts)} prompt(s) into {index_dir}")
            report = engine.build(build_prompts, progress=False)
            build_seconds, build_images, built = report.seconds, report.images, report.built
            if report.skipped:
                _log(opts, f"{name}: {report.skipped} of them were already cached")
        # prompts generated now: a reused index (--index) has no build time per prompt to report
        out["build"] = {"prompts": built, "seconds": build_seconds, "images": build_images}
        for cond, images in conditions.items():
            records, results, seconds, gens = _engine_records(engine, images, truths, files)
            out["conditions"][cond] = with_costs(condition_metrics(records, labels), records, seconds, gens)
            if query_flags:
                out["conditions"][cond]["hard"] = hard_metrics(records, query_flags)
            if keep_results and cond == CLEAN:
                kept = results
            m = out["conditions"][cond]
            _log(opts, f"{name} [{cond}]: top-1 {pct(m['top1'])}, {m['seconds_per_query']:.2f} s/query, "
                       f"{m['generations_per_query']:.2f} generations/query")
    finally:
        if not keep_results:
            engine.close()
    return (out, engine, kept) if keep_results else (out, engine, None)


def _config_summary(config: Config) -> dict[str, Any]:
    return {
        "generators": [g.name for g in config.generators],
        "gamma": config.resynthesis.gamma,
        "embedder": f"{config.embedder.kind}{'' if config.embedder.layer < 0 else f' layer {config.embedder.layer}'}",
        "mode": config.scoring.mode,
        "aggregate": config.scoring.aggregate,
        "distance": config.scoring.distance,
    }


def run_retrieval(engine, gallery: Mapping[str, Sequence[Image.Image]], images, truths, labels, shots_list,
                  ours_results, opts: EvalOptions) -> dict[str, Any]:
    """Rank-1 / mAP at each shot count for the reference gallery alone (embedder, spectrum and bit-plane
    features), for resynthesis alone, and fused: the engine itself with the first ``shots`` references of
    each indexed generator enrolled (clean queries; held-out generators are never enrolled)."""
    from ..models.fingerprints import fingerprint_from_config
    from ..gallery.references import real_set

    gc = engine.config.gallery
    known = [i for i, t in enumerate(truths) if t in labels]
    unseen = [i for i, t in enumerate(truths) if t not in labels]
    q_images, q_truths = [images[i] for i in known], [truths[i] for i in known]
    spectrum = fingerprint_from_config(gc, engine.device, kind="spectrum")
    bitplane = fingerprint_from_config(gc, engine.device, kind="bitplane")
    extractors = {  # method -> (feature id, function, centred on the real prototype like the engine's fingerprints)
        f"gallery: embedder ({engine.embedder.id})": (engine.embedder.id, engine.embedder.embed, False),
        "gallery: spectrum": (spectrum.id, spectrum.extract, True),
        "gallery: bit planes (LIDA)": (bitplane.id, bitplane.extract, True),
    }
    out: dict[str, Any] = {"shots": list(shots_list), "rows": [], "open_set": []}
    for method, (fid, fn, centred) in extractors.items():
        centre = real_set(engine.gallery, fid, fn)[1].mean(axis=0) if centred else 0.0
        unit = lambda v: (v - centre) / np.linalg.norm(v - centre, axis=1, keepdims=True)  # noqa: E731
        q = unit(np.asarray(fn(q_images), np.float32))
        refs = {g: unit(np.asarray(fn(list(gallery[g])), np.float32)) for g in labels}
        for s in shots_list:
            ref_vecs = np.concatenate([refs[g][:s] for g in labels])
            ref_labels = [g for g in labels for _ in range(min(s, len(refs[g])))]
            out["rows"].append({"method": method, "shots": s, **retrieval_metrics(q @ ref_vecs.T, q_truths, ref_labels)})
    resynth = generator_ranking_metrics([ours_results[i].scores for i in known], q_truths)
    for s in shots_list:
        out["rows"].append({"method": "resynthesis (ours)", "shots": s, **resynth})
    enrolled = 0
    for s in shots_list:
        for g in labels:
            engine.enroll(g, [_png_bytes(im) for im in gallery[g][enrolled:s]])
        enrolled = s
        results = engine.attribute(list(images), top_k=1)
        fused = generator_ranking_metrics([results[i].scores for i in known], q_truths)
        out["rows"].append({"method": f"fused (resynthesis + gallery, {gc.fingerprint})", "shots": s, **fused})
        cal = engine.gallery_view().calibration
        out["open_set"].append({
            "shots": s,
            "known_correct": float(np.mean([results[i].prediction == truths[i] for i in known])),
            "known_unknown": float(np.mean([results[i].prediction == "unknown" for i in known])),
            "known_real": float(np.mean([results[i].prediction == "real" for i in known])),
            "held_out_unknown": float(np.mean([results[i].prediction == "unknown" for i in unseen])) if unseen else None,
            "calibration": cal.to_dict() if cal is not None else None,
        })
        _log(opts, f"retrieval {s}-shot: fused Rank-1 {pct(fused['rank1'])}, mAP {fused['map']:.3f}")
    return out


def _png_bytes(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def nearest_candidates(engine, results, labels: Sequence[str], max_side: int = 128) -> list[dict[str, Any]]:
    """Per query, per generator, the best evidence item and its image, regenerated from its (prompt, seed) with
    that generator (candidates are stored as vectors only); identical requests are generated once."""
    wanted: dict[str, set] = {g: set() for g in labels}
    best = []
    for r in results:
        per = {}
        for g in labels:
            ev = max(r.evidence.get(g, []), key=lambda e: e.score, default=None)
            if ev is not None:
                per[g] = ev
                wanted[g].add((ev.prompt, ev.seed))
        best.append(per)
    images: dict[tuple, Image.Image] = {}
    for g, pairs in wanted.items():
        pairs = sorted(pairs)
        if pairs:
            for (p, s), im in zip(pairs, engine.generator(g).generate([p for p, _ in pairs], [s for _, s in pairs])):
                im = im.convert("RGB")
                im.thumbnail((max_side, max_side))
                images[(g, p, s)] = im
    return [
        {g: {"score": ev.score, "prompt": ev.prompt, "seed": ev.seed, "kind": ev.kind,
             "image": images.get((g, ev.prompt, ev.seed))} for g, ev in per.items()}
        for per in best
    ]


# ================================================================================================ the run
def run_evaluation(
    config: str | Path | Mapping | Config | None,
    out_dir: str | Path,
    opts: EvalOptions | None = None,
    *,
    index_dir: str | Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Run the whole evaluation and write the report into ``out_dir``; returns the report's data (JSON-able
    except ``html`` rows, which the report writer consumes)."""
    from ..attribution.engine import PACKAGED_PROMPTS, Attributor, read_prompt_file
    from ..attribution.resynthesis import prompts_to_build
    from .report import write_report

    opts = opts or EvalOptions()
    wall0 = time.perf_counter()
    config = load_config(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if opts.suite not in ("hard", "zoo"):
        raise ConfigError(f"unknown benchmark suite {opts.suite!r}; choose hard or zoo")
    transforms = parse_transforms(opts.transforms) if isinstance(opts.transforms, str) or opts.transforms is None else list(opts.transforms)
    baselines = canonical_baselines(opts.baselines)
    hard_dir = out_dir / "hard-benchmark" if not opts.benchmark and opts.suite == "hard" else None
    if hard_dir is not None:
        # The hard benchmark brings its own generators; every other setting is the config's, so variants compare.
        config = dataclasses.replace(config, generators=load_config(hard_config(hard_dir)).generators)
        if opts.held_out == "auto":
            opts = dataclasses.replace(opts, held_out=list(HELD_OUT))
    if opts.per_generator is None:
        opts = dataclasses.replace(opts, per_generator=PER_GENERATOR if hard_dir is not None else ZOO_PER_GENERATOR)
    gammas = sorted({int(g) for g in opts.gammas} | {config.resynthesis.gamma})
    held_out = resolve_held_out(config, opts.held_out)  # every option is checked before anything is built
    hard = None
    if hard_dir is not None:
        hard = build_hard_benchmark(hard_dir, per_generator=opts.per_generator, progress=opts.progress)
    if index_dir is None:
        index_dir = out_dir / "index"
        if index_dir.exists():  # ours: a fresh index each run, so that timings and hit rates are comparable
            shutil.rmtree(index_dir)
    index_dir = Path(index_dir)
    labels = [name for name in config.attribution_names if name not in held_out]
    known_config = restrict_generators(config, labels)

    # ---- benchmark
    bench_engine = Attributor(config, index=index_dir / "_unused", device=device)
    if hard is not None:
        manifest = hard.manifest
    elif opts.benchmark:
        manifest = Path(opts.benchmark)
        if manifest.is_dir():
            manifest = manifest / "manifest.csv"
        _log(opts, f"benchmark: reading {manifest}")
    else:
        _log(opts, f"benchmark: {opts.per_generator} image(s) x {len(config.generators)} generator(s)")
        t0 = time.perf_counter()
        manifest = build_benchmark(bench_engine, out_dir / "benchmark", per_generator=opts.per_generator)
        _log(opts, f"benchmark written in {time.perf_counter() - t0:.1f}s: {manifest}")
    items = read_benchmark(manifest)
    flags = read_query_flags(manifest)
    if not items:
        raise ConfigError(f"{manifest}: the benchmark is empty")
    images = []
    for it in items:
        with Image.open(manifest.parent / it.file) as im:
            images.append(im.convert("RGB"))
    truths = [it.generator for it in items]
    files = [it.file for it in items]
    conditions: dict[str, list[Image.Image]] = {CLEAN: images}
    for t in transforms:
        conditions[t.label] = _transformed(images, t)
    build_prompts = prompts_to_build(config.build, limit=opts.build_limit or None)

    result: dict[str, Any] = {
        "benchmark": {"suite": "hard" if flags else "custom" if opts.benchmark else "zoo", "manifest": str(manifest), "queries": len(items), "per_generator": len(items) // len(set(truths)),
                      "generators": sorted(set(truths)), "indexed": labels, "held_out": held_out},
        "conditions": list(conditions),
        "transforms": {t.label: {"name": t.name, "params": t.full_params} for t in transforms},
        "variants": {},
        "gamma_sweep": [],
        "fewshot": {},
    }

    # ---- ours, every condition
    base_gamma = config.resynthesis.gamma
    ours, ours_engine, ours_results = run_engine_variant(
        "ours", known_config, index_dir / f"ours-g{base_gamma}", conditions, truths, files, device=device,
        build_prompts=build_prompts, share_from=bench_engine, opts=opts, keep_results=True, query_flags=flags)
    result["variants"]["ours"] = ours
    try:
        # ---- γ sweep (clean)
        for g in gammas:
            if g == base_gamma:
                m = ours["conditions"][CLEAN]
                build = ours["build"]
            else:
                v, _, _ = run_engine_variant(
                    f"ours γ={g}", with_gamma(known_config, g), index_dir / f"ours-g{g}", {CLEAN: images}, truths,
                    files, device=device, build_prompts=build_prompts, share_from=ours_engine, opts=opts,
                    query_flags=flags)
                m, build = v["conditions"][CLEAN], v["build"]
            hard = m.get("hard") or {}
            result["gamma_sweep"].append({
                "gamma": g, "top1": m["top1"], "top3": m["top3"], "seconds_per_query": m["seconds_per_query"],
                # what γ is for on the hard benchmark: fine-tune siblings and the open set
                "sibling_confusion": hard.get("sibling_confusion"), "open_set_auroc": m["open_set"]["auroc"],
                "tpr_at_5fpr": m["open_set"].get("tpr_at_5fpr"),
                "generations_per_query": m["generations_per_query"], "build_seconds": build["seconds"],
                "build_seconds_per_prompt": build["seconds"] / build["prompts"] if build.get("prompts") else None,
            })

        # ---- baselines
        if "regeneration" in baselines:
            v, _, _ = run_engine_variant(
                "regeneration", regeneration_config(known_config, opts.regeneration_gamma),
                index_dir / "regeneration", conditions, truths, files, device=device, build_prompts=[],
                share_from=ours_engine, opts=opts, query_flags=flags)
            result["variants"]["regeneration"] = v
        if "resynthesis" in baselines:
            v, _, _ = run_engine_variant(
                "resynthesis", resynthesis_config(known_config), index_dir / "resynthesis", conditions, truths,
                files, device=device, build_prompts=[], share_from=ours_engine, opts=opts, query_flags=flags)
            result["variants"]["resynthesis"] = v
        if "fewshot" in baselines and opts.shots:
            shots = sorted({int(s) for s in opts.shots})
            gallery_prompts = read_prompt_file(PACKAGED_PROMPTS)
            t0 = time.perf_counter()
            refs = gallery_images(ours_engine, labels, shots[-1], gallery_prompts)
            gallery = {g: ours_engine.embedder.embed(ims) for g, ims in refs.items()}
            _log(opts, f"fewshot: gallery of {shots[-1]} per generator in {time.perf_counter() - t0:.1f}s")
            for s, v in run_fewshot(ours_engine, gallery, conditions, truths, files, labels, shots,
                                     log=lambda m: _log(opts, m)).items():
                result["variants"][f"fewshot-{s}"] = v
            result["fewshot"] = {
                "shots": shots,
                "top1_clean": [result["variants"][f"fewshot-{s}"]["conditions"][CLEAN]["top1"] for s in shots],
            }
            t0 = time.perf_counter()
            result["retrieval"] = run_retrieval(ours_engine, refs, images, truths, labels, shots, ours_results, opts)
            _log(opts, f"retrieval and fusion measured in {time.perf_counter() - t0:.1f}s")

        # ---- per-query evidence for the HTML page (ours, clean)
        html_rows = []
        if opts.html:
            t0 = time.perf_counter()
            cands = nearest_candidates(ours_engine, ours_results, labels)
            for it, img, res, cand in zip(items, images, ours_results, cands):
                html_rows.append({"file": it.file, "truth": it.generator, "prompt_true": it.prompt,
                                  "prediction": res.prediction, "scores": dict(res.scores), "prompt": res.prompt,
                                  "cache": res.cache, "image": img, "candidates": cand})
            _log(opts, f"html: nearest candidates regenerated in {time.perf_counter() - t0:.1f}s")
    finally:
        ours_engine.close()

    result["wall_seconds"] = time.perf_counter() - wall0
    result["machine"] = machine_description(device or config.device)
    write_report(result, out_dir, html_rows=html_rows)
    result["wall_seconds_with_report"] = time.perf_counter() - wall0
    _log(opts, f"report written to {out_dir} in {result['wall_seconds_with_report']:.0f}s total")
    return result


def machine_description(device: str | None) -> str:
    import os
    import platform

    import torch

    dev = "GPU " + torch.cuda.get_device_name(0) if torch.cuda.is_available() and device != "cpu" else "no GPU"
    return f"{os.cpu_count()}-core {platform.machine()} CPU, {dev}, Python {platform.python_version()}, torch {torch.__version__}"
