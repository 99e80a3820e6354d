"""The allowed values of every user-facing option, in one place.

The command line (argparse types), the flows' requests and batch rows (pydantic fields) and
the stages themselves check against these, so a value is refused with the same reason
wherever it comes from, and before any model loads: ``--texture-size 100000`` once ran on
for minutes and ``--target-faces 0`` succeeded with nonsense.

Each check returns the value or raises ``ValueError`` saying what is allowed and what was
given; the caller names the option (argparse's ``argument --texture-size:``, pydantic's
field location).
"""

from __future__ import annotations

import math
import unicodedata
from typing import Annotated

from pydantic import AfterValidator, Field

FACES = (100, 2_000_000)
TEXTURE_SIZES = (64, 8192)
LODS = (1, 6)
IMAGE_SIZES = (64, 2048)
IMAGE_SIZE_MULTIPLE = 8  # SDXL's VAE downsamples by 8
STEPS = (1, 200)
MESH_FORMATS = ("glb", "gltf", "obj", "ply", "off", "stl")  # what trimesh loads for a blockout


def _within(value: int, bounds: tuple[int, int], what: str) -> int:
    low, high = bounds
    if not low <= value <= high:
        raise ValueError(f"must be {what} from {low:,} to {high:,}, got {value:,}")
    return value


def check_faces(value: int) -> int:
    """A face count (LOD0's budget)."""
    return _within(value, FACES, "a face count")


def check_texture_size(value: int) -> int:
    """A texture side: a power of two, as engines and mip-mapping expect."""
    low, high = TEXTURE_SIZES
    if not low <= value <= high or value & (value - 1):
        raise ValueError(f"must be a power of two from {low} to {high}, got {value}")
    return value


def check_lods(value: int) -> int:
    """The number of LOD files: LOD0 plus halvings."""
    return _within(value, LODS, "a number of LODs")


def check_height(value: float) -> float:
    """An asset height in metres."""
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a finite, positive height in metres, got {value}")
    return value


def check_image_size(value: int) -> int:
    """A generated image's side in pixels."""
    low, high = IMAGE_SIZES
    if not low <= value <= high or value % IMAGE_SIZE_MULTIPLE:
        raise ValueError(f"must be a multiple of {IMAGE_SIZE_MULTIPLE} from {low} to {high} pixels, got {value}")
    return value


def check_steps(value: int) -> int:
    """Denoising steps."""
    return _within(value, STEPS, "a number of steps")


def check_positive(value: int) -> int:
    """A count of at least one (concurrency, GPU slots)."""
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


# The same checks as pydantic field types; the JSON schema keeps the ranges for form widgets.
Faces = Annotated[int, AfterValidator(check_faces), Field(json_schema_extra={"minimum": FACES[0], "maximum": FACES[1]})]
TextureSize = Annotated[int, AfterValidator(check_texture_size),
                        Field(json_schema_extra={"minimum": TEXTURE_SIZES[0], "maximum": TEXTURE_SIZES[1]})]
Lods = Annotated[int, AfterValidator(check_lods), Field(json_schema_extra={"minimum": LODS[0], "maximum": LODS[1]})]
Height = Annotated[float, AfterValidator(check_height), Field(json_schema_extra={"exclusiveMinimum": 0})]
ImageSize = Annotated[int, AfterValidator(check_image_size), Field(
    json_schema_extra={"minimum": IMAGE_SIZES[0], "maximum": IMAGE_SIZES[1], "multipleOf": IMAGE_SIZE_MULTIPLE})]
Steps = Annotated[int, AfterValidator(check_steps), Field(json_schema_extra={"minimum": STEPS[0], "maximum": STEPS[1]})]


def prompt_words(prompt: object) -> list[str]:
    """The words of a prompt; ``TypeError`` for non-strings, ``ValueError`` for blank ones
    and for control characters other than whitespace (a NUL byte from a broken manifest
    would otherwise reach the tokenizer and the asset's slug unseen).

    Cheap enough to run before any model is loaded.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    for position, character in enumerate(prompt):
        if unicodedata.category(character) == "Cc" and not character.isspace():
            raise ValueError(f"prompt contains the control character U+{ord(character):04X} at position {position}")
    words = prompt.split()
    if not words:
        raise ValueError("prompt is empty")
    return words
