"""Zero123++ speed benchmark on the full-size architecture with random weights; prints JSON.

    python bench/zero123pp.py                 # CUDA: bf16, 28 and 75 steps, batch of 4
    python bench/zero123pp.py --compile       # also torch.compile the UNet
    python bench/zero123pp.py --device cpu    # CPU: one step at a reduced size (says so)

FLOPs per generation are counted with torch's FlopCounterMode on meta-device copies of the
components (no memory, no compute): every step runs the UNet's write pass on the condition
latent and its read pass on the view latents, both on the [uncond, cond] rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.sample_input import draw_sample_object  # noqa: E402
from zero123pp.checkpoints import build_pipeline  # noqa: E402
from zero123pp.reference_attention import install_reference_attention  # noqa: E402


def count_flops(width: int, height: int, steps: int, guidance: bool = True) -> dict[str, float]:
    """FLOPs of one generation of the full-size model, by component."""
    pipe = build_pipeline("full", device="meta")
    rows = 2 if guidance else 1
    latent = (rows, 4, height // 8, width // 8)
    vae_crop = pipe.feature_extractor_vae.crop_size["height"]
    clip_crop = pipe.feature_extractor_clip.crop_size["height"]
    reference = (rows, 4, vae_crop // 8, vae_crop // 8)
    embeds = torch.zeros(rows, 77, 1024, device="meta")
    t = torch.tensor(999, device="meta")
    state = install_reference_attention(pipe.unet)

    def flops(run) -> float:
        with FlopCounterMode(display=False) as counter:
            run()
        return float(counter.get_total_flops())

    def unet_step() -> None:
        state.phase = "write"
        pipe.unet(torch.zeros(reference, device="meta"), t, embeds)
        state.phase = "read"
        pipe.unet(torch.zeros(latent, device="meta"), t, embeds)
        state.phase = "off"
        state.tokens.clear()

    counts = {
        "unet_per_step": flops(unet_step),
        "vae_encode": flops(lambda: pipe.vae.encode(torch.zeros(rows, 3, vae_crop, vae_crop, device="meta"))),
        "vision_encoder": flops(lambda: pipe.vision_encoder(torch.zeros(1, 3, clip_crop, clip_crop, device="meta"))),
        "text_encoder": flops(lambda: pipe.text_encoder(torch.zeros(1, 77, dtype=torch.long, device="meta"))),
        "vae_decode": flops(lambda: pipe.vae.decode(torch.zeros(1, 4, height // 8, width // 8, device="meta"))),
    }
    counts["total"] = steps * counts["unet_per_step"] + sum(v for k, v in counts.items() if k != "unet_per_step")
    return counts


def timed_generation(pipe, images, steps: int, width: int, height: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    pipe(images, num_inference_steps=steps, width=width, height=height,
         generator=torch.Generator().manual_seed(0), output_type="latent")
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (CUDA)")
    parser.add_argument("--peak-tflops", type=float, default=798.0,
                        help="the device's measured bf16 matrix-product peak (798 on an H100)")
    args = parser.parse_args()

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype) if on_cuda else torch.float32
    width, height = (640, 960) if on_cuda else (128, 192)
    step_counts = (28, 75) if on_cuda else (1,)
    batch = 4 if on_cuda else 1

    build_start = time.perf_counter()
    pipe = build_pipeline("full").to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    if on_cuda:
        pipe.unet.to(memory_format=torch.channels_last)
    if args.compile:
        pipe.unet.compile(mode="max-autotune-no-cudagraphs")
    build_seconds = time.perf_counter() - build_start
    image = draw_sample_object(320)

    timed_generation(pipe, image, 2, width, height, device)  # warm-up (and compilation)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    runs = []
    for steps in step_counts:
        seconds = timed_generation(pipe, image, steps, width, height, device)
        flops = count_flops(width, height, steps)["total"]
        runs.append({
            "inputs": 1, "steps": steps, "seconds": round(seconds, 4), "steps_per_second": round(steps / seconds, 3),
            "tflop": round(flops / 1e12, 2), "achieved_tflops": round(flops / seconds / 1e12, 2),
            **({"fraction_of_peak": round(flops / seconds / 1e12 / args.peak_tflops, 4)} if on_cuda else {}),
        })
    if batch > 1:
        seconds = timed_generation(pipe, [image] * batch, 28, width, height, device)
        flops = batch * count_flops(width, height, 28)["total"]
        runs.append({
            "inputs": batch, "steps": 28, "seconds": round(seconds, 4), "seconds_per_input": round(seconds / batch, 4),
            "tflop": round(flops / 1e12, 2), "achieved_tflops": round(flops / seconds / 1e12, 2),
            "fraction_of_peak": round(flops / seconds / 1e12 / args.peak_tflops, 4),
        })

    full_flops = count_flops(640, 960, 28)
    report = {
        "benchmark": "zero123pp",
        "device": torch.cuda.get_device_name(device) if on_cuda else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "dtype": str(dtype).removeprefix("torch."),
        "compiled": args.compile,
        "size": f"{width}x{height}",
        "note": None if on_cuda else "CPU: full-size architecture, one step at a reduced 128x192 output; not a product figure",
        "build_seconds": round(build_seconds, 2),
        "runs": runs,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if on_cuda else None,
        "flops_per_generation_640x960_28_steps": {k: round(v / 1e12, 3) for k, v in full_flops.items()},
        "flops_unit": "TFLOP",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
