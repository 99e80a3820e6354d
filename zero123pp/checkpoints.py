"""Randomly initialised Zero123++ checkpoints in the published folder layout.

No weights can be downloaded where the tests and the offline demo run, so they use small
random models written exactly as the published checkpoints are laid out and loaded through
the same code as the real ones. The same builders at ``size="full"`` give the real
architecture (SD2 UNet, SD VAE, OpenCLIP-H text tower, CLIP ViT-H/14) for benchmarks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers import AutoencoderKL, ControlNetModel, EulerAncestralDiscreteScheduler, UNet2DConditionModel
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from zero123pp.pipeline import Zero123PlusPipeline

Size = Literal["tiny", "full"]
TEXT_TOKENS = 77
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Per size: UNet, VAE, text tower, vision tower and preprocessing. "full" is the published
# architecture; "tiny" keeps the same structure (SD2 layout, linear projections, 8x VAE,
# CLIP towers) with a few channels so a CPU runs a step in milliseconds.
_CONFIGS = {
    "full": {
        "unet": dict(
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, sample_size=96,
        ),
        "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=768),
        "text": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                     projection_dim=512, hidden_act="gelu", vocab_size=49408),
        "vision": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
                       image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu"),
        "clip_crop": 224,
        "vae_crop": 512,
        "control_channels": (16, 32, 96, 256),
    },
    "tiny": {
        "unet": dict(
            block_out_channels=(32, 32, 64), layers_per_block=1, norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=(2, 2, 4), cross_attention_dim=32, sample_size=16,
        ),
        "vae": dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8, sample_size=64),
        "text": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                     projection_dim=32, hidden_act="gelu"),
        "vision": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                       image_size=32, patch_size=8, projection_dim=32, hidden_act="gelu"),
        "clip_crop": 32,
        "vae_crop": 64,
        "control_channels": (8, 8, 8, 8),
    },
}


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0..255."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[byte] for byte in range(256)]


def write_tokenizer(folder: Path, words: Iterable[str] = ()) -> CLIPTokenizer:
    """A byte-level CLIP tokenizer: real vocabulary files, 77 tokens.

    Without ``words`` it has no merges, so every character is one token. Each of ``words``
    (lower-case letters) gets the merges that make it a single token, as in the real
    vocabulary, so long fixed prompts fit the 77 tokens of a tiny model too.
    transformers 5 ignores ``CLIPTokenizer(vocab_file=...)``, so the files are written and
    loaded back with ``from_pretrained``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocabulary = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    merges: list[str] = []
    for word in sorted(set(words)):
        pieces = [*word[:-1], word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            merge = f"{merged} {piece}"
            merged += piece
            if merge not in merges:
                merges.append(merge)
                vocabulary.append(merged)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(dict.fromkeys(vocabulary))}))
    (folder / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": TEXT_TOKENS, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "!", "do_lower_case": True,
        "tokenizer_class": "CLIPTokenizer",
    }))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "!",
    }))
    return CLIPTokenizer.from_pretrained(folder)


def build_pipeline(
    size: Size = "tiny", seed: int = 0, with_controlnet: bool = False, device: str | torch.device = "cpu"
) -> Zero123PlusPipeline:
    """A float32 Zero123++ pipeline with random weights: the published architecture or a tiny twin.

    ``device="meta"`` builds the networks without memory or values (for counting FLOPs).
    """
    import tempfile

    config = _CONFIGS[size]
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = write_tokenizer(Path(scratch) / "tokenizer")
    special = tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>", "!"])
    text_config = CLIPTextConfig(
        **{"vocab_size": len(tokenizer), **config["text"]},
        max_position_embeddings=TEXT_TOKENS, bos_token_id=special[0], eos_token_id=special[1], pad_token_id=special[2],
    )
    vae_blocks = len(config["vae"]["block_out_channels"])
    with torch.device(device):
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, use_linear_projection=True, **config["unet"])
        networks = dict(
            unet=unet,
            vae=AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=4, scaling_factor=0.18215,
                down_block_types=("DownEncoderBlock2D",) * vae_blocks,
                up_block_types=("UpDecoderBlock2D",) * vae_blocks, **config["vae"],
            ),
            text_encoder=CLIPTextModel(text_config),
            vision_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**config["vision"])),
            controlnet=build_controlnet(unet, size) if with_controlnet else None,
        )
    ramp = np.random.default_rng(seed).normal(0.0, 0.03, TEXT_TOKENS) + np.linspace(0.0, 1.2, TEXT_TOKENS)
    return Zero123PlusPipeline(
        **networks,
        tokenizer=tokenizer,
        scheduler=EulerAncestralDiscreteScheduler(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
            prediction_type="v_prediction", steps_offset=1, timestep_spacing="trailing",
        ),
        feature_extractor_clip=_image_processor(config["clip_crop"], resample=3, mean=CLIP_MEAN, std=CLIP_STD),
        feature_extractor_vae=_image_processor(config["vae_crop"], resample=2, mean=[0.5] * 3, std=[0.8] * 3),
        ramping_coefficients=np.clip(ramp, 0.0, None).round(6).tolist(),
    )


def build_controlnet(unet: UNet2DConditionModel, size: Size = "tiny") -> ControlNetModel:
    """A depth ControlNet shaped for ``unet``, random weights.

    diffusers zero-initialises a new ControlNet's output convolutions (training starts from
    "no effect"); a trained one is far from that, so they are randomised here too.
    """
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=_CONFIGS[size]["control_channels"], load_weights_from_unet=False
    )
    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                 controlnet.controlnet_cond_embedding.conv_out]:
        torch.nn.init.normal_(conv.weight, std=0.05)
    return controlnet


def _image_processor(crop: int, resample: int, mean: list[float], std: list[float]) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(
        size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop}, resample=resample,
        do_resize=True, do_center_crop=True, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=mean, image_std=std, do_convert_rgb=True,
    )


def save_checkpoint(pipeline: Zero123PlusPipeline, folder: str | Path, class_name_as_pair: bool = False) -> Path:
    """Write ``pipeline`` in the published Zero123++ layout (safetensors weights).

    ``class_name_as_pair`` writes ``_class_name`` as ``["pipeline", "Zero123PlusPipeline"]``,
    the custom-pipeline form some published copies use.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vae", "text_encoder", "tokenizer", "unet", "vision_encoder",
                 "feature_extractor_clip", "feature_extractor_vae", "scheduler"):
        getattr(pipeline, name).save_pretrained(folder / name)
    # Mirror the published files: processors named by their generic class, and a scheduler
    # config without timestep_spacing (the loader chooses "trailing").
    for name in ("feature_extractor_clip", "feature_extractor_vae"):
        path = folder / name / "preprocessor_config.json"
        processor_config = json.loads(path.read_text())
        processor_config.update(image_processor_type="CLIPImageProcessor", feature_extractor_type="CLIPFeatureExtractor")
        path.write_text(json.dumps(processor_config, indent=2))
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = json.loads(scheduler_path.read_text())
    scheduler_config.pop("timestep_spacing", None)
    scheduler_path.write_text(json.dumps(scheduler_config, indent=2))

    model_index = {
        "_class_name": ["pipeline", "Zero123PlusPipeline"] if class_name_as_pair else "Zero123PlusPipeline",
        "_diffusers_version": "0.20.2",
        "feature_extractor_clip": ["transformers", "CLIPImageProcessor"],
        "feature_extractor_vae": ["transformers", "CLIPImageProcessor"],
        "ramping_coefficients": list(pipeline.config.ramping_coefficients),
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "vision_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    }
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2))
    return folder


def make_tiny_checkpoints(folder: str | Path) -> dict[str, Path]:
    """Write tiny random Zero123++ v1.2, v1.1 and depth-ControlNet checkpoints under ``folder``.

    Returns the path of each, keyed ``zero123plus-v1.2``, ``zero123plus-v1.1`` and
    ``controlnet-zp11-depth-v1`` (the published names).
    """
    folder = Path(folder)
    v12 = build_pipeline("tiny", seed=12)
    v11 = build_pipeline("tiny", seed=11, with_controlnet=True)
    paths = {
        "zero123plus-v1.2": save_checkpoint(v12, folder / "zero123plus-v1.2"),
        "zero123plus-v1.1": save_checkpoint(v11, folder / "zero123plus-v1.1", class_name_as_pair=True),
    }
    controlnet_folder = folder / "controlnet-zp11-depth-v1"
    v11.controlnet.save_pretrained(controlnet_folder)
    paths["controlnet-zp11-depth-v1"] = controlnet_folder
    return paths
