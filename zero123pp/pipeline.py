"""Zero123++: one image in, six consistent views of the object out.

A diffusers pipeline that reproduces the published Zero123++ v1.1 and v1.2 checkpoints
(``../shared/spec/zero123pp.md``): same preprocessing, conditioning, reference attention,
sampler and decoding, and the same random draws in the same order, so a seed gives the
authors' six views. On top of the reference behaviour it takes a list of input images in
one batched UNet call, and it loads checkpoints without ever running code from them.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DiffusionPipeline,
    EulerAncestralDiscreteScheduler,
    ImagePipelineOutput,
    UNet2DConditionModel,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from zero123pp.image import to_conditioning_rgb
from zero123pp.reference_attention import ReferenceState, install_reference_attention

logger = logging.getLogger(__name__)

# Latent normalisation Zero123++ was trained with: latents = (z - 0.22) * 0.75, and the
# decoded image is scaled by 0.8 / 0.5 before the usual [-1, 1] -> [0, 1] mapping.
LATENT_SHIFT = 0.22
LATENT_SCALE = 0.75
IMAGE_SCALE = 0.8 / 0.5

# The components of the published checkpoint folder and the class each one must be. The
# classes are fixed here, never read from the checkpoint, so loading runs no foreign code.
# Image processors use transformers' PIL backend (the default backend needs torchvision).
COMPONENT_CLASSES: dict[str, type] = {
    "vae": AutoencoderKL,
    "text_encoder": CLIPTextModel,
    "tokenizer": CLIPTokenizer,
    "unet": UNet2DConditionModel,
    "scheduler": EulerAncestralDiscreteScheduler,
    "vision_encoder": CLIPVisionModelWithProjection,
    "feature_extractor_clip": CLIPImageProcessorPil,
    "feature_extractor_vae": CLIPImageProcessorPil,
}
_COMPONENT_CONFIG_FILES = {
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": "tokenizer_config.json",
    "unet": "config.json",
    "scheduler": "scheduler_config.json",
    "vision_encoder": "config.json",
    "feature_extractor_clip": "preprocessor_config.json",
    "feature_extractor_vae": "preprocessor_config.json",
}
_HUB_IGNORE = ["*.py", "*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.h5", "*.onnx"]
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class Zero123PlusPipeline(DiffusionPipeline):
    """Six views of an object from one image, compatible with the published Zero123++ weights.

    Components: ``vae`` (SD VAE), ``text_encoder`` and ``tokenizer`` (OpenCLIP-H text tower),
    ``unet`` (SD2 UNet), ``scheduler``, ``vision_encoder`` (CLIP ViT-H/14 with projection),
    ``feature_extractor_clip`` and ``feature_extractor_vae`` (image preprocessing), and an
    optional depth ``controlnet`` (v1.1). ``ramping_coefficients`` (config) weigh the global
    image embedding per text token.
    """

    model_cpu_offload_seq = "text_encoder->vision_encoder->vae->controlnet->unet"
    _optional_components = ["controlnet"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        vision_encoder: CLIPVisionModelWithProjection,
        feature_extractor_clip: CLIPImageProcessorPil,
        feature_extractor_vae: CLIPImageProcessorPil,
        controlnet: ControlNetModel | None = None,
        ramping_coefficients: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if ramping_coefficients is None:
            raise ValueError("Zero123++ needs ramping_coefficients (model_index.json of the checkpoint)")
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            vision_encoder=vision_encoder,
            feature_extractor_clip=feature_extractor_clip,
            feature_extractor_vae=feature_extractor_vae,
            controlnet=controlnet,
        )
        self.register_to_config(ramping_coefficients=[float(c) for c in ramping_coefficients])
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        # Reference attention is what makes the views show the input object; switching it off
        # exists for experiments and tests only.
        self.reference_attention = True
        self._reference_unet: torch.nn.Module | None = None
        self._reference: ReferenceState | None = None
        self._check_components()

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        controlnet: ControlNetModel | str | Path | None = None,
        torch_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> "Zero123PlusPipeline":
        """Load a checkpoint in the published layout from a local folder or a hub id.

        Only safetensors weights are read and no Python file from the checkpoint is ever
        imported or downloaded, whatever ``model_index.json`` names. The sampler is the
        checkpoint's Euler-ancestral scheduler with ``timestep_spacing="trailing"``, as the
        authors recommend; pass ``scheduler=`` to use another. Any other component can also
        be passed in to replace the stored one (for example a fine-tuned ``unet``).
        ``controlnet`` is a loaded ``ControlNetModel`` or a folder / hub id of one.

        Hub options: ``revision``, ``variant``, ``cache_dir``, ``token``, ``local_files_only``.
        """
        hub_options = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
        variant = kwargs.pop("variant", None)
        overrides = {name: kwargs.pop(name) for name in COMPONENT_CLASSES if name in kwargs}
        if kwargs:
            raise TypeError(f"unexpected arguments for Zero123PlusPipeline.from_pretrained: {sorted(kwargs)}")

        folder = resolve_checkpoint(pretrained_model_name_or_path, variant=variant, **hub_options)
        model_index = read_model_index(folder)
        components: dict[str, Any] = {}
        for name, component_class in COMPONENT_CLASSES.items():
            if name in overrides:
                components[name] = overrides[name]
                continue
            try:
                components[name] = _load_component(component_class, folder / name, name, torch_dtype, variant)
            except (OSError, ValueError) as error:
                raise ValueError(f"checkpoint {folder}: cannot load component {name!r}: {error}") from error
        if "scheduler" not in overrides:
            components["scheduler"] = EulerAncestralDiscreteScheduler.from_config(
                components["scheduler"].config, timestep_spacing="trailing"
            )
        if isinstance(controlnet, (str, Path)):
            controlnet = load_controlnet(controlnet, torch_dtype=torch_dtype, variant=variant, **hub_options)
        return cls(**components, controlnet=controlnet, ramping_coefficients=model_index["ramping_coefficients"])

    def _check_components(self) -> None:
        """Refuse component sets that cannot work together, naming the mismatch."""
        width = self.text_encoder.config.hidden_size
        checks = [
            (len(self.config.ramping_coefficients) == self.tokenizer.model_max_length,
             f"{len(self.config.ramping_coefficients)} ramping coefficients for "
             f"{self.tokenizer.model_max_length} text tokens"),
            (self.vision_encoder.config.projection_dim == width,
             f"vision embedding width {self.vision_encoder.config.projection_dim} != text width {width}"),
            (self.unet.config.cross_attention_dim == width,
             f"UNet cross-attention width {self.unet.config.cross_attention_dim} != text width {width}"),
            (self.unet.config.in_channels == self.vae.config.latent_channels,
             f"UNet takes {self.unet.config.in_channels} channels, the VAE gives {self.vae.config.latent_channels}"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError("incompatible Zero123++ components: " + "; ".join(problems))

    # --------------------------------------------------------------- behaviour

    def _reference_state(self) -> ReferenceState:
        """The reference-attention state of the current UNet, installing it on first use
        (and again if the user swapped the UNet)."""
        if self._reference_unet is not self.unet:
            self._reference = install_reference_attention(self.unet)
            self._reference_unet = self.unet
            if self.controlnet is not None:
                self.controlnet.set_attn_processor(AttnProcessor2_0())
        return self._reference

    # --------------------------------------------------------------- one call

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image | Sequence[Image.Image],
        *,
        prompt: str = "",
        num_inference_steps: int = 28,
        guidance_scale: float = 4.0,
        width: int = 640,
        height: int = 960,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        num_images_per_prompt: int = 1,
        depth_image: Image.Image | None = None,
        controlnet_conditioning_scale: float = 1.0,
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate the six-view grid(s) for one image or a list of images.

        Returns ``.images``: one ``width`` x ``height`` grid per input image and per
        ``num_images_per_prompt`` (image-major order), as PIL images, a float array
        (``"np"``), a tensor (``"pt"``) or the un-scaled latents before decoding
        (``"latent"``). With ``generator=None`` all randomness comes from torch's global
        RNG in the reference order, so ``torch.manual_seed(s)`` reproduces the authors'
        pipeline exactly.
        """
        # 1. Check the request before any work or random draw.
        images = self._check_inputs(image, num_inference_steps, width, height, output_type, num_images_per_prompt)
        device = self._execution_device
        do_guidance = guidance_scale > 1.0
        reference_state = self._reference_state()
        depth = self._prepare_depth(depth_image, width, height, device)
        rgb_images = [to_conditioning_rgb(img) for img in images]

        # 2. Condition latents: a posterior sample of the VAE, unscaled; the negative one
        #    encodes a flat 50 % grey image. Drawn in this order (the RNG contract).
        vae_pixels = self.feature_extractor_vae(images=rgb_images, return_tensors="pt").pixel_values
        vae_pixels = vae_pixels.to(device=device, dtype=self.vae.dtype)
        reference_latents = self.vae.encode(vae_pixels).latent_dist.sample(generator)
        if do_guidance:
            negative_latents = self.vae.encode(torch.zeros_like(vae_pixels)).latent_dist.sample(generator)

        # 3. Global image embedding and text embeddings, joined by the FlexDiffuse ramp.
        clip_pixels = self.feature_extractor_clip(images=rgb_images, return_tensors="pt").pixel_values
        clip_pixels = clip_pixels.to(device=device, dtype=self.vision_encoder.dtype)
        image_embeds = self.vision_encoder(clip_pixels).image_embeds.unsqueeze(-2)
        text_embeds = self._encode_text(prompt, device)
        ramp = image_embeds.new_tensor(self.config.ramping_coefficients).unsqueeze(-1)
        cond_embeds = text_embeds + image_embeds * ramp

        # 4. Batch rows: each input image repeated per requested sample, then [uncond, cond].
        cond_embeds = cond_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        reference_latents = reference_latents.repeat_interleave(num_images_per_prompt, dim=0)
        batch_size = cond_embeds.shape[0]
        if do_guidance:
            empty_prompt_embeds = text_embeds if prompt == "" else self._encode_text("", device)
            uncond_embeds = empty_prompt_embeds.expand(batch_size, -1, -1)
            negative_latents = negative_latents.repeat_interleave(num_images_per_prompt, dim=0)
            embeds = torch.cat([uncond_embeds, cond_embeds])
            reference_latents = torch.cat([negative_latents, reference_latents])
        else:
            embeds = cond_embeds

        # 5. Sampler and initial noise.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latent_shape = (
            batch_size,
            self.unet.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        latents = randn_tensor(latent_shape, generator=generator, device=device, dtype=embeds.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        step_kwargs = {"generator": generator} if _accepts(self.scheduler.step, "generator") else {}

        # 6. Denoise: per step, noise the reference latents to this step, run the UNet with
        #    reference attention, guide, and let the sampler step.
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([latents] * 2) if do_guidance else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            reference_input = None
            if self.reference_attention:
                noise = randn_tensor(
                    reference_latents.shape, generator=generator, device=device, dtype=reference_latents.dtype
                )
                reference_input = self.scheduler.add_noise(reference_latents, noise, t.reshape(-1))
                reference_input = self.scheduler.scale_model_input(reference_input, t)
            residuals = self._control_residuals(model_input, t, embeds, depth, controlnet_conditioning_scale)
            velocity = self._predict(reference_state, model_input, reference_input, t, embeds, residuals)
            if do_guidance:
                velocity_uncond, velocity_cond = velocity.chunk(2)
                velocity = velocity_uncond + guidance_scale * (velocity_cond - velocity_uncond)
            latents = self.scheduler.step(velocity, t, latents, **step_kwargs, return_dict=False)[0]

        # 7. Un-scale the latents and decode.
        latents = latents / LATENT_SCALE + LATENT_SHIFT
        if output_type == "latent":
            result = latents
        else:
            decoded = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
            result = self.image_processor.postprocess(decoded * IMAGE_SCALE, output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=result) if return_dict else (result,)

    # ----------------------------------------------------------------- helpers

    def _check_inputs(
        self,
        image: Image.Image | Sequence[Image.Image],
        num_inference_steps: int,
        width: int,
        height: int,
        output_type: str,
        num_images_per_prompt: int,
    ) -> list[Image.Image]:
        if image is None:
            raise ValueError("no input image given (got None)")
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if not images:
            raise ValueError("an empty list of images was given")
        for index, img in enumerate(images):
            if not isinstance(img, Image.Image):
                raise TypeError(f"image {index} is a {type(img).__name__}; pass PIL images")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}")
        if width % self.vae_scale_factor or height % self.vae_scale_factor or width <= 0 or height <= 0:
            raise ValueError(
                f"width and height must be positive multiples of {self.vae_scale_factor}; got {width}x{height}"
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        return images

    def _encode_text(self, prompt: str, device: torch.device) -> torch.Tensor:
        """Last hidden state of the text tower for one prompt, shape (1, tokens, width)."""
        tokens = self.tokenizer(
            prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        )
        full_length = len(self.tokenizer(prompt).input_ids)
        if full_length > self.tokenizer.model_max_length:
            logger.warning(
                "prompt is %d tokens long; only the first %d are used",
                full_length, self.tokenizer.model_max_length,
            )
        mask = tokens.attention_mask.to(device) if getattr(self.text_encoder.config, "use_attention_mask", False) else None
        hidden = self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        return hidden.to(dtype=self.text_encoder.dtype, device=device)

    def _prepare_depth(
        self, depth_image: Image.Image | None, width: int, height: int, device: torch.device
    ) -> torch.Tensor | None:
        """The ControlNet condition: the depth grid as it is (never resized), RGBA through
        grey like an input image, mapped to [-1, 1], shape (1, 3, height, width)."""
        if self.controlnet is None:
            if depth_image is not None:
                raise ValueError("depth_image was given but this pipeline has no ControlNet (load with controlnet=...)")
            return None
        if depth_image is None:
            raise ValueError(
                f"this pipeline has a depth ControlNet: pass depth_image, a {width}x{height} grid of six depth tiles"
            )
        if not isinstance(depth_image, Image.Image):
            raise TypeError(f"depth_image must be a PIL image, got {type(depth_image).__name__}")
        if depth_image.size != (width, height):
            raise ValueError(
                f"depth_image must be a {width}x{height} grid of six depth tiles (it is never resized); "
                f"got {depth_image.size[0]}x{depth_image.size[1]}"
            )
        pixels = np.asarray(to_conditioning_rgb(depth_image), dtype=np.float32) / 255.0
        tensor = (torch.from_numpy(pixels).permute(2, 0, 1) - 0.5) / 0.5
        return tensor.unsqueeze(0).to(device=device, dtype=self.controlnet.dtype)

    def _control_residuals(
        self,
        model_input: torch.Tensor,
        t: torch.Tensor,
        embeds: torch.Tensor,
        depth: torch.Tensor | None,
        scale: float,
    ) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
        """Depth ControlNet residuals for the main pass (plain attention, no reference)."""
        if depth is None:
            return None, None
        down, mid = self.controlnet(
            model_input, t, encoder_hidden_states=embeds, controlnet_cond=depth,
            conditioning_scale=scale, return_dict=False,
        )
        dtype = self.unet.dtype
        return [residual.to(dtype) for residual in down], mid.to(dtype)

    def _predict(
        self,
        state: ReferenceState,
        model_input: torch.Tensor,
        reference_input: torch.Tensor | None,
        t: torch.Tensor,
        embeds: torch.Tensor,
        residuals: tuple[list[torch.Tensor] | None, torch.Tensor | None],
    ) -> torch.Tensor:
        """The UNet's v-prediction for the main rows, with reference attention."""
        down, mid = residuals
        try:
            if reference_input is not None:
                state.phase = "write"
                self.unet(reference_input, t, embeds)
                state.phase = "read"
            return self.unet(
                model_input, t, embeds, down_block_additional_residuals=down, mid_block_additional_residual=mid
            ).sample
        finally:
            state.phase = "off"
            state.tokens.clear()


def _accepts(function: Any, parameter: str) -> bool:
    return parameter in inspect.signature(function).parameters


def resolve_checkpoint(path_or_id: str | Path, variant: str | None = None, **hub_options: Any) -> Path:
    """A local checkpoint folder for a folder path or a hub id (downloaded, weights and
    configuration only: no Python files, no pickled weights)."""
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        return local
    text = str(path_or_id)
    if local.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise ValueError(f"{text!r} is neither a checkpoint folder nor a hub id of the form 'owner/name'")
    from huggingface_hub import snapshot_download

    ignore = list(_HUB_IGNORE)
    if variant is None:
        ignore.append("*.*.safetensors")  # variant files (fp16, ...) are only fetched when asked for
    try:
        return Path(snapshot_download(text, ignore_patterns=ignore, **hub_options))
    except Exception as error:  # the hub client raises many types; all mean "not obtainable"
        raise ValueError(f"cannot obtain checkpoint {text!r} from the hub or its cache: {error}") from error


def read_model_index(folder: Path) -> dict:
    """Read and check ``model_index.json``: every component present, ramp coefficients given."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ValueError(f"{folder} is not a Zero123++ checkpoint: it has no model_index.json")
    model_index = json.loads(index_path.read_text())
    class_name = model_index.get("_class_name")
    if isinstance(class_name, (list, tuple)):
        class_name = class_name[-1]
    if class_name != "Zero123PlusPipeline":
        logger.warning("%s names pipeline class %r; loading it as Zero123PlusPipeline", index_path, class_name)
    for name, config_file in _COMPONENT_CONFIG_FILES.items():
        if name not in model_index:
            raise ValueError(f"checkpoint {folder} is missing component {name!r} in model_index.json")
        if not (folder / name / config_file).is_file():
            raise ValueError(f"checkpoint {folder} is missing component {name!r} (no {name}/{config_file})")
    coefficients = model_index.get("ramping_coefficients")
    if not isinstance(coefficients, list) or not coefficients:
        raise ValueError(f"checkpoint {folder}: model_index.json has no ramping_coefficients list")
    return model_index


def _load_component(
    component_class: type, path: Path, name: str, torch_dtype: torch.dtype | None, variant: str | None
) -> Any:
    if issubclass(component_class, torch.nn.Module):
        options: dict[str, Any] = {"use_safetensors": True, "variant": variant}
        if torch_dtype is not None:
            # diffusers calls it torch_dtype, transformers 5 dtype.
            options["torch_dtype" if name in ("vae", "unet") else "dtype"] = torch_dtype
        return component_class.from_pretrained(path, **options)
    return component_class.from_pretrained(path)


def load_controlnet(
    path_or_id: str | Path, torch_dtype: torch.dtype | None = None, variant: str | None = None, **hub_options: Any
) -> ControlNetModel:
    """Load a depth ControlNet (``sudo-ai/controlnet-zp11-depth-v1`` or a folder), safetensors only."""
    folder = resolve_checkpoint(path_or_id, variant=variant, **hub_options)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is not a ControlNet checkpoint: it has no config.json")
    options: dict[str, Any] = {"use_safetensors": True, "variant": variant}
    if torch_dtype is not None:
        options["torch_dtype"] = torch_dtype
    return ControlNetModel.from_pretrained(folder, **options)
