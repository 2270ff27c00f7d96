"""Write a second draw of the hard benchmark's queries: the same generators, prompts and call settings, the next
48 seeds of each generator, so that a default chosen on the benchmark can be checked on images it was not
chosen on.

    python tools/hard_second_draw.py eval-report/hard-benchmark second-draw
    rindex eval --config eval-report/hard-benchmark/config.toml --benchmark second-draw/manifest.csv \
        --held-out sd-other --gammas 1 --baselines none

The first argument is a hard benchmark directory that ``rindex eval`` built (its generators are read from there);
the second is where the queries and their ``manifest.csv`` go. ``--draw 2`` writes the third draw instead, and
``--draws 2`` pools two consecutive draws (96 queries per generator) in one manifest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from resynth_index.evaluation.hard import draw_indices, hard_config, write_queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", type=Path, help="a hard benchmark directory (with generators/ and hard.json)")
    parser.add_argument("out", type=Path, help="directory for the queries and manifest.csv")
    parser.add_argument("--draw", type=int, default=1, help="which draw: 1 = the 48 seeds after the benchmark's")
    parser.add_argument("--draws", type=int, default=1, help="how many consecutive draws, pooled in one manifest")
    args = parser.parse_args()
    if not (args.benchmark / "hard.json").is_file():
        sys.exit(f"{args.benchmark} is not a hard benchmark directory (no hard.json); run 'rindex eval' first")
    try:
        indices = draw_indices(args.draw, args.draws)
    except ValueError as exc:
        sys.exit(str(exc))
    torch.set_num_threads(2)
    manifest = write_queries(hard_config(args.benchmark), args.out, indices,
                             log=lambda msg: print(f"[second draw] {msg}", file=sys.stderr, flush=True))
    print(manifest)


if __name__ == "__main__":
    main()
