"""Tiny randomly initialised checkpoints of every registry model, in the published layouts.

No weights can be downloaded where tests, CI and offline smoke runs happen. These writers
produce SDXL (base, refiner, a Lightning-style distilled UNet file), SAM and Zero123++
checkpoints with the real folder structure and file names but a few channels each, and a
``models.toml`` settings file that points the registry at them. Everything then loads
through the same code as the real models. u2netp is real already (4.7 MB): it is not
imitated; ``text-to-3d models fetch u2netp`` obtains it.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    SamConfig,
    SamImageProcessorPil,
    SamMaskDecoderConfig,
    SamModel,
    SamPromptEncoderConfig,
    SamVisionConfig,
)

from stages.text_to_image import NEGATIVE_PROMPT, PROMPT_TEMPLATE
from zero123pp.checkpoints import TEXT_TOKENS, make_tiny_checkpoints, write_tokenizer

TIME_EMBED = 8  # SDXL's micro-conditioning embedding width (256 in the real model)
TEXT_WIDTH = 32
SAM_IMAGE = 64
SAM_PATCH = 8


def prompt_tokenizer() -> CLIPTokenizer:
    """Whole-word tokens for the prompt template's words, so templated prompts fit 77 tokens."""
    words = re.findall(r"[a-z]+", f"{PROMPT_TEMPLATE} {NEGATIVE_PROMPT}".lower())
    with tempfile.TemporaryDirectory() as scratch:
        return write_tokenizer(Path(scratch), words)


def _text_encoder(tokenizer: CLIPTokenizer, with_projection: bool) -> CLIPTextModel | CLIPTextModelWithProjection:
    special = tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>", "!"])
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, projection_dim=TEXT_WIDTH, hidden_act="gelu", max_position_embeddings=TEXT_TOKENS,
        bos_token_id=special[0], eos_token_id=special[1], pad_token_id=special[2],
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def _sdxl_unet(time_ids: int, cross_attention_dim: int) -> UNet2DConditionModel:
    """SDXL's UNet shape (text-time added conditioning, linear projections), a few channels."""
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2), use_linear_projection=True, cross_attention_dim=cross_attention_dim,
        addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=time_ids * TIME_EMBED + TEXT_WIDTH,
    )


def _sdxl_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64, scaling_factor=0.13025, force_upcast=True,
    )


def _sdxl_scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
    )


def write_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """SDXL base layout: two CLIP text encoders and tokenizers, UNet, VAE, Euler scheduler."""
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = prompt_tokenizer(), prompt_tokenizer()
    pipeline = StableDiffusionXLPipeline(
        vae=_sdxl_vae(),
        text_encoder=_text_encoder(tokenizer, with_projection=False),
        text_encoder_2=_text_encoder(tokenizer_2, with_projection=True),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=_sdxl_unet(time_ids=6, cross_attention_dim=2 * TEXT_WIDTH),
        scheduler=_sdxl_scheduler(),
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def write_tiny_sdxl_refiner(folder: Path, seed: int = 1) -> Path:
    """SDXL refiner layout: the second text encoder only, aesthetic-score conditioning."""
    torch.manual_seed(seed)
    tokenizer_2 = prompt_tokenizer()
    pipeline = StableDiffusionXLImg2ImgPipeline(
        vae=_sdxl_vae(),
        text_encoder=None,
        text_encoder_2=_text_encoder(tokenizer_2, with_projection=True),
        tokenizer=None,
        tokenizer_2=tokenizer_2,
        unet=_sdxl_unet(time_ids=5, cross_attention_dim=TEXT_WIDTH),
        scheduler=_sdxl_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def write_tiny_distilled_unet(folder: Path, filename: str, seed: int = 2) -> Path:
    """A distilled SDXL UNet as one safetensors file (the SDXL-Lightning repository layout)."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    unet = _sdxl_unet(time_ids=6, cross_attention_dim=2 * TEXT_WIDTH)
    save_file({name: tensor.contiguous() for name, tensor in unet.state_dict().items()}, folder / filename)
    return folder


def write_tiny_sam(folder: Path, seed: int = 3) -> Path:
    """SAM layout (``config.json``, ``model.safetensors``, ``preprocessor_config.json``).

    The prompt encoder's positional features are half the decoder width
    (``num_pos_feats = hidden_size // 2``), as in every published SAM.
    """
    torch.manual_seed(seed)
    width = 16
    config = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=32, output_channels=width, num_hidden_layers=2, num_attention_heads=2,
            image_size=SAM_IMAGE, patch_size=SAM_PATCH, window_size=4, global_attn_indexes=[1],
            num_pos_feats=width // 2, mlp_dim=64,
        ).to_dict(),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=width, image_size=SAM_IMAGE, patch_size=SAM_PATCH, mask_input_channels=4
        ).to_dict(),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=width, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=16
        ).to_dict(),
    )
    SamModel(config).save_pretrained(folder)
    masks = SAM_IMAGE // SAM_PATCH * 4
    SamImageProcessorPil(
        size={"longest_edge": SAM_IMAGE}, pad_size={"height": SAM_IMAGE, "width": SAM_IMAGE},
        mask_size={"longest_edge": masks}, mask_pad_size={"height": masks, "width": masks},
    ).save_pretrained(folder)
    return folder


def make_tiny_models(folder: str | Path) -> Path:
    """Write tiny checkpoints of every registry model under ``folder`` and a ``models.toml``
    settings file pointing the registry at them; returns the settings file's path."""
    folder = Path(folder).resolve()
    lightning_file = "sdxl_lightning_4step_unet.safetensors"
    sources: dict[str, dict[str, str]] = {
        "sdxl-base": {"source": str(write_tiny_sdxl(folder / "sdxl-base")), "variant": ""},
        "sdxl-turbo": {"source": str(folder / "sdxl-base"), "variant": ""},
        "sdxl-refiner": {"source": str(write_tiny_sdxl_refiner(folder / "sdxl-refiner")), "variant": ""},
        "sdxl-lightning": {
            "source": str(write_tiny_distilled_unet(folder / "sdxl-lightning", lightning_file)),
            "base": str(folder / "sdxl-base"), "variant": "",
        },
        "sam-vit-huge": {"source": str(write_tiny_sam(folder / "sam"))},
        "sam-vit-base": {"source": str(folder / "sam")},
    }
    for name, path in make_tiny_checkpoints(folder).items():
        sources[name] = {"source": str(path)}
    lines = ["# Tiny random models (text-to-3d models make-tiny): point TEXT_TO_3D_CONFIG here."]
    for name, fields in sources.items():
        lines.append(f"\n[models.{json.dumps(name)}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    settings_file = folder / "models.toml"
    settings_file.write_text("\n".join(lines) + "\n")
    return settings_file
