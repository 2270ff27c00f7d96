#!/usr/bin/env python
"""Calibrate the cache's near-duplicate threshold on ``resynth_index/data/paraphrases.tsv``.

Each line of the set is ``same|diff <TAB> prompt_a <TAB> prompt_b``: ``same`` pairs are paraphrases (reusing
one's candidates for the other is right), ``diff`` pairs are near misses that differ in a word that changes
the picture (reuse would attribute against the wrong scene). Both prompts are normalised as the cache does,
embedded with the prompt embedder, and compared by cosine similarity.

A wrong reuse silently corrupts an attribution, a missed reuse only costs one resynthesis, so the threshold
is chosen for precision: the smallest 0.01 step whose false-reuse rate on the near misses is at most
``--max-false-reuse`` (default 0.025: one pair in 40), plus ``--margin``. A zero budget is not useful with
MiniLM: it is nearly blind to word order (``an astronaut riding a horse`` vs ``a horse riding an
astronaut`` score 0.99), so only 1.00 would exclude that pair, and 1.00 disables reuse. The script prints
both distributions, the chosen threshold, and the paraphrase reuse and false-reuse rates around it.

    python tools/calibrate_near_threshold.py                 # MiniLM (the default prompt embedder)
    python tools/calibrate_near_threshold.py --embedder clip --clip-model ViT-B-32 --clip-pretrained PATH
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import resynth_index  # noqa: E402,F401
from resynth_index.models.prompt_embedders import load_prompt_embedder  # noqa: E402
from resynth_index.store.keys import normalize_prompt  # noqa: E402

DEFAULT_SET = Path(resynth_index.__file__).resolve().parent / "data" / "paraphrases.tsv"


def load_pairs(path: Path) -> list[tuple[str, str, str]]:
    pairs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] not in ("same", "diff"):
            raise SystemExit(f"{path}:{lineno}: expected 'same|diff<TAB>a<TAB>b'")
        pairs.append((parts[0], parts[1], parts[2]))
    return pairs


def similarities(embedder, pairs) -> np.ndarray:
    a = embedder.embed([normalize_prompt(p[1]) for p in pairs])
    b = embedder.embed([normalize_prompt(p[2]) for p in pairs])
    return np.sum(a * b, axis=1)


def choose_threshold(same: np.ndarray, diff: np.ndarray, max_false_reuse: float = 0.025,
                     margin: float = 0.0) -> float:
    """Smallest 0.01 step with a near-miss false-reuse rate <= ``max_false_reuse``, plus ``margin`` (<= 1)."""
    for step in range(0, 101):
        t = step / 100
        if np.mean(diff >= t) <= max_false_reuse:
            return round(min(t + margin, 1.0), 2)
    return 1.0


def describe(name: str, x: np.ndarray) -> str:
    q = np.quantile(x, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    return f"{name:<10} n={len(x):3d}  " + "  ".join(
        f"{lab}={v:.3f}" for lab, v in zip(["min", "p5", "p25", "p50", "p75", "p95", "max"], q)
    )


def histogram(same: np.ndarray, diff: np.ndarray, lo: float = 0.3, step: float = 0.05) -> list[str]:
    rows = []
    edges = np.arange(lo, 1.0 + 1e-9, step)
    for left in edges:
        right = left + step
        s = int(((same >= left) & (same < right)).sum()) if right < 1.0 else int((same >= left).sum())
        d = int(((diff >= left) & (diff < right)).sum()) if right < 1.0 else int((diff >= left).sum())
        rows.append(f"  [{left:.2f},{min(right, 1.0):.2f})  same {'#' * s:<25} {s:3d}   diff {'x' * d:<25} {d:3d}")
    below_s, below_d = int((same < lo).sum()), int((diff < lo).sum())
    rows.insert(0, f"  below {lo:.2f}      same {below_s:3d}   diff {below_d:3d}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=Path, default=DEFAULT_SET)
    ap.add_argument("--embedder", choices=["minilm", "clip"], default="minilm")
    ap.add_argument("--clip-model", default="ViT-B-32")
    ap.add_argument("--clip-pretrained", default=None)
    ap.add_argument("--max-false-reuse", type=float, default=0.025,
                    help="largest tolerated fraction of near-miss pairs at or above the threshold")
    ap.add_argument("--margin", type=float, default=0.0, help="added to the chosen threshold")
    ap.add_argument("--show", type=int, default=5, help="print the N hardest pairs of each kind")
    args = ap.parse_args(argv)

    pairs = load_pairs(args.pairs)
    if args.embedder == "clip":
        emb = load_prompt_embedder("clip", model=args.clip_model, pretrained=args.clip_pretrained)
    else:
        emb = load_prompt_embedder("minilm")
    sims = similarities(emb, pairs)
    labels = np.array([p[0] for p in pairs])
    same, diff = sims[labels == "same"], sims[labels == "diff"]
    thr = choose_threshold(same, diff, args.max_false_reuse, args.margin)

    print(f"embedder: {emb.id}   pairs: {args.pairs} ({len(same)} paraphrase, {len(diff)} near-miss)")
    print(describe("paraphrase", same))
    print(describe("near-miss", diff))
    print("histogram of cosine similarity:")
    print("\n".join(histogram(same, diff)))
    order = np.argsort(sims)
    print("hardest paraphrases (lowest similarity; reuse missed below the threshold):")
    for i in [i for i in order if labels[i] == "same"][: args.show]:
        print(f"  {sims[i]:.3f}  {pairs[i][1]!r} ~ {pairs[i][2]!r}")
    print("hardest near misses (highest similarity; must stay below the threshold):")
    for i in [i for i in order[::-1] if labels[i] == "diff"][: args.show]:
        print(f"  {sims[i]:.3f}  {pairs[i][1]!r} vs {pairs[i][2]!r}")
    print("threshold   paraphrase reuse   false reuse")
    for t in sorted({round(max(0.0, thr - d), 2) for d in (0.10, 0.05, 0.02, 0.01)} | {thr} | {round(min(1.0, thr + d), 2) for d in (0.01, 0.02, 0.04)}):
        print(f"  {t:.2f}      {np.mean(same >= t):6.1%}            {np.mean(diff >= t):6.1%}")
    print(f"chosen threshold: {thr:.2f}  (smallest 0.01 step with false reuse <= {args.max_false_reuse:.1%}, "
          f"margin {args.margin}): paraphrase reuse {np.mean(same >= thr):.1%}, false reuse {np.mean(diff >= thr):.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
