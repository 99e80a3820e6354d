"""Zero123PlusPipeline on tiny random checkpoints in the published layout."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler
from PIL import Image

from zero123pp import Zero123PlusPipeline

SMALL = dict(width=128, height=192, num_inference_steps=3)


def object_image(colour=(200, 40, 40), size=128) -> Image.Image:
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    image.paste((*colour, 255), (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return image


def latents(pipe, image, seed=0, **kwargs):
    options = {**SMALL, **kwargs}
    generator = torch.Generator().manual_seed(seed)
    return pipe(image, generator=generator, output_type="latent", **options).images


class UNetCalls:
    """Records the inputs of every UNet forward pass of a real pipeline (a forward hook)."""

    def __init__(self, unet):
        self.calls: list[dict] = []
        self.handle = unet.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        self.calls.append({"sample": args[0].clone(), "embeds": args[2].clone(), "kwargs": kwargs})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ----------------------------------------------------------------- loading


def test_loads_published_layout_with_either_class_name_form(tiny_checkpoints, pipe_v12, pipe_v11):
    index_v12 = json.loads((tiny_checkpoints["zero123plus-v1.2"] / "model_index.json").read_text())
    index_v11 = json.loads((tiny_checkpoints["zero123plus-v1.1"] / "model_index.json").read_text())
    assert index_v12["_class_name"] == "Zero123PlusPipeline"
    assert index_v11["_class_name"] == ["pipeline", "Zero123PlusPipeline"]
    for pipe in (pipe_v12, pipe_v11):
        assert isinstance(pipe.scheduler, EulerAncestralDiscreteScheduler)
        assert pipe.scheduler.config.timestep_spacing == "trailing"
        assert pipe.scheduler.config.prediction_type == "v_prediction"
        assert len(pipe.config.ramping_coefficients) == 77
    assert pipe_v12.feature_extractor_vae.crop_size["height"] == 64  # sizes come from the checkpoint


def test_scheduler_can_be_overridden(tiny_checkpoints):
    scheduler = EulerAncestralDiscreteScheduler.from_pretrained(
        tiny_checkpoints["zero123plus-v1.2"], subfolder="scheduler"
    )
    pipe = Zero123PlusPipeline.from_pretrained(tiny_checkpoints["zero123plus-v1.2"], scheduler=scheduler)
    assert pipe.scheduler.config.timestep_spacing == "linspace"


def test_never_runs_code_from_the_checkpoint(tiny_checkpoints, tmp_path):
    folder = shutil.copytree(tiny_checkpoints["zero123plus-v1.1"], tmp_path / "ckpt")
    (folder / "pipeline.py").write_text("raise SystemExit('checkpoint code was executed')\n")
    pipe = Zero123PlusPipeline.from_pretrained(folder)
    assert type(pipe) is Zero123PlusPipeline


@pytest.mark.parametrize("component", ["unet", "vision_encoder", "feature_extractor_vae", "tokenizer"])
def test_missing_component_is_named(tiny_checkpoints, tmp_path, component):
    folder = shutil.copytree(tiny_checkpoints["zero123plus-v1.2"], tmp_path / "ckpt")
    shutil.rmtree(folder / component)
    with pytest.raises(ValueError, match=f"missing component '{component}'"):
        Zero123PlusPipeline.from_pretrained(folder)


def test_pickle_weights_are_refused(tiny_checkpoints, tmp_path):
    folder = shutil.copytree(tiny_checkpoints["zero123plus-v1.2"], tmp_path / "ckpt")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ValueError, match="component 'unet'"):
        Zero123PlusPipeline.from_pretrained(folder)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="no model_index.json"):
        Zero123PlusPipeline.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="neither a checkpoint folder nor a hub id"):
        Zero123PlusPipeline.from_pretrained(str(tmp_path / "missing" / "folder"))


def test_dtype_option_and_to(tiny_checkpoints):
    pipe = Zero123PlusPipeline.from_pretrained(tiny_checkpoints["zero123plus-v1.2"], torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.bfloat16
    out = latents(pipe, object_image(), num_inference_steps=2)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    pipe.to(torch.float32)
    assert pipe.unet.dtype == torch.float32


# ------------------------------------------------------- determinism and RNG


def test_same_seed_same_views(pipe_v12):
    image = object_image()
    assert torch.equal(latents(pipe_v12, image, seed=3), latents(pipe_v12, image, seed=3))
    assert not torch.equal(latents(pipe_v12, image, seed=3), latents(pipe_v12, image, seed=4))


@pytest.mark.parametrize("guidance_scale", [4.0, 1.0])
def test_global_rng_and_generator_draw_alike(pipe_v12, guidance_scale):
    image = object_image()
    torch.manual_seed(11)
    from_global = pipe_v12(image, output_type="latent", guidance_scale=guidance_scale, **SMALL).images
    from_generator = latents(pipe_v12, image, seed=11, guidance_scale=guidance_scale)
    assert torch.equal(from_global, from_generator)


def test_global_rng_order_matches_the_contract(pipe_v12):
    """Draw order: condition posterior, negative posterior, initial latents, then per step
    the reference noise before the sampler noise. Replaying exactly those draws with the
    pipeline's own components reproduces the pipeline's first UNet input."""
    image = object_image()
    with UNetCalls(pipe_v12.unet) as record:
        torch.manual_seed(5)
        pipe_v12(image, output_type="latent", width=128, height=192, num_inference_steps=1)
    write_pass, read_pass = record.calls

    torch.manual_seed(5)
    pixels = pipe_v12.feature_extractor_vae(images=[image_on_grey(image)], return_tensors="pt").pixel_values
    cond = pipe_v12.vae.encode(pixels).latent_dist.sample()
    negative = pipe_v12.vae.encode(torch.zeros_like(pixels)).latent_dist.sample()
    initial = torch.randn(1, 4, 24, 16) * pipe_v12.scheduler.init_noise_sigma
    reference_noise = torch.randn(2, 4, 8, 8)
    scheduler = pipe_v12.scheduler
    t = scheduler.timesteps[0]
    expected_reference = scheduler.add_noise(torch.cat([negative, cond]), reference_noise, t.reshape(-1))
    sigma = scheduler.sigmas[0]
    torch.testing.assert_close(write_pass["sample"], expected_reference / (sigma**2 + 1) ** 0.5)
    torch.testing.assert_close(read_pass["sample"], torch.cat([initial, initial]) / (sigma**2 + 1) ** 0.5)


def image_on_grey(image: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", image.size, (127, 127, 127))
    canvas.paste(image, mask=image.getchannel("A"))
    return canvas


# ------------------------------------------------------------ conditioning


def test_output_types_and_shapes(pipe_v12):
    image = object_image()
    pil = pipe_v12(image, **SMALL).images
    assert len(pil) == 1 and pil[0].size == (128, 192) and pil[0].mode == "RGB"
    arrays = pipe_v12(image, output_type="np", **SMALL).images
    assert arrays.shape == (1, 192, 128, 3) and 0.0 <= arrays.min() and arrays.max() <= 1.0
    assert latents(pipe_v12, image).shape == (1, 4, 24, 16)
    with pytest.raises(ValueError, match="output_type"):
        pipe_v12(image, output_type="jpeg", **SMALL)


def test_decoding_follows_the_unscaling(pipe_v12):
    image = object_image()
    z = latents(pipe_v12, image, seed=2)
    pixels = pipe_v12(image, generator=torch.Generator().manual_seed(2), output_type="pt", **SMALL).images
    decoded = pipe_v12.vae.decode(z / pipe_v12.vae.config.scaling_factor).sample
    torch.testing.assert_close(pixels, (0.8 * decoded + 0.5).clamp(0, 1), atol=1e-5, rtol=1e-5)


def test_list_of_images_runs_in_one_batched_unet_call(pipe_v12):
    images = [object_image((200, 40, 40)), object_image((40, 40, 200))]
    with UNetCalls(pipe_v12.unet) as record:
        out = pipe_v12(images, generator=torch.Generator().manual_seed(0), num_images_per_prompt=2, **SMALL).images
    assert len(out) == 4
    assert len(record.calls) == 2 * SMALL["num_inference_steps"]  # a write and a read pass per step
    assert record.calls[1]["sample"].shape[0] == 2 * 4  # [uncond, cond] x 4 grids


def test_guidance_rows_are_uncond_then_cond(pipe_v12):
    with UNetCalls(pipe_v12.unet) as record:
        latents(pipe_v12, object_image(), num_inference_steps=1)
    embeds = record.calls[1]["embeds"]
    text = pipe_v12._encode_text("", torch.device("cpu"))
    assert torch.equal(embeds[0], text[0])  # uncond: the empty prompt alone
    assert not torch.allclose(embeds[1], text[0])  # cond: the image term added
    with UNetCalls(pipe_v12.unet) as record:
        latents(pipe_v12, object_image(), num_inference_steps=1, guidance_scale=1.0)
    assert record.calls[1]["embeds"].shape[0] == 1


def test_ramp_weighs_the_image_embedding_per_token(tiny_checkpoints):
    pipe = Zero123PlusPipeline.from_pretrained(tiny_checkpoints["zero123plus-v1.2"])
    pipe.set_progress_bar_config(disable=True)
    ramp = torch.tensor(pipe.config.ramping_coefficients)
    with UNetCalls(pipe.unet) as record:
        latents(pipe, object_image(), num_inference_steps=1)
    uncond, cond = record.calls[1]["embeds"]
    pixels = pipe.feature_extractor_clip(images=[image_on_grey(object_image())], return_tensors="pt").pixel_values
    image_embed = pipe.vision_encoder(pixels).image_embeds[0]
    torch.testing.assert_close(cond - uncond, ramp[:, None] * image_embed[None, :])

    pipe.register_to_config(ramping_coefficients=[0.0] * 77)
    with UNetCalls(pipe.unet) as record:
        latents(pipe, object_image(), num_inference_steps=1)
    uncond, cond = record.calls[1]["embeds"]
    assert torch.equal(uncond, cond)


def test_reference_attention_carries_the_input_image(tiny_checkpoints):
    pipe = Zero123PlusPipeline.from_pretrained(tiny_checkpoints["zero123plus-v1.2"])
    pipe.set_progress_bar_config(disable=True)
    red, blue = object_image((220, 30, 30)), object_image((30, 30, 220))
    assert not torch.allclose(latents(pipe, red), latents(pipe, blue))

    with_reference = latents(pipe, red)
    pipe.reference_attention = False
    assert not torch.allclose(latents(pipe, red), with_reference)

    # With the ramp zeroed as well, nothing of the image reaches the UNet any more.
    pipe.register_to_config(ramping_coefficients=[0.0] * 77)
    torch.testing.assert_close(latents(pipe, red, guidance_scale=1.0), latents(pipe, blue, guidance_scale=1.0))


def test_read_pass_keys_include_the_write_pass_tokens(pipe_v12):
    """In every self-attention layer, the read pass's keys are its own tokens followed by
    the tokens the same layer saw in the write pass; cross-attention is untouched."""
    token_counts: dict[str, list[int]] = {}

    def record(name):
        return lambda module, args: token_counts.setdefault(name, []).append(args[0].shape[1])

    handles = [
        module.register_forward_pre_hook(record(name))
        for name, module in pipe_v12.unet.named_modules()
        if name.endswith(("attn1.to_q", "attn1.to_k"))
    ]
    try:
        latents(pipe_v12, object_image(), num_inference_steps=1)
    finally:
        for handle in handles:
            handle.remove()
    layers = sorted({name.rsplit(".", 1)[0] for name in token_counts})
    assert layers == sorted(name for name, _ in pipe_v12.unet.named_modules() if name.endswith("attn1"))
    for layer in layers:
        (write_q, read_q), (write_k, read_k) = token_counts[f"{layer}.to_q"], token_counts[f"{layer}.to_k"]
        assert write_k == write_q
        assert read_k == read_q + write_q


# ------------------------------------------------------------ ControlNet


def depth_grid(width=128, height=192, seed=0) -> Image.Image:
    values = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    values[..., 3] = 255
    return Image.fromarray(values, "RGBA")


def test_controlnet_scale_zero_equals_no_controlnet(pipe_v11, pipe_v11_depth):
    image = object_image()
    without = latents(pipe_v11, image)
    at_zero = latents(pipe_v11_depth, image, depth_image=depth_grid(), controlnet_conditioning_scale=0.0)
    at_one = latents(pipe_v11_depth, image, depth_image=depth_grid(), controlnet_conditioning_scale=1.0)
    assert torch.equal(without, at_zero)
    assert not torch.allclose(without, at_one)


def test_controlnet_residuals_only_in_the_main_pass(pipe_v11_depth):
    with UNetCalls(pipe_v11_depth.unet) as record:
        latents(pipe_v11_depth, object_image(), num_inference_steps=1, depth_image=depth_grid())
    write_pass, read_pass = record.calls
    assert write_pass["kwargs"].get("down_block_additional_residuals") is None
    assert read_pass["kwargs"]["down_block_additional_residuals"] is not None


def test_depth_grid_must_match_the_output_size(pipe_v11_depth):
    with pytest.raises(ValueError, match="128x192 grid of six depth tiles.*got 640x960"):
        pipe_v11_depth(object_image(), depth_image=depth_grid(640, 960), **SMALL)
    with pytest.raises(ValueError, match="pass depth_image"):
        pipe_v11_depth(object_image(), **SMALL)


def test_depth_grid_without_controlnet_is_refused(pipe_v12):
    with pytest.raises(ValueError, match="no ControlNet"):
        pipe_v12(object_image(), depth_image=depth_grid(), **SMALL)


# --------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "image, message",
    [
        (None, "no input image"),
        ([], "empty list"),
        (Image.new("RGB", (63, 200)), "at least 64 px"),
        (Image.new("F", (128, 128)), "unsupported image mode 'F'"),
    ],
)
def test_bad_images_are_refused_clearly(pipe_v12, image, message):
    with pytest.raises(ValueError, match=message):
        pipe_v12(image, **SMALL)


def test_tensor_input_is_refused(pipe_v12):
    with pytest.raises(TypeError, match="pass PIL images"):
        pipe_v12(torch.zeros(3, 128, 128), **SMALL)


@pytest.mark.parametrize("bad", [dict(width=130), dict(num_inference_steps=0), dict(num_images_per_prompt=0)])
def test_bad_settings_are_refused(pipe_v12, bad):
    with pytest.raises(ValueError):
        pipe_v12(object_image(), **{**SMALL, **bad})


def test_unambiguous_modes_are_converted(pipe_v12):
    rgba = object_image()
    palette = rgba.convert("P")
    palette.info["transparency"] = 0
    sixteen_bit = Image.fromarray((np.linspace(0, 65535, 128 * 128).reshape(128, 128)).astype(np.uint16))
    for image in (palette, rgba.convert("LA"), rgba.convert("L"), rgba.convert("RGB").convert("CMYK"), sixteen_bit):
        out = latents(pipe_v12, image, num_inference_steps=1)
        assert torch.isfinite(out).all(), image.mode


def test_photos_rgba_and_rgb(pipe_v12, object_photos):
    assert {"RGBA", "RGB"} <= {photo.mode for photo in object_photos.values()}
    for name, photo in object_photos.items():
        grid = pipe_v12(photo, generator=torch.Generator().manual_seed(0), **SMALL).images[0]
        assert grid.size == (128, 192), name
