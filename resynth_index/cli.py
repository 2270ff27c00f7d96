"""``rindex``: the command line, a thin shell over :class:`resynth_index.Attributor`.

Results go to stdout, progress and logs to stderr. Exit codes: 0 all good, 1 some input failed, 2 usage.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path

import click

from .cli_common import (
    _CLEAN_ERRORS,
    _config_option,
    _configured,
    _device_option,
    _engine,
    _fail,
    _index_option,
    _printable,
    _progress_option,
    _show_progress,
    _threads_option,
)
from .cli_scale import _ray_build, ingest, snapshot
from .config import default_index_dir
from .errors import RindexError

FORMATS = ("table", "jsonl", "csv")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="resynth-index")
def main() -> None:
    """Tell which text-to-image model made an image, by resynthesis over a precomputed index."""


main.add_command(ingest)
main.add_command(snapshot)


@main.command()
@_index_option
@_config_option
@_device_option
@click.option("--prompts", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Prompt list, one per line (default: the config's, else the packaged list of 241; the embedded "
                   "default builds its first 121).")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Use only the first N prompts.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Build on Ray (the scale extra): alone, a local Ray instance (or $RAY_ADDRESS); ADDRESS 'auto' "
                   "joins the running cluster, ray://HOST:10001 a remote one. README: Scale-out.")
@click.option("--staging", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="--ray: shard directory every node reaches (default INDEX/staging).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Generators resynthesizing at once (default build.workers: automatic, the CPUs over the thread "
                   "count); with --ray, worker actors (default: one per CPU of the cluster, or per GPU with CUDA).")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=None,
              help="--ray: GPUs per worker (default 1 with a CUDA device, else 0).")
@click.option("--no-ingest", is_flag=True, help="--ray: leave the shards for `rindex ingest` (the writer runs elsewhere).")
@_progress_option
@_threads_option
def build(index, config, device, prompts, limit, ray_address, staging, workers, gpus_per_worker, no_ingest,
          progress, threads):
    """Precompute candidate embeddings for a prompt list (resumable: cached prompts are skipped)."""
    config = _configured(config, threads)
    from .attribution.engine import read_prompt_file

    if ray_address is not None:
        _ray_build(index, config, device, read_prompt_file(prompts) if prompts else None, limit, ray_address or None,
                   staging, workers, gpus_per_worker, no_ingest, _show_progress(progress))
        return
    if staging or gpus_per_worker is not None or no_ingest:
        raise click.UsageError("--staging, --gpus-per-worker and --no-ingest go with --ray")
    if workers:
        config = dataclasses.replace(config, build=dataclasses.replace(config.build, workers=workers))
    try:
        with _engine(config, index, device) as engine:
            report = engine.build(read_prompt_file(prompts) if prompts else None, limit=limit,
                                  progress=_show_progress(progress))
            siblings = (f" (with extra seeds for the fine-tune siblings {', '.join(report.sibling_seeds)})"
                        if report.sibling_seeds else "")
            click.echo(
                f"built {report.built} prompt(s), skipped {report.skipped} already cached, "
                f"{report.images} image(s) generated{siblings} in {report.seconds:.1f}s -> {engine.index_dir}",
                err=True,
            )
    except _CLEAN_ERRORS as exc:
        _fail(exc)


def _write_results(results, fmt: str, truth: dict[str, str] | None) -> None:
    rows = []
    for r in results:
        d = r.to_dict()
        if truth is not None:
            d["true"] = truth.get(Path(r.path).name) if r.path else None
        rows.append(d)
    if fmt == "jsonl":
        for d in rows:
            click.echo(json.dumps(d, ensure_ascii=False))
        return
    columns = ["path"] + (["true"] if truth is not None else []) + ["prediction", "score", "cache", "prompt", "error"]
    table = []
    for d in rows:
        scores = d.get("scores") or {}
        best = scores.get(d.get("prediction")) if d.get("prediction") in scores else max(scores.values(), default=None)
        table.append({
            "path": d["path"], "true": d.get("true"), "prediction": d.get("prediction"),
            "score": f"{best:.4f}" if best is not None else "", "cache": d.get("cache"),
            "prompt": d.get("prompt"), "error": d.get("error"),
        })
    if fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
        return
    shown = [c for c in columns if c != "error" or any(t["error"] for t in table)]
    cells = [[("" if t[c] is None else _printable(str(t[c]))) for c in shown] for t in table]
    widths = [min(max([len(c)] + [len(row[i]) for row in cells]), 60) for i, c in enumerate(shown)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(shown, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(v[:w].ljust(w) for v, w in zip(row, widths)).rstrip())


@main.command()
@click.argument("images", nargs=-1, required=False, type=click.Path(path_type=Path))
@_index_option
@_config_option
@_device_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--no-resynth", is_flag=True, help="Never generate: answer from cached evidence only.")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True, help="Evidence items per generator.")
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV with file,generator columns: print the true source beside each prediction and the accuracy.")
@click.option("--stream", is_flag=True,
              help="Read image paths or JSONL objects from stdin; write JSONL as results come (README: Serving).")
@_progress_option
@_threads_option
def query(images, index, config, device, fmt, no_resynth, top_k, manifest, stream, progress, threads):
    """Attribute images (files or directories, recursed). Misses resynthesize and write through."""
    config = _configured(config, threads)
    from .evaluation.samples import read_manifest

    if stream:
        from .serving.stream import run_stream

        if images or manifest:
            raise click.UsageError("--stream reads its inputs from stdin: give no IMAGES and no --manifest")
        try:
            with _engine(config, index, device, readonly=no_resynth) as engine:
                failed = run_stream(engine, sys.stdin, sys.stdout, resynthesize=not no_resynth, top_k=top_k)
        except _CLEAN_ERRORS as exc:
            _fail(exc)
        sys.exit(1 if failed else 0)
    if not images:
        raise click.UsageError("give IMAGES (files or directories), or --stream")
    missing = [str(p) for p in images if not p.exists()]
    try:
        truth = read_manifest(manifest) if manifest else None
        with _engine(config, index, device, readonly=no_resynth) as engine:
            existing = [p for p in images if p.exists()]
            results = (engine.attribute(existing, resynthesize=not no_resynth, top_k=top_k,
                                        progress=_show_progress(progress)) if existing else [])
    except (*_CLEAN_ERRORS, KeyError) as exc:
        _fail(exc)
    from .attribution.engine import Attribution

    results = [Attribution(path=p, error=f"{p}: no such file or directory") for p in missing] + results
    _write_results(results, fmt, truth)
    failed = sum(1 for r in results if not r.ok)
    if truth is not None:
        judged = [r for r in results if r.ok and Path(r.path).name in truth]
        correct = sum(1 for r in judged if r.prediction == truth[Path(r.path).name])
        if judged:
            click.echo(f"accuracy: {correct}/{len(judged)} = {correct / len(judged):.1%}", err=True)
    if failed:
        click.echo(f"{failed} of {len(results)} input(s) failed", err=True)
    sys.exit(1 if failed else 0)


@main.command()
@click.argument("name")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@_index_option
@_config_option
@_device_option
@_progress_option
@_threads_option
def enroll(name, images, index, config, device, progress, threads):
    """Add reference images (files or directories) to generator NAME's gallery.

    NAME need not be configured: an enrolled name is a candidate of every query (gallery-only when it has no
    source). The reserved NAME "real" enrols real photos, which calibrate the real/AI gate. An image that
    cannot be decoded is named and skipped; the others are enrolled (exit 1 then). NAME: at most 64
    characters, no control, format or invisible characters, no whitespace but inner spaces, nothing that looks
    like "unknown" or "real" (exit 2).
    """
    from .gallery.names import check_generator_name

    try:
        check_generator_name(name)  # before any model loads: a refused name costs nothing
    except _CLEAN_ERRORS as exc:
        _fail(exc)
    config = _configured(config, threads)
    try:
        with _engine(config, index, device) as engine:
            report = engine.enroll(name, images, progress=_show_progress(progress))
            counts = engine.gallery.generators()
            view = engine.gallery_view()  # None until an AI generator has references
            cal = view.calibration if view is not None else None
    except _CLEAN_ERRORS as exc:
        _fail(exc)
    for err in report.errors:
        click.echo(f"rindex: {err}", err=True)
    click.echo(f"enrolled {report.added} image(s) for {name!r} ({report.duplicates} already there, "
               f"{len(report.errors)} failed); gallery: "
               + ", ".join(f"{g} {n}" for g, n in counts.items()), err=True)
    if cal is not None:
        click.echo(_calibration_line(cal), err=True)
    sys.exit(1 if report.errors else 0)


def _calibration_line(cal) -> str:
    pct = f"{100 * cal.target_fpr:g}% FPR"

    def rate(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    line = (f"calibrated at {pct}: open set TPR {rate(cal.unknown_tpr)}, real gate TPR {rate(cal.real_tpr)} "
            f"(real photos: {cal.real_source})")
    return line + (f"; {cal.note}" if cal.note else "")


@main.command()
@click.argument("name")
@_index_option
def unenroll(name, index):
    """Remove every reference image of NAME from the gallery."""
    from .gallery.references import Gallery

    try:
        with Gallery(index if index is not None else default_index_dir()) as gallery:
            removed = gallery.remove(name)
    except _CLEAN_ERRORS as exc:
        _fail(exc)
    click.echo(f"removed {removed} reference(s) of {name!r}", err=True)


@main.command()
@_index_option
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_threads_option
def info(index, config, as_json, threads):
    """Describe an index: prompts, vectors per generator, disk size, namespaces, index types, thread count."""
    config = _configured(config, threads)
    try:
        with _engine(config, index, "cpu", readonly=True) as engine:
            data = engine.info()
    except _CLEAN_ERRORS as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    for key, value in data.items():
        if key == "generator_calls":
            click.echo(f"{key}:")
            for name, c in value.items():
                size = f"{c['height'] or 'default'}x{c['width'] or 'default'}"
                extra = ", ".join(f"{k}={json.dumps(v)}" for k, v in c["call"].items()) or "-"
                click.echo(f"  {name}: steps={c['steps']} guidance={c['guidance']} size={size} "
                           f"scheduler={c['scheduler'] or 'default'} call: {extra}")
        elif key == "siblings":  # groups the prototypes alone tell apart
            click.echo(f"{key}: " + ("; ".join(", ".join(group) for group in value) or "none"))
        elif isinstance(value, dict):
            click.echo(f"{key}:")
            for k, v in value.items():
                click.echo(f"  {k}: {v}")
        else:
            click.echo(f"{key}: {value}")


@main.group()
def zoo() -> None:
    """The built-in offline generators (tiny, randomly initialised stand-ins for real models)."""


@zoo.command("list")
def zoo_list():
    """Print the zoo generators, one per line (name first)."""
    from .models.zoo import zoo_defaults, zoo_names

    for name in zoo_names():
        d = zoo_defaults(name)
        click.echo(f"{name}\t" + " ".join(f"{k}={v}" for k, v in d.items()))


@zoo.command("export")
@click.argument("name")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def zoo_export(name, directory):
    """Write zoo generator NAME as a diffusers save_pretrained DIRECTORY."""
    from .models.zoo import export_zoo

    try:
        export_zoo(name, directory)
    except _CLEAN_ERRORS as exc:
        _fail(exc)
    click.echo(f"exported zoo:{name} to {directory}", err=True)


@zoo.command("samples")
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@_config_option
@_device_option
@click.option("--per-generator", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--with-parameters", is_flag=True,
              help="Write each sample's generation settings into it (A1111 parameters), so that it can be replayed.")
@_threads_option
def zoo_samples(outdir, config, device, per_generator, with_parameters, threads):
    """Write labelled samples (held-out prompts and seeds, no metadata unless --with-parameters) and
    OUTDIR/manifest.csv."""
    config = _configured(config, threads)
    from .attribution.engine import Attributor
    from .evaluation.samples import write_samples

    try:
        engine = Attributor(config, device=device)
        manifest = write_samples(engine, outdir, per_generator=per_generator, with_parameters=with_parameters)
    except _CLEAN_ERRORS as exc:
        _fail(exc)
    click.echo(f"wrote samples and {manifest}", err=True)


@main.command()
@_index_option
@_config_option
@_device_option
@click.option("--host", default=None, help="Bind address (default: serve.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default: serve.port, 8000; 0: any free).")
@click.option("--miss-policy", type=click.Choice(["queue", "inline"]), default=None,
              help="queue: answer misses from cached evidence and queue the prompt for the builder (read-only "
                   "server); inline: resynthesize within the budget (this server is the index's writer).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="warning",
              show_default=True)
@click.option("--builder", is_flag=True, help="Run the index's one builder instead: build the prompts servers queued.")
@click.option("--once", is_flag=True, help="--builder: drain the queue, then exit.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="--builder: seconds between polls of the queue.")
@_threads_option
def serve(index, config, device, host, port, miss_policy, log_level, builder, once, interval, threads):
    """Serve the HTTP API (POST /v1/attribute, /v1/health, /v1/index, /metrics; docs at /docs)."""
    config = _configured(config, threads)
    import logging

    index = index if index is not None else default_index_dir()
    try:
        if builder:
            from .serving.build_queue import run_builder

            logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
            built = run_builder(config, index=index, device=device, once=once, interval=interval,
                                echo=lambda m: click.echo(m, err=True))
            click.echo(f"builder: built {built} prompt(s)", err=True)
            return
        try:
            from .serving.http import serve as run_server
        except ImportError as exc:
            _fail(RindexError(f"rindex serve needs the serve extra: pip install 'resynth-index[serve]' ({exc})"))

        run_server(config, index=index, device=device, host=host, port=port, log_level=log_level,
                   overrides={"miss_policy": miss_policy} if miss_policy else None)
    except KeyboardInterrupt:
        pass
    except _CLEAN_ERRORS as exc:
        _fail(exc)


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if any(v < 1 for v in items):
        raise click.BadParameter("values must be positive")
    return items


@main.command("eval")
@click.option("--index", "index", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Parent directory of the variants' indexes (default: a fresh OUT/index each run).")
@_config_option
@_device_option
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("eval-report"),
              show_default=True, help="Report directory (report.json, report.md, plots/, index.html, benchmark/).")
@click.option("--per-generator", type=click.IntRange(min=1), default=None,
              help="Benchmark images per generator (default: 48 for the hard benchmark, 24 for the zoo one).")
@click.option("--transforms", default="all", show_default=True,
              help="Query transforms: all, none, or a list like 'jpeg:quality=50,blur:sigma=2,greyscale'.")
@click.option("--gammas", callback=_int_list, default="1,2,4", show_default=True, help="γ values of the γ sweep.")
@click.option("--held-out", default="auto", show_default=True,
              help="Generators benchmarked but not indexed (open set): names, 'none', or 'auto' (the last one "
                   "when 3 or more are configured).")
@click.option("--build-limit", type=click.IntRange(min=0), default=0, show_default=True,
              help="Prompts of the build list precomputed into each index that scores against the whole index; "
                   "0 = all of them, as 'rindex build' does (the prototypes and the open set learn from them).")
@click.option("--shots", callback=_int_list, default="1,5,10", show_default=True, help="Few-shot gallery sizes.")
@click.option("--baselines", default="regeneration,resynthesis,fewshot", show_default=True,
              help="Baselines to run beside ours (comma list, or 'none'): regeneration (Li, Qian, Zhang), "
                   "resynthesis (Bongini et al.), fewshot (k-shot nearest neighbour).")
@click.option("--benchmark", type=click.Path(path_type=Path), default=None,
              help="Reuse an existing benchmark (manifest.csv or its directory) instead of generating one.")
@click.option("--suite", type=click.Choice(["hard", "zoo"]), default="hard", show_default=True,
              help="Without --benchmark: the hard benchmark (fine-tune siblings, a model called differently, an "
                   "unknown generator sharing a VAE; its own generators) or the easy zoo benchmark of the config's "
                   "generators.")
@click.option("--no-html", is_flag=True, help="Skip the per-query HTML page.")
@_threads_option
def eval_cmd(index, config, device, out, per_generator, transforms, gammas, held_out, build_limit, shots, baselines,
             benchmark, suite, no_html, threads):
    """Measure accuracy on a held-out benchmark, clean and under the Resynthesis paper's 17 transforms, with baselines.

    Without --index every variant gets a fresh index under OUT/index (the user's cache is never touched).
    """
    config = _configured(config, threads)
    from .evaluation.benchmark import EvalOptions, run_evaluation
    from .evaluation.report import accuracy_table

    opts = EvalOptions(
        per_generator=per_generator, transforms=transforms, gammas=tuple(gammas or ()), held_out=held_out,
        build_limit=build_limit, shots=tuple(shots or ()),
        baselines=tuple(b.strip() for b in baselines.split(",") if b.strip() and b.strip() != "none"),
        html=not no_html, benchmark=benchmark, suite=suite,
    )
    try:
        result = run_evaluation(config, out, opts, index_dir=index, device=device)
    except _CLEAN_ERRORS as exc:
        _fail(exc)
    click.echo(accuracy_table(result))
    click.echo(f"report: {out / 'report.md'} ({result['wall_seconds_with_report']:.0f}s)", err=True)


if __name__ == "__main__":
    main()
