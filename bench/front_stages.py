"""Front-stage benchmark: SDXL base and SAM ViT-H at full size with random weights, and the
u2netp cutout on CPU; prints JSON.

    python bench/front_stages.py                    # CUDA: SDXL 1024x1024 30 steps bf16, SAM ViT-H
    python bench/front_stages.py --compile          # also torch.compile SDXL's UNet
    python bench/front_stages.py --device cpu       # CPU: u2netp + cutout post-processing only

Random weights run exactly the arithmetic of the real ones, so the timings are the real
models' timings. FLOPs are counted by FlopCounterMode on each model's warm-up run, and the
fraction of peak compares with the device's bf16 matrix-product rate measured in the same
run (``bench/measure.py``). The u2netp part uses the real model file
(../shared/data/u2netp.onnx or ``--u2netp``) on the real inputs in ../shared/data/inputs.
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

from bench.measure import measure, peak_matmul_tflops  # noqa: E402
from stages.cutout import coarse_foreground, refine_alpha, reframe  # noqa: E402
from stages.image_input import open_image  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
CLIP_VOCABULARY = 49408  # the real text encoders' embedding rows (the stand-in tokenizer uses fewer)


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
        common = dict(vocab_size=CLIP_VOCABULARY, max_position_embeddings=77, bos_token_id=0, eos_token_id=1)
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


def build_sam(dtype: torch.dtype, device: str | torch.device):
    """SAM ViT-H's architecture (image encoder 32 layers of width 1280), random weights."""
    from transformers import SamConfig, SamModel, SamVisionConfig

    with torch.device(device):
        model = SamModel(SamConfig(vision_config=SamVisionConfig(
            hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31],
        ).to_dict()))
    return model.to(dtype).eval()


def sdxl_row(pipeline, device: torch.device, steps: int, size: int, repeats: int, flops: float | None = None) -> dict:
    """One text-to-image generation with guidance, timed after a warm-up that counts its FLOPs."""
    run = lambda: pipeline("a brass lantern", num_inference_steps=steps, guidance_scale=5.0,  # noqa: E731
                           width=size, height=size, generator=torch.Generator().manual_seed(0))
    return {"size": f"{size}x{size}", "steps": steps, "dtype": str(pipeline.unet.dtype).removeprefix("torch."),
            **measure(run, device, repeats, flops)}


def sam_row(model, device: torch.device, repeats: int) -> dict:
    """SAM on one image with a box prompt and three candidate masks, the cutout stage's call."""
    side = model.config.vision_config.image_size
    # Inference needs no gradients; without this the prompt encoder's returned embedding
    # weights (leaf tensors that require grad) trip FlopCounterMode's module tracker.
    model.requires_grad_(False)
    pixels = torch.randn(1, 3, side, side, device=device, dtype=model.dtype)
    boxes = torch.tensor([[[0.2 * side, 0.15 * side, 0.8 * side, 0.9 * side]]], device=device)

    def run() -> None:
        with torch.no_grad():
            model(pixel_values=pixels, input_boxes=boxes, multimask_output=True)

    return {"size": f"{side}x{side}", "dtype": str(model.dtype).removeprefix("torch."), **measure(run, device, repeats)}


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
    device = torch.device(args.device)
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
        peak = peak_matmul_tflops(device, torch.bfloat16, sizes=(4096, 8192, 16384))
        report["peak_matmul"] = peak
        pipeline = build_sdxl(torch.bfloat16, device)
        rows = [{"compile": False, **sdxl_row(pipeline, device, args.steps, 1024, repeats=3)}]
        if args.compile:
            pipeline.unet.to(memory_format=torch.channels_last)
            pipeline.unet = torch.compile(pipeline.unet, mode="max-autotune-no-cudagraphs")
            rows.append({"compile": True, **sdxl_row(pipeline, device, args.steps, 1024, repeats=3,
                                                     flops=rows[0]["tflop"] * 1e12)})
        for row in rows:
            row["fraction_of_peak"] = round(row["achieved_tflops"] / peak["tflops"], 4)
        report["sdxl"] = {"model": "sdxl-base-1.0 architecture, random weights", "runs": rows}
        del pipeline
        torch.cuda.empty_cache()
        report["sam"] = {"model": "sam-vit-huge architecture, random weights",
                         **sam_row(build_sam(torch.bfloat16, device), device, repeats=5)}
    if args.u2netp.is_file():
        report["cutout_cpu"] = bench_u2net_cutout(args.u2netp, args.repeats)
    else:
        report["cutout_cpu"] = f"skipped: {args.u2netp} not found (../shared absent)"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
