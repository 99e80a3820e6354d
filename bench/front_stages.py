"""Front-stage benchmark: SDXL base and SAM ViT-H at full size with random weights, and the
u2netp cutout on CPU; prints JSON.

    python bench/front_stages.py                    # CUDA: SDXL 1024x1024 30 steps bf16, SAM ViT-H
    python bench/front_stages.py --compile          # also torch.compile SDXL's UNet
    python bench/front_stages.py --device cpu       # CPU: u2netp + cutout post-processing only

Random weights run exactly the arithmetic of the real ones, so the timings are the real
models' timings. The u2netp part uses the real model file (../shared/data/u2netp.onnx or
``--u2netp``) on the real inputs in ../shared/data/inputs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.cutout import coarse_foreground, refine_alpha, reframe  # noqa: E402
from stages.image_input import open_image  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def build_sdxl(dtype: torch.dtype, device: str):
    """SDXL base 1.0's architecture (UNet 2.6 B, CLIP-L + OpenCLIP-bigG, SD VAE), random weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from stages.tiny_models import prompt_tokenizer

    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
            cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            sample_size=1024, scaling_factor=0.13025, force_upcast=False,
        )
        tokenizer, tokenizer_2 = prompt_tokenizer(), prompt_tokenizer()
        common = dict(vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=0, eos_token_id=1)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
            hidden_act="quick_gelu", projection_dim=768, **common))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
            hidden_act="gelu", projection_dim=1280, **common))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipeline = StableDiffusionXLPipeline(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(dtype=dtype)


def time_on_cuda(run, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` synchronised runs after one warm-up run (kernel
    selection, compilation); peak-memory statistics restart after the warm-up."""
    run()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def bench_sdxl(device: str, dtype: torch.dtype, steps: int, compile_unet: bool) -> dict:
    pipeline = build_sdxl(dtype, device)
    if compile_unet:
        pipeline.unet.to(memory_format=torch.channels_last)
        pipeline.unet = torch.compile(pipeline.unet, mode="max-autotune-no-cudagraphs")
    run = lambda: pipeline("a brass lantern", num_inference_steps=steps, guidance_scale=5.0,  # noqa: E731
                           width=1024, height=1024, generator=torch.Generator().manual_seed(0))
    seconds = time_on_cuda(run, repeats=3)
    # SDXL's compute floor for 30 steps with guidance: about 406 TFLOP (issue 4).
    floor_tflop = 406.0 * steps / 30
    best = min(seconds)
    return {
        "model": "sdxl-base-1.0 architecture, random weights", "size": "1024x1024", "steps": steps,
        "dtype": str(dtype), "compile": compile_unet, "seconds_per_image": round(best, 3),
        "seconds_all": [round(s, 3) for s in seconds], "tflop_per_s": round(floor_tflop / best, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def bench_sam(device: str, dtype: torch.dtype) -> dict:
    from transformers import SamConfig, SamModel, SamVisionConfig

    with torch.device(device):
        model = SamModel(SamConfig(vision_config=SamVisionConfig(
            hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31],
        ).to_dict())).to(dtype).eval()
    pixels = torch.randn(1, 3, 1024, 1024, device=device, dtype=dtype)
    boxes = torch.tensor([[[200.0, 150.0, 800.0, 900.0]]], device=device)

    def run() -> None:
        with torch.no_grad():
            model(pixel_values=pixels, input_boxes=boxes, multimask_output=True)

    seconds = time_on_cuda(run, repeats=5)
    return {"model": "sam-vit-huge architecture, random weights", "dtype": str(dtype),
            "seconds_per_image": round(min(seconds), 4),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def bench_u2net_cutout(model_file: Path, repeats: int) -> dict:
    """u2netp and the whole cutout post-processing per real input image, on CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    results = {}
    for path in sorted((SHARED / "data" / "inputs").glob("*.png")):
        image = open_image(path)
        rgb = image.convert("RGB")
        coarse_ms, post_ms = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            probability = coarse_foreground(rgb, session)
            coarse_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            alpha, _ = refine_alpha(probability)
            rgba = rgb.copy()
            rgba.putalpha(Image.fromarray((alpha * 255).astype("uint8")))
            reframe(rgba)
            post_ms.append((time.perf_counter() - started) * 1000)
        results[path.name] = {"size": list(image.size), "u2netp_ms": round(statistics.median(coarse_ms), 1),
                              "post_process_ms": round(statistics.median(post_ms), 1)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--u2netp", type=Path, default=SHARED / "data" / "u2netp.onnx")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    report: dict = {"machine": platform.node(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name()
        report["sdxl"] = bench_sdxl(args.device, torch.bfloat16, args.steps, args.compile)
        report["sam"] = bench_sam(args.device, torch.bfloat16)
    if args.u2netp.is_file():
        report["cutout_cpu"] = bench_u2net_cutout(args.u2netp, args.repeats)
    else:
        report["cutout_cpu"] = f"skipped: {args.u2netp} not found (../shared absent)"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
