"""What the degraded and colour copies cost a build (CPU): the embedded default config built over the same prompts
with no copies, 2 degraded copies alone (the default until 2026-12-02), the default (2 degraded and 1 colour
copy) and 8 degraded copies (the default until 2026-12-01), in turn, each into a fresh index. Prints the seconds
of each variant (min and median over the rounds) and their ratios to no copies, measured within this one run (the
machine is shared).

Usage: python benchmarks/degraded_copies.py [--prompts 12 --rounds 2 --threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resynth_index import Attributor  # noqa: E402
from resynth_index.attribution.resynthesis import PACKAGED_PROMPTS, read_prompt_file  # noqa: E402
from resynth_index.config import load_config  # noqa: E402


def build_seconds(copies: tuple[int, int], prompts: list[str], threads: int) -> float:
    settings = {"degraded_copies": copies[0], "colour_copies": copies[1]}
    with tempfile.TemporaryDirectory() as index:
        with Attributor({"resynthesis": settings}, index=index, threads=threads) as engine:
            for g in engine.runnable:  # loading is not what is measured
                engine.generator(g)
            engine.embedder
            t0 = time.perf_counter()
            engine.build(prompts, progress=False)
            return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    prompts = read_prompt_file(PACKAGED_PROMPTS)[: args.prompts]
    rc = load_config(None).resynthesis
    default = (rc.degraded_copies, rc.colour_copies)
    seconds: dict[tuple[int, int], list[float]] = {c: [] for c in sorted({(0, 0), (2, 0), default, (8, 0)})}
    for _ in range(args.rounds):
        for copies in seconds:
            seconds[copies].append(build_seconds(copies, prompts, args.threads))
    print(f"build of {len(prompts)} prompts x 4 zoo generators, {args.rounds} rounds, {args.threads} thread(s)")
    print("| degraded copies | colour copies | min s | median s |")
    print("|---|---|---|---|")
    for (degraded, colour), s in seconds.items():
        print(f"| {degraded} | {colour} | {min(s):.1f} | {statistics.median(s):.1f} |")
    none = statistics.median(seconds[(0, 0)])
    for copies in seconds:
        if any(copies):
            print(f"ratio {copies[0]}+{copies[1]} / none (medians): {statistics.median(seconds[copies]) / none:.3f}")


if __name__ == "__main__":
    main()
