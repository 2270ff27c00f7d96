"""The evaluation report: ``report.json`` (everything, per-query records included), ``report.md`` (the tables),
PNG plots (matplotlib, Agg backend) and ``index.html``, one self-contained page (images embedded as base64 PNG,
no script, no network) that shows every clean query beside the nearest candidate of each indexed generator.

The nearest candidates are *regenerated* from their (prompt, seed) by :func:`evaluation.nearest_candidates`,
since the cache stores vectors only.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

CLEAN = "clean"


def display_name(variant: str, result: Mapping[str, Any]) -> str:
    cfg = result["variants"].get(variant, {}).get("config", {})
    if variant == "ours":
        return f"ours (γ={cfg.get('gamma')}, {cfg.get('mode')}, {cfg.get('aggregate')})"
    if variant == "seed002":
        return f"seed 002 (γ={cfg.get('gamma')}, final layer, mean)"
    if variant == "seed000":
        return "seed 000 (γ=1, euclidean)"
    if variant.startswith("fewshot-"):
        return f"{variant.split('-', 1)[1]}-shot NN"
    return variant


def _f(v, pct: bool = True, digits: int = 1) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.{digits}f}%" if pct else f"{v:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def accuracy_table(result: Mapping[str, Any]) -> str:
    """Top-1 accuracy on the indexed generators: one row per condition, one column per variant."""
    variants = list(result["variants"])
    rows = []
    for cond in result["conditions"]:
        rows.append([cond] + [_f(result["variants"][v]["conditions"].get(cond, {}).get("top1")) for v in variants])
    return _table(["condition"] + [display_name(v, result) for v in variants], rows)


def clean_table(result: Mapping[str, Any]) -> str:
    rows = []
    for v, data in result["variants"].items():
        m = data["conditions"][CLEAN]
        os_ = m["open_set"]
        rows.append([
            display_name(v, result), _f(m["top1"]), _f(m["top3"]), _f(m["macro_roc_auc"], False, 3),
            _f(os_["auroc"], False, 3), _f(os_.get("tpr_at_5fpr")), _f(m["generations_per_query"], False, 2),
            _f(m["cache"]["hit_rate"]) if "cache" in m else "–", _f(m["seconds_per_query"], False, 3),
        ])
    return _table(["variant", "top-1", "top-3", "macro ROC-AUC", "open-set AUROC", "TPR@5%FPR", "generations/query",
                   "cache hit rate", "s/query"], rows)


def per_generator_table(result: Mapping[str, Any], condition: str = CLEAN) -> str:
    labels = result["benchmark"]["indexed"]
    rows = [[display_name(v, result)] + [_f(d["conditions"][condition]["per_generator"].get(g)) for g in labels]
            for v, d in result["variants"].items()]
    return _table(["variant"] + labels, rows)


def confusion_table(result: Mapping[str, Any], variant: str = "ours", condition: str = CLEAN) -> str:
    c = result["variants"][variant]["conditions"][condition]["confusion"]
    return _table(["true \\ predicted"] + c["columns"], [[r] + row for r, row in zip(c["rows"], c["matrix"])])


def gamma_table(result: Mapping[str, Any]) -> str:
    rows = [[g["gamma"], _f(g["top1"]), _f(g["top3"]), _f(g["generations_per_query"], False, 2),
             _f(g["seconds_per_query"], False, 3), _f(g["build_seconds_per_prompt"], False, 2)]
            for g in result["gamma_sweep"]]
    return _table(["γ", "top-1", "top-3", "generations/query", "s/query", "build s/prompt"], rows)


def shots_table(result: Mapping[str, Any]) -> str:
    fs = result.get("fewshot") or {}
    if not fs:
        return "(few-shot baseline not run)"
    return _table(["shots", "top-1 (clean)"], [[s, _f(a)] for s, a in zip(fs["shots"], fs["top1_clean"])])


def retrieval_table(result: Mapping[str, Any]) -> str:
    """Rank-1 / mAP per method (rows) and shot count (columns), then the fused engine's decisions."""
    rt = result.get("retrieval")
    if not rt:
        return "(retrieval not run: it needs the fewshot baseline)"
    shots = rt["shots"]
    methods = list(dict.fromkeys(r["method"] for r in rt["rows"]))
    cell = {(r["method"], r["shots"]): r for r in rt["rows"]}
    rows = [[m] + [f"{_f(cell[m, s]['rank1'])} / {cell[m, s]['map']:.3f}" if (m, s) in cell else "–" for s in shots]
            for m in methods]
    out = _table(["method (Rank-1 / mAP)"] + [f"{s}-shot" for s in shots], rows)
    dec = [[o["shots"], _f(o["known_correct"]), _f(o["known_unknown"]), _f(o["known_real"]), _f(o["held_out_unknown"]),
            _f((o["calibration"] or {}).get("unknown_tpr")), _f((o["calibration"] or {}).get("real_tpr"))]
           for o in rt["open_set"]]
    out += "\n\nDecisions of the fused engine (open set and real gate calibrated on the gallery at " \
           f"{_f(result['retrieval']['open_set'][0]['calibration']['target_fpr'] if rt['open_set'] and rt['open_set'][0]['calibration'] else None)} FPR):\n\n"
    out += _table(["shots", "known: correct", "known: unknown", "known: real", "held-out: unknown",
                   "calibrated open-set TPR", "calibrated gate TPR"], dec)
    return out


def markdown(result: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    b = result["benchmark"]
    lines = [
        "# rindex eval report",
        "",
        f"- date: {result.get('date', '')}",
        f"- machine: {result.get('machine', '')}",
        f"- wall time: {result.get('wall_seconds', 0):.0f} s",
        f"- benchmark: {b['queries']} queries ({b['per_generator']} per generator) from {', '.join(b['generators'])}; "
        f"indexed: {', '.join(b['indexed'])}; held out (open set): {', '.join(b['held_out']) or 'none'}",
        "- top-1 and top-3 count the indexed generators' queries only; the open-set metrics score known against "
        "held-out queries by the top score",
        "",
        "## Top-1 accuracy, clean and under each transform",
        "",
        accuracy_table(result),
        "",
        "## Clean: all metrics",
        "",
        clean_table(result),
        "",
        "## Per-generator accuracy (clean)",
        "",
        per_generator_table(result),
        "",
        "## Confusion matrix (ours, clean)",
        "",
        confusion_table(result),
        "",
        "## Accuracy and time against γ (ours, clean)",
        "",
        gamma_table(result),
        "",
        "## Accuracy against shots (few-shot nearest neighbour, clean)",
        "",
        shots_table(result),
        "",
        "## Retrieval (seed 001) beside resynthesis, and fused (clean, indexed generators)",
        "",
        "Gallery rows: nearest reference (Rank-1) and mean average precision of the ranked references. "
        "Resynthesis and fused rows rank generators by score (one relevant generator: AP = 1/rank).",
        "",
        retrieval_table(result),
        "",
    ]
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(result, path: Path, variant: str = "ours") -> None:
    plt = _plt()
    c = result["variants"][variant]["conditions"][CLEAN]["confusion"]
    m = c["matrix"]
    fig, ax = plt.subplots(figsize=(1.2 * len(c["columns"]) + 2, 1.0 * len(c["rows"]) + 1.5))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(c["columns"])), c["columns"], rotation=30, ha="right")
    ax.set_yticks(range(len(c["rows"])), c["rows"])
    for i, row in enumerate(m):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > max(map(max, m)) / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({display_name(variant, result)}, clean)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_transforms(result, path: Path) -> None:
    plt = _plt()
    import numpy as np

    conds = result["conditions"]
    variants = list(result["variants"])
    width = 0.8 / max(1, len(variants))
    fig, ax = plt.subplots(figsize=(min(16, max(7, 0.55 * len(conds) + 3)), 5.5))
    x = np.arange(len(conds))
    for k, v in enumerate(variants):
        ys = [result["variants"][v]["conditions"].get(c, {}).get("top1") for c in conds]
        ax.bar(x + (k - (len(variants) - 1) / 2) * width, [0 if y is None else 100 * y for y in ys], width,
               label=display_name(v, result))
    ax.set_xticks(x, [c.split("(")[0] for c in conds], rotation=45, ha="right")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("accuracy per transform")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.28), frameon=False)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_gamma(result, path: Path) -> None:
    plt = _plt()
    sweep = result["gamma_sweep"]
    g = [s["gamma"] for s in sweep]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(g, [100 * (s["top1"] or 0) for s in sweep], marker="o", color="tab:blue", label="top-1")
    ax.set_xlabel("γ (candidates per generator)")
    ax.set_ylabel("top-1 accuracy (%)", color="tab:blue")
    ax.set_ylim(-2, 102)
    ax.set_xticks(g)
    ax2 = ax.twinx()
    ax2.plot(g, [s["seconds_per_query"] for s in sweep], marker="s", color="tab:red", label="s/query")
    ax2.plot(g, [s["build_seconds_per_prompt"] or 0 for s in sweep], marker="^", color="tab:orange", label="build s/prompt")
    ax2.set_ylabel("seconds", color="tab:red")
    ax2.legend(loc="lower right", fontsize=7)
    ax.set_title("accuracy and time against γ (ours, clean)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_shots(result, path: Path) -> None:
    plt = _plt()
    fs = result["fewshot"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(fs["shots"], [100 * (a or 0) for a in fs["top1_clean"]], marker="o", label="few-shot NN")
    ours = result["variants"]["ours"]["conditions"][CLEAN]["top1"]
    if ours is not None:
        ax.axhline(100 * ours, color="tab:green", ls="--", label="ours (resynthesis)")
    ax.set_xlabel("references per generator (shots)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_xticks(fs["shots"])
    ax.legend(fontsize=8)
    ax.set_title("accuracy against shots (clean)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(result, out_dir: Path) -> list[str]:
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    made = []
    jobs = [("confusion.png", plot_confusion), ("accuracy_per_transform.png", plot_transforms)]
    if result.get("gamma_sweep"):
        jobs.append(("accuracy_time_vs_gamma.png", plot_gamma))
    if result.get("fewshot"):
        jobs.append(("accuracy_vs_shots.png", plot_shots))
    for name, fn in jobs:
        fn(result, plot_dir / name)
        made.append(f"plots/{name}")
    return made


# ------------------------------------------------------------------------------------------------ HTML
def _data_uri(image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _md_table_to_html(md: str) -> str:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    if len(lines) < 2:
        return f"<p>{html.escape(md)}</p>"
    cells = lambda ln: [c.strip() for c in ln.strip("|").split("|")]  # noqa: E731
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells(lines[0]))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells(ln)) + "</tr>" for ln in lines[2:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:20px;background:#fafafa;color:#222}
table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}
th{background:#eee}.q{display:flex;gap:12px;align-items:flex-start;background:#fff;border:1px solid #ddd;
margin:8px 0;padding:8px}.c{text-align:center;font-size:12px;width:140px}.c img,.q>.c img{width:128px;height:128px;
image-rendering:pixelated;border:3px solid #ddd}.ok{color:#16803c;font-weight:bold}.bad{color:#c0262d;font-weight:bold}
.best img{border-color:#16803c}.plots img{max-width:48%;margin:4px;border:1px solid #ddd;background:#fff}
.meta{font-size:12px;max-width:260px}
"""


def write_html(result: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], path: Path, plot_paths: Sequence[Path] = ()) -> None:
    b = result["benchmark"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>rindex eval report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>rindex eval report</h1>",
        f"<p>{html.escape(result.get('date', ''))} · {html.escape(result.get('machine', ''))} · "
        f"{b['queries']} queries · indexed: {html.escape(', '.join(b['indexed']))} · held out: "
        f"{html.escape(', '.join(b['held_out']) or 'none')}</p>",
        "<h2>Top-1 accuracy, clean and per transform</h2>", _md_table_to_html(accuracy_table(result)),
        "<h2>Clean: all metrics</h2>", _md_table_to_html(clean_table(result)),
    ]
    if plot_paths:
        from PIL import Image

        parts.append("<h2>Plots</h2><div class='plots'>")
        for p in plot_paths:
            with Image.open(p) as im:
                parts.append(f"<img alt='{html.escape(p.stem)}' src='{_data_uri(im)}'>")
        parts.append("</div>")
    parts.append("<h2>Queries (clean) beside the nearest candidate of each generator</h2>")
    for r in rows:
        ok = r["prediction"] == r["truth"]
        known = r["truth"] in b["indexed"]
        verdict = "correct" if ok else ("held-out generator" if not known else "wrong")
        parts.append("<div class='q'>")
        parts.append(f"<div class='c'><img alt='query' src='{_data_uri(r['image'])}'><br>query</div>")
        parts.append(
            "<div class='meta'>"
            f"<div>{html.escape(r['file'])}</div>"
            f"<div>true: <b>{html.escape(r['truth'])}</b></div>"
            f"<div>predicted: <span class='{'ok' if ok else 'bad'}'>{html.escape(str(r['prediction']))}</span> "
            f"({verdict})</div>"
            f"<div>inverted prompt: {html.escape(r['prompt'] or '')} [{html.escape(str(r['cache']))}]</div>"
            f"<div>true prompt: {html.escape(r['prompt_true'])}</div></div>"
        )
        for g, c in r["candidates"].items():
            cls = "c best" if g == r["prediction"] else "c"
            img = f"<img alt='{html.escape(g)}' src='{_data_uri(c['image'])}'>" if c.get("image") is not None else ""
            score = r["scores"].get(g)
            score_txt = "–" if score is None else f"{score:.4f}"
            parts.append(
                f"<div class='{cls}'>{img}<br><b>{html.escape(g)}</b><br>score {score_txt}<br>"
                f"nearest {c['kind']} {c['score']:.4f}<br><small>{html.escape(c['prompt'])} · seed {c['seed']}</small></div>"
            )
        parts.append("</div>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")


# ------------------------------------------------------------------------------------------------ all
def write_report(result: dict[str, Any], out_dir: str | Path, *, html_rows: Sequence[Mapping[str, Any]] = ()) -> dict[str, Path]:
    """Write report.json, report.md, plots/*.png and (with ``html_rows``) index.html into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.setdefault("date", _dt.date.today().isoformat())
    plots = write_plots(result, out_dir)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    paths["json"].write_text(json.dumps(result, indent=1, default=_json_default), encoding="utf-8")
    paths["markdown"].write_text(markdown(result, plots), encoding="utf-8")
    if html_rows:
        paths["html"] = out_dir / "index.html"
        write_html(result, html_rows, paths["html"], [out_dir / p for p in plots])
    return paths


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
