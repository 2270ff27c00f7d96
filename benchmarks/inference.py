"""CPU inference of EfficientNet-Lite0's shared forward pass (ImageNet logits + block-4 pooled embedding):
eager torch against ONNX Runtime and OpenVINO, on the offline zoo's sample images.

For each runtime, at batch 1 and batch ``--batch``: milliseconds per image (median of ``--repeat`` timed runs,
the runtimes interleaved so that a noisy neighbour hurts them alike), the speed-up over torch, the largest
absolute difference of the L2-normalised embeddings from torch's, and whether every image's top-1 ImageNet
label (the label inverter's decision) is torch's. All runtimes use ``--threads`` intra-op threads.

The embedder adopts ONNX Runtime (``runtime = "auto"`` takes it when installed) where it wins clearly: at
least 1.3x at both batch sizes with embeddings within 1e-4 and identical labels.

Usage: python benchmarks/inference.py [--threads 1 --batch 16 --repeat 7 --samples 4]
(``pip install onnxruntime openvino`` first; a runtime that is not installed is reported as such.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from resynth_index import Attributor  # noqa: E402
from resynth_index.evaluation.samples import read_manifest, write_samples  # noqa: E402
from resynth_index.images.decode import decode_image  # noqa: E402
from resynth_index.models.backbones import (  # noqa: E402
    EfficientNetOnnx,
    efficientnet_preprocess,
    efficientnet_tail,
    efficientnet_trunk,
    load_efficientnet_lite0,
)

LAYER = 4  # the default embedder's block stage


class SharedPass(torch.nn.Module):
    """Trunk then tail: (logits, pooled block-4 features), as the query path's one pass computes them."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        feats, carry = efficientnet_trunk(self.model, LAYER, x)
        return efficientnet_tail(self.model, LAYER, carry), feats


def zoo_inputs(samples: int) -> torch.Tensor:
    """``samples`` images per zoo generator of the offline default, preprocessed as the embedder does."""
    with tempfile.TemporaryDirectory() as tmp:
        with Attributor(None, index=Path(tmp) / "index", device="cpu") as engine:
            write_samples(engine, Path(tmp) / "samples", per_generator=samples)
        files = sorted(read_manifest(Path(tmp) / "samples" / "manifest.csv"))
        return torch.stack([efficientnet_preprocess(decode_image(str(Path(tmp) / "samples" / f)).image)
                            for f in files])


def runners(threads: int) -> dict[str, object]:
    """Runtime name -> function (n, 3, 224, 224) tensor -> (logits, features) as numpy; or a reason string."""
    model = load_efficientnet_lite0("cpu")
    net = SharedPass(model).eval()

    def run_torch(x):
        with torch.inference_mode():
            logits, feats = net(x)
        return logits.numpy(), feats.numpy()

    out: dict[str, object] = {"torch (eager)": run_torch}
    try:
        onnx = EfficientNetOnnx(LAYER, threads=threads)

        def run_onnx(x):
            feats, carry = onnx.trunk(x)
            return onnx.tail(carry).numpy(), feats.numpy()

        out["onnxruntime"] = run_onnx
    except Exception as exc:  # noqa: BLE001 - report and go on
        out["onnxruntime"] = f"unavailable: {str(exc)[:80]}"
    try:
        import copy

        import openvino as ov

        t0 = time.perf_counter()
        converted = ov.convert_model(SharedPass(copy.deepcopy(model)).eval(), example_input=torch.zeros(1, 3, 224, 224))
        compiled = ov.Core().compile_model(converted, "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
        print(f"openvino: converted and compiled in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        def run_openvino(x):
            res = compiled([x.numpy()])
            return res[0], res[1]

        out["openvino"] = run_openvino
    except Exception as exc:  # noqa: BLE001
        out["openvino"] = f"unavailable: {str(exc)[:80]}"
    return out


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for every runtime (default 1)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--samples", type=int, default=4, help="zoo samples per generator (4 generators)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    x = zoo_inputs(args.samples)
    run = runners(args.threads)
    ready = {name: fn for name, fn in run.items() if callable(fn)}
    ref_logits, ref_feats = ready["torch (eager)"](x)
    checks = {}
    for name, fn in ready.items():
        logits, feats = fn(x)
        checks[name] = (float(np.abs(unit(feats) - unit(ref_feats)).max()),
                        bool((logits.argmax(-1) == ref_logits.argmax(-1)).all()))

    batches = {1: [x[i : i + 1] for i in range(min(len(x), 8))],
               args.batch: [x[(np.arange(args.batch) % len(x))]]}
    times: dict[tuple[str, int], list[float]] = {(n, b): [] for n in ready for b in batches}
    for fn in ready.values():  # warm up
        for b in batches.values():
            fn(b[0])
    for _ in range(args.repeat):
        for b, inputs in batches.items():
            for name, fn in ready.items():
                t0 = time.perf_counter()
                for xb in inputs:
                    fn(xb)
                times[(name, b)].append((time.perf_counter() - t0) / sum(len(xb) for xb in inputs))

    ms = {key: statistics.median(v) * 1e3 for key, v in times.items()}
    print(f"EfficientNet-Lite0 logits + block-{LAYER} pooled, {len(x)} zoo samples, {args.threads} thread(s), "
          f"torch {torch.__version__}")
    head = f"{'runtime':<16} {'b=1 ms/img':>10} {'x torch':>8} {f'b={args.batch} ms/img':>12} {'x torch':>8} " \
           f"{'max|d emb|':>11} {'top-1 same':>10}"
    print(head)
    for name, fn in run.items():
        if not callable(fn):
            print(f"{name:<16} {fn}")
            continue
        r1 = ms[("torch (eager)", 1)] / ms[(name, 1)]
        rb = ms[("torch (eager)", args.batch)] / ms[(name, args.batch)]
        diff, same = checks[name]
        print(f"{name:<16} {ms[(name, 1)]:>10.1f} {r1:>7.2f}x {ms[(name, args.batch)]:>12.1f} {rb:>7.2f}x "
              f"{diff:>11.1e} {'yes' if same else 'NO':>10}")


if __name__ == "__main__":
    main()
