"""Text-to-image stage: a prompt to one centred object on a plain background (SDXL).

Zero123++ and the cutout both want one whole object, centred, on a plain light background;
the template asks SDXL for exactly that and the negative prompt steers away from scenes,
crops and clutter. Each prompt has its own seeded generator, so an image depends only on
its prompt, seed and parameters, never on what else shares the batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from stages.bounds import check_image_size, check_steps, prompt_words
from stages.model_cache import LoadedModel

logger = logging.getLogger(__name__)

PROMPT_TEMPLATE = (
    "{prompt}, a single whole object centred in frame, fully visible and unoccluded, "
    "isolated on a plain light grey background, soft even studio lighting, product render"
)
NEGATIVE_PROMPT = (
    "cropped, cut off, out of frame, partial view, multiple objects, crowd, scene, landscape, "
    "busy background, patterned background, text, watermark, logo, frame, dark background, "
    "harsh shadows, blurry, low quality"
)
REFINER_SPLIT = 0.8  # SDXL's ensemble of experts: base denoises 80 %, the refiner the rest.


@dataclass
class GeneratedImage:
    """One generated image and everything needed to reproduce and audit it."""

    image: Image.Image
    metadata: dict[str, Any] = field(default_factory=dict)


def check_prompt(prompt: object, tokenizer: Any, template: str = PROMPT_TEMPLATE) -> str:
    """Validate a user prompt and return the full text prompt for the model.

    Raises ``TypeError`` for non-strings and ``ValueError`` for empty prompts. A prompt too
    long for the text encoder is shortened at a word boundary, keeping the template, with a
    warning that names the words dropped.
    """
    words = prompt_words(prompt)
    if "{prompt}" not in template:
        raise ValueError("the prompt template must contain '{prompt}'")

    def token_count(text: str) -> int:
        return len(tokenizer(template.format(prompt=text), verbose=False).input_ids)

    limit = tokenizer.model_max_length
    if token_count(" ".join(words)) <= limit:
        return template.format(prompt=" ".join(words))
    kept = 0
    while kept < len(words) and token_count(" ".join(words[: kept + 1])) <= limit:
        kept += 1
    if kept == 0:
        raise ValueError(f"the prompt template alone fills the text encoder's {limit} tokens")
    dropped = " ".join(words[kept:])
    logger.warning(
        "prompt is longer than the text encoder's %d tokens; dropped its last %d words: %r",
        limit, len(words) - kept, dropped if len(dropped) <= 80 else dropped[:77] + "...",
    )
    return template.format(prompt=" ".join(words[:kept]))


def text_to_image(
    prompts: str | list[str],
    model: LoadedModel,
    seeds: int | list[int] = 0,
    steps: int | None = None,
    guidance: float | None = None,
    size: int | None = None,
    template: str = PROMPT_TEMPLATE,
    negative_prompt: str = NEGATIVE_PROMPT,
    refiner: LoadedModel | None = None,
) -> list[GeneratedImage]:
    """Render one image per prompt in a single batched call.

    ``steps``, ``guidance`` and ``size`` default to the model's preset (30 steps, guidance 5,
    1024 px for SDXL base; the Turbo and Lightning presets are few-step, unguided). With a
    ``refiner`` (the SDXL refiner), base and refiner split the denoising.
    """
    spec, pipeline = model.spec, model.model
    prompt_list = list(prompts) if isinstance(prompts, (list, tuple)) else [prompts]
    if not prompt_list:
        raise ValueError("no prompts given")
    seed_list = [seeds] * len(prompt_list) if isinstance(seeds, int) else list(seeds)
    if len(seed_list) != len(prompt_list):
        raise ValueError(f"{len(prompt_list)} prompts but {len(seed_list)} seeds")
    full_prompts = [check_prompt(prompt, pipeline.tokenizer, template) for prompt in prompt_list]
    steps = steps if steps is not None else spec.steps or 30  # 0 is refused below, not read as "default"
    guidance = spec.guidance if guidance is None else guidance
    guidance = 5.0 if guidance is None else guidance
    size = size if size is not None else spec.resolution or 1024
    for name, value, check in (("steps", steps, check_steps), ("size", size, check_image_size)):
        try:
            check(value)
        except ValueError as error:
            raise ValueError(f"{name} {error}") from None

    started = time.perf_counter()
    options: dict[str, Any] = dict(
        prompt=full_prompts,
        negative_prompt=[negative_prompt] * len(full_prompts) if guidance > 1.0 else None,
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=size,
        height=size,
        generator=[torch.Generator(device="cpu").manual_seed(seed) for seed in seed_list],
    )
    if refiner is None:
        images = pipeline(**options).images
    else:
        latents = pipeline(**options, denoising_end=REFINER_SPLIT, output_type="latent").images
        refine_options = {k: v for k, v in options.items() if k not in ("width", "height")}
        images = refiner.model(**refine_options, image=latents, denoising_start=REFINER_SPLIT).images
    seconds = time.perf_counter() - started

    return [
        GeneratedImage(image, {
            "model": model.record(),
            "refiner": refiner.record() if refiner else None,
            "prompt": prompt, "full_prompt": full, "negative_prompt": options["negative_prompt"] and negative_prompt,
            "seed": seed, "steps": steps, "guidance": guidance, "width": size, "height": size,
            "seconds_batch": round(seconds, 3), "batch_size": len(full_prompts),
        })
        for image, prompt, full, seed in zip(images, prompt_list, full_prompts, seed_list)
    ]

