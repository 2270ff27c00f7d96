"""Model-layer benchmark: seconds per image of each zoo generator (batch 1 and 4), each embedder and inverter.

Generators: batch 1; batch 4 as configured by default (on CPU batch-invariant: one pipeline call per image, so
about the batch-1 figure); and batch 4 with ``batch_invariant = false`` (one pipeline call for all four), with
its speed-up over the default batch 4.

Every figure is the median of ``--repeat`` timed calls after one warm-up call, all in this one run.
With ``--full`` (meant for a GPU) it also times full-size architectures built from their published configs
with random weights (timings do not depend on trained weights): a Stable Diffusion 1.5 UNet + VAE decode at
512 px per denoising step, and open_clip ViT-L-14 images/s at batch 64.

Usage: python benchmarks/models.py [--repeat 3] [--device cpu] [--threads 0] [--full]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import resynth_index  # noqa: E402,F401 - torchvision compatibility step first
import torch  # noqa: E402

from resynth_index.devices import apply_thread_policy, resolve_device  # noqa: E402
from resynth_index.models.embedders import load_embedder  # noqa: E402
from resynth_index.config import GeneratorSettings  # noqa: E402
from resynth_index.models.generators import load_generator  # noqa: E402
from resynth_index.images.decode import decode_image  # noqa: E402
from resynth_index.models.inverters import load_inverter  # noqa: E402
from resynth_index.models.zoo import zoo_names  # noqa: E402


def per_item(fn, items: int, repeat: int, device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / items


def full_size(device, repeat: int) -> list[tuple[str, str]]:
    import open_clip
    from diffusers import AutoencoderKL, UNet2DConditionModel

    rows = []
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    # Stable Diffusion 1.5 UNet and VAE, published configs, random weights.
    unet = UNet2DConditionModel(
        sample_size=64, cross_attention_dim=768, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ).to(device, dtype).eval()
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2, sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ).to(device, dtype).eval()
    latents = torch.randn(2, 4, 64, 64, device=device, dtype=dtype)  # classifier-free guidance: batch of 2
    text = torch.randn(2, 77, 768, device=device, dtype=dtype)
    t = torch.tensor([500], device=device)
    with torch.inference_mode():
        step = per_item(lambda: unet(latents, t, encoder_hidden_states=text), 1, repeat, device)
        decode = per_item(lambda: vae.decode(latents[:1]), 1, repeat, device)
    rows.append(("SD1.5 UNet step, 512 px, CFG batch 2 (s)", f"{step:.4f}"))
    rows.append(("SD1.5 VAE decode, 512 px (s)", f"{decode:.4f}"))
    model = open_clip.create_model("ViT-L-14", pretrained=None).to(device).eval()
    images = torch.randn(64, 3, 224, 224, device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        sec = per_item(lambda: model.encode_image(images), 64, repeat, device)
    rows.append(("open_clip ViT-L-14 images/s, batch 64", f"{1 / sec:.0f}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--full", action="store_true", help="also time full-size SD 1.5 and ViT-L-14 (for a GPU)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: the thread policy's automatic count)")
    ap.add_argument("--generators-only", action="store_true", help="time the zoo generators only")
    args = ap.parse_args()
    apply_thread_policy(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    rows: list[tuple[str, str]] = []

    prompts = ["a red fox in the snow", "a lighthouse at dawn", "a bowl of ramen", "a city at night"]
    for name in zoo_names():
        gen = load_generator(GeneratorSettings(name=name, source=f"zoo:{name}", batch_size=4), device=device)
        b1 = per_item(lambda: gen.generate(prompts[:1], [0]), 1, args.repeat, device)
        b4 = per_item(lambda: gen.generate(prompts, [0, 1, 2, 3]), 4, args.repeat, device)
        whole = load_generator(GeneratorSettings(name=name, source=f"zoo:{name}", batch_size=4, batch_invariant=False),
                               device=device)
        w4 = per_item(lambda: whole.generate(prompts, [0, 1, 2, 3]), 4, args.repeat, device)
        rows.append((f"zoo:{name} s/image batch 1", f"{b1:.3f}"))
        rows.append((f"zoo:{name} s/image batch 4 (batch_invariant={gen.batch_invariant})", f"{b4:.3f}"))
        rows.append((f"zoo:{name} s/image batch 4 (batch_invariant=False)", f"{w4:.3f}  ({b4 / w4:.2f}x)"))
    if args.generators_only:
        return print_rows(rows, device)

    rng = np.random.default_rng(0)
    pil = [Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)) for _ in range(16)]
    decoded = [decode_image(im) for im in pil]
    embedders = {
        "efficientnet-lite0": dict(kind="efficientnet-lite0"),
        "open_clip ViT-B-32 (random init)": dict(kind="open_clip", model="ViT-B-32"),
        "open_clip ViT-B-32 layer 6 (random init)": dict(kind="open_clip", model="ViT-B-32", layer=6),
    }
    for label, kw in embedders.items():
        emb = load_embedder(device=device, **kw)
        for batch in (1, 16):
            sec = per_item(lambda: emb.embed(pil[:batch]), batch, args.repeat, device)
            rows.append((f"embed {label} s/image batch {batch}", f"{sec:.4f}"))
    inverters = {"label (efficientnet-lite0)": load_inverter("label", device=device),
                 "metadata": load_inverter("metadata")}
    for label, inv in inverters.items():
        for batch in (1, 16):
            sec = per_item(lambda: inv.invert(decoded[:batch]), batch, args.repeat, device)
            rows.append((f"invert {label} s/image batch {batch}", f"{sec:.4f}"))

    if args.full:
        rows += full_size(device, args.repeat)
    print_rows(rows, device)


def print_rows(rows: list[tuple[str, str]], device) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"device: {device}  torch {torch.__version__}  threads {torch.get_num_threads()}")
    print(f"{'measure'.ljust(width)}  value")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
