"""Zero123++ speed benchmark on the full-size architecture with random weights; prints JSON.

    python bench/zero123pp.py                 # CUDA: bf16, 28 and 75 steps, batch of 4
    python bench/zero123pp.py --compile       # also torch.compile the UNet
    python bench/zero123pp.py --device cpu    # CPU: one step at a reduced size (says so)

Each timed row's FLOPs are counted by torch's FlopCounterMode on its own warm-up run, and
on CUDA its fraction of peak compares with the device's bf16 matrix-product rate measured in
the same run (``bench/measure.py``). The per-component breakdown of a full-size generation
is counted on meta-device copies of the components (no memory, no compute): every step runs
the UNet's write pass on the condition latent and its read pass on the view latents, both
on the [uncond, cond] rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import count_flops as counted_flops, measure, peak_matmul_tflops  # noqa: E402
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

    def unet_step() -> None:
        state.phase = "write"
        pipe.unet(torch.zeros(reference, device="meta"), t, embeds)
        state.phase = "read"
        pipe.unet(torch.zeros(latent, device="meta"), t, embeds)
        state.phase = "off"
        state.tokens.clear()

    counts = {
        "unet_per_step": counted_flops(unet_step),
        "vae_encode": counted_flops(lambda: pipe.vae.encode(torch.zeros(rows, 3, vae_crop, vae_crop, device="meta"))),
        "vision_encoder": counted_flops(
            lambda: pipe.vision_encoder(torch.zeros(1, 3, clip_crop, clip_crop, device="meta"))),
        "text_encoder": counted_flops(lambda: pipe.text_encoder(torch.zeros(1, 77, dtype=torch.long, device="meta"))),
        "vae_decode": counted_flops(lambda: pipe.vae.decode(torch.zeros(1, 4, height // 8, width // 8, device="meta"))),
    }
    counts["total"] = steps * counts["unet_per_step"] + sum(v for k, v in counts.items() if k != "unet_per_step")
    return counts


def zero123pp_row(pipe, image, steps: int, batch: int, width: int, height: int, device: torch.device,
                  repeats: int, output_type: str = "latent", flops: float | None = None) -> dict:
    """One call generating the grids of ``batch`` copies of ``image``, timed after a warm-up
    that counts its FLOPs (or given ``flops``, for a compiled UNet)."""
    images = [image] * batch
    run = lambda: pipe(images, num_inference_steps=steps, width=width, height=height,  # noqa: E731
                       generator=torch.Generator().manual_seed(0), output_type=output_type)
    row = measure(run, device, repeats, flops)
    return {"inputs": batch, "steps": steps, "output_type": output_type, **row,
            "seconds_per_input": round(row["seconds"] / batch, 4), "steps_per_second": round(steps / row["seconds"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (CUDA)")
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
    build_seconds = time.perf_counter() - build_start
    image = draw_sample_object(320)

    peak = peak_matmul_tflops(device, dtype, sizes=(4096, 8192, 16384)) if on_cuda else None
    configs = [(steps, 1) for steps in step_counts] + ([(28, batch)] if batch > 1 else [])
    repeats = 3 if on_cuda else 1
    runs = [{"compile": False, **zero123pp_row(pipe, image, steps, inputs, width, height, device, repeats)}
            for steps, inputs in configs]
    if args.compile:
        # The compiled UNet does the eager one's arithmetic: its rows reuse the eager FLOP counts.
        pipe.unet.compile(mode="max-autotune-no-cudagraphs")
        runs += [{"compile": True, **zero123pp_row(pipe, image, eager["steps"], eager["inputs"], width, height,
                                                   device, repeats, flops=eager["tflop"] * 1e12)}
                 for eager in list(runs)]
    if peak is not None:
        for row in runs:
            row["fraction_of_peak"] = round(row["achieved_tflops"] / peak["tflops"], 4)

    full_flops = count_flops(640, 960, 28)
    report = {
        "benchmark": "zero123pp",
        "device": torch.cuda.get_device_name(device) if on_cuda else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "dtype": str(dtype).removeprefix("torch."),
        "size": f"{width}x{height}",
        "note": None if on_cuda else "CPU: full-size architecture, one step at a reduced 128x192 output; not a product figure",
        "build_seconds": round(build_seconds, 2),
        "peak_matmul": peak,
        "runs": runs,
        "flops_per_generation_640x960_28_steps": {k: round(v / 1e12, 3) for k, v in full_flops.items()},
        "flops_unit": "TFLOP",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
