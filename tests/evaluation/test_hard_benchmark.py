"""The hard benchmark: fine-tunes that move only the UNet, a deterministic directory a user's config can load,
queries with and without prompt metadata, and its own figures."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from resynth_index.config import load_config
from resynth_index.evaluation.hard import (
    GENERATORS,
    HELD_OUT,
    build_hard_benchmark,
    draw_indices,
    fine_tune,
    hard_config,
    hard_metrics,
    read_query_flags,
    write_queries,
)
from resynth_index.evaluation.metrics import open_set_metrics
from resynth_index.evaluation.report import hard_intervals
from resynth_index.images.decode import decode_image
from resynth_index.models.zoo import build_zoo_pipeline


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_fine_tune_moves_only_the_unet_and_changes_the_images():
    base = build_zoo_pipeline("tiny-sd")
    tuned = fine_tune(base, lambda px, rng: 255 - px, ["a red car", "a blue house"], steps=2, seed=3)
    for name in ("vae", "text_encoder"):
        before, after = _state(getattr(base, name)), _state(getattr(tuned, name))
        assert all(torch.equal(before[k], after[k]) for k in before), name
    unet_before, unet_after = _state(base.unet), _state(tuned.unet)
    moved = [k for k in unet_before if not torch.equal(unet_before[k], unet_after[k])]
    assert len(moved) > 0.9 * len(unet_before)  # a fine-tune moves (nearly) every tensor

    def image(pipe):
        out = pipe(prompt=["a red car"], num_inference_steps=3, height=64, width=64, output_type="np",
                   generator=[torch.Generator().manual_seed(0)])
        return out.images[0]

    assert np.abs(image(base) - image(tuned)).mean() > 1e-3


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return build_hard_benchmark(tmp_path_factory.mktemp("hard"), per_generator=2, progress=False,
                                fine_tune_steps=(1, 2), train_images=2)


def test_benchmark_directory_loads_as_a_user_config(bench):
    config = load_config(bench.directory / "config.toml")
    assert [g.name for g in config.generators] == [g.name for g in GENERATORS]
    for g in config.generators:
        assert (bench.directory / "generators" / g.name / "model_index.json").is_file()
        assert g.source == str((bench.directory / "generators" / g.name).resolve())
    assert bench.held_out == HELD_OUT
    # the held-out generator shares sd's VAE (same weights on disk) and has its own UNet
    sd, other = (bench.directory / "generators" / n for n in ("sd", "sd-other"))
    assert (sd / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (other / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert (sd / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() != \
        (other / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()


def test_queries_carry_metadata_on_every_other_image_and_pixart_another_call(bench):
    with bench.manifest.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * len(GENERATORS)
    flags = read_query_flags(bench.manifest)
    for row in rows:
        decoded = decode_image(bench.manifest.parent / row["file"])
        if row["metadata"] == "1":
            assert row["prompt"] in decoded.metadata["parameters"]
            assert "Seed" not in decoded.metadata["parameters"]  # no exact replay from the benchmark's files
        else:
            assert "parameters" not in decoded.metadata
        assert flags[row["file"]]["call"] == (json.loads(row["call"]))
        assert bool(flags[row["file"]]["call"]) == (row["generator"] == "pixart")
        assert Image.open(bench.manifest.parent / row["file"]).size == (64, 64)
    assert sum(f["metadata"] for f in flags.values()) == len(rows) // 2


def test_a_built_benchmark_is_reused(bench):
    before = bench.manifest.stat().st_mtime_ns
    again = build_hard_benchmark(bench.directory, per_generator=2, progress=False, fine_tune_steps=(1, 2),
                                 train_images=2)
    assert again.manifest == bench.manifest and bench.manifest.stat().st_mtime_ns == before


def _rows(manifest):
    with manifest.open() as fh:
        return {r["file"]: r for r in csv.DictReader(fh)}


def test_later_draws_have_the_next_seeds_and_the_first_draw_is_the_benchmark(bench, tmp_path):
    config = hard_config(bench.directory)
    first = write_queries(config, tmp_path / "first", range(2), stride=2)
    benchmark, again = _rows(bench.manifest), _rows(first)
    assert benchmark == again  # query k of a generator is the same image whatever else is written
    for name in benchmark:
        assert (first.parent / name).read_bytes() == (bench.manifest.parent / name).read_bytes()
    # the second and third draws pooled in one manifest: each generator's next seeds, twice over
    assert draw_indices(1, 2, per_generator=2) == range(2, 6)
    pooled = _rows(write_queries(config, tmp_path / "pooled", draw_indices(1, 2, per_generator=2), stride=2))
    assert not set(pooled) & set(benchmark) and len(pooled) == 2 * len(benchmark)
    for g in GENERATORS:
        seeds = sorted(int(r["seed"]) for r in benchmark.values() if r["generator"] == g.name)
        later = sorted(int(r["seed"]) for r in pooled.values() if r["generator"] == g.name)
        assert later == sorted([s + 2 for s in seeds] + [s + 4 for s in seeds])
    with pytest.raises(ValueError, match="draws start at 0"):
        draw_indices(1, 0)


def test_hard_metrics_count_sibling_confusion_and_subsets():
    flags = {"a": {"metadata": True, "call": {}}, "b": {"metadata": False, "call": {}},
             "c": {"metadata": False, "call": {"steps": 20}}, "d": {"metadata": True, "call": {}},
             "e": {"metadata": False, "call": {}}}
    records = [
        {"file": "a", "truth": "sd", "prediction": "sd-ft-light"},  # sibling confusion
        {"file": "b", "truth": "sd-ft-heavy", "prediction": "sd-ft-heavy"},
        {"file": "c", "truth": "pixart", "prediction": "sdxl"},
        {"file": "d", "truth": "sdxl", "prediction": "sdxl"},
        {"file": "e", "truth": "sd-other", "prediction": "sd"},  # held out: not in the known figures
    ]
    m = hard_metrics(records, flags)
    assert m["top1_known"] == pytest.approx(2 / 4)
    assert m["sibling_confusion"] == pytest.approx(1 / 2)
    assert m["called_differently_top1"] == 0.0
    assert m["with_metadata_top1"] == pytest.approx(1 / 2) and m["without_metadata_top1"] == pytest.approx(1 / 2)
    # with 4 and 2 queries the 95% intervals are wide, and hold the rates
    (lo, hi), (slo, shi) = m["top1_known_interval"], m["sibling_confusion_interval"]
    assert lo < 0.5 < hi and hi - lo > 0.5 and slo < 0.5 < shi


def test_the_report_gives_each_variant_its_intervals():
    records = [{"file": f"q{i}", "truth": "sd", "prediction": "sd" if i < 114 else "sd-ft-light"} for i in range(120)]
    hard = hard_metrics(records, {})
    clean = {"hard": hard, "open_set": open_set_metrics([0.9, 0.8, 0.7], [0.75, 0.1])}
    result = {"variants": {"ours": {"config": {"gamma": 1, "mode": "both", "aggregate": "max"},
                                    "conditions": {"clean": clean}}}}
    line = hard_intervals(result)
    assert line == ("- ours (γ=1, both, max): top-1 89.5%–97.7%, sibling confusion 2.3%–10.5%, open-set AUROC "
                    f"{clean['open_set']['auroc_interval'][0]:.3f}–{clean['open_set']['auroc_interval'][1]:.3f}")
