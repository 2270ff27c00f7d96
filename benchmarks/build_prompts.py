"""Clean top-1 of the generator prototypes against the number of cached prompts they are fitted on.

The fine-tune siblings are told apart by class means over the cache, so how many prompts the cache holds bounds
how well they are estimated. This fits the attribution's prototypes (with the siblings' thumbnail stage) as the
engine does, on random fractions of the prompts an index holds, and attributes the manifests' clean queries by
the prototypes alone (no best-match evidence, no open set). Each fraction below 1 is drawn ``--repeats`` times.

Usage (an index that ``rindex eval`` built, its config and the benchmark's manifests):

    python benchmarks/build_prompts.py --config OUT/hard-benchmark/config.toml --index DIR/ours-g1 \\
        --manifest OUT/hard-benchmark/queries/manifest.csv [--manifest M2 ...] [--held-out sd-other]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resynth_index import Attributor  # noqa: E402
from resynth_index.attribution.prototypes import attribution_prototypes, stored_candidates  # noqa: E402
from resynth_index.attribution.resynthesis import degraded_namespaces  # noqa: E402
from resynth_index.images.degrade import shrink_to, upscale_to  # noqa: E402
from resynth_index.store.keys import normalize_prompt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--index", required=True, help="the index directory itself (the one holding data.mdb)")
    ap.add_argument("--manifest", action="append", required=True)
    ap.add_argument("--held-out", action="append", default=[], help="generators left out of the prototypes")
    ap.add_argument("--fractions", default="0.25,0.5,0.75,1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    with Attributor(args.config, index=args.index, readonly=True, threads=args.threads) as engine:
        names = {g: ns for g, ns in engine.namespaces.items() if g not in args.held_out}
        stored = stored_candidates(engine.cache, names, degraded_namespaces(engine.config.resynthesis, names),
                                   siblings=engine._sibling_seeds())
        blocks, thumbnail = engine._prototype_blocks()
        columns = (0, sum(blocks)) if blocks else None
        files, truths = [], []
        for manifest in map(Path, args.manifest):
            for row in csv.DictReader(manifest.open()):
                if row["generator"] in names:
                    files.append(manifest.parent / row["file"])
                    truths.append(row["generator"])
        images = [shrink_to(upscale_to(Image.open(f).convert("RGB"), engine.query_size()), engine.query_max_size())
                  for f in files]
        queries = engine.embedder.embed(images)
        prompts = sorted({normalize_prompt(c.prompt) for cands, _ in stored.values() for c in cands})
        weight, attributed_to = engine.config.scoring.sibling_thumbnail_weight, engine.config.attributed_to

    print(f"{len(truths)} clean queries of {len(set(truths))} generators; {len(prompts)} cached prompts")
    print("| prompts fitted | clean top-1 (each draw) | mean |")
    print("|---|---|---|")
    rng = np.random.default_rng(0)
    for fraction in (float(f) for f in args.fractions.split(",")):
        n = max(1, round(fraction * len(prompts)))
        accuracies = []
        for _ in range(args.repeats if n < len(prompts) else 1):
            keep = set(rng.permutation(prompts)[:n])
            subset = {g: ([c for c in cands if normalize_prompt(c.prompt) in keep],
                          [c for c in copies if normalize_prompt(c.prompt) in keep])
                      for g, (cands, copies) in stored.items()}
            fit, _ = attribution_prototypes(subset, columns, thumbnail, attributed_to, weight)
            if fit is None:
                print(f"| {n} | too few candidates for some generator | |")
                break
            predicted = [max((s := fit.scores(q)), key=s.get) for q in queries]
            accuracies.append(100 * np.mean([p == t for p, t in zip(predicted, truths)]))
        if accuracies:
            print(f"| {n} | {', '.join(f'{a:.1f}%' for a in accuracies)} | {np.mean(accuracies):.1f}% |")


if __name__ == "__main__":
    main()
